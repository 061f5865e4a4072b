"""bf16 greedy agreement with transformers on trained weights (a GGUF, e.g. truncated_gguf.py's).

Two measures, both over chat prompts and the 32 tokens transformers' float32 model continues
them with:
- teacher-forced: every continuation position's argmax, each engine fed the same float32 text.
  Each position is one independent next-token decision, so only true near-ties can flip it.
- free-running (the issue's first measure): 32 greedy tokens per prompt compared position by
  position. One flip changes every later token, so two bf16 implementations (or transformers'
  bf16 against its own float32) drift apart even on a trained model.
pagedllm's teacher-forced positions come from prompt_logprobs (the rank-1 token at each
position), i.e. its prefill path; its free-running tokens exercise the decode path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_TOPICS = [
    "the sea", "photosynthesis", "the capital of Japan", "copper", "vaccines", "cats",
    "why the sky is blue", "learning Python", "rain", "Hamlet", "multiplication", "painters",
    "bicycles", "gravity", "octopuses", "prime numbers",
]
_ASKS = ["Explain {} simply.", "Write two sentences about {}.", "What should a child know about {}?",
         "Give me a fun fact about {}."]


def chat_prompts(tokenizer: Any, num: int = 64) -> list[list[int]]:
    """`num` chat-formatted prompts (token ids), topics x phrasings in a fixed order."""
    prompts = []
    for i in range(num):
        text = _ASKS[(i // len(_TOPICS)) % len(_ASKS)].format(_TOPICS[i % len(_TOPICS)])
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            add_generation_prompt=True, tokenize=True)
        prompts.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))  # dict or ids
    return prompts


def _hf_model(gguf: Path, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                dtype=dtype).to(device).eval()


@torch.no_grad()
def hf_greedy(model, prompt: list[int], n: int, device: str) -> list[int]:
    """transformers' n greedy tokens after prompt (EOS not allowed to stop it early)."""
    ids = torch.tensor([prompt], device=device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                         min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@torch.no_grad()
def _hf_forced_argmax(model, prompt: list[int], cont: list[int], device: str) -> list[int]:
    seq = torch.tensor([prompt + cont], device=device)
    logits = model(seq).logits[0, len(prompt) - 1: -1]  # row j predicts cont[j]
    return logits.float().argmax(-1).tolist()


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of b's positions where a has the same token."""
    return sum(x == y for p, q in zip(a, b) for x, y in zip(p, q)) / sum(len(q) for q in b)


def measure(gguf: str | Path, device: str, num_prompts: int = 64, tokens: int = 32,
            **llm_kwargs: Any) -> dict:
    """The report: teacher-forced and free-running agreements (fractions of positions)."""
    import gc

    from transformers import AutoTokenizer

    from pagedllm import LLM, SamplingParams

    gguf = Path(gguf)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    prompts = chat_prompts(tok, num_prompts)

    hf = _hf_model(gguf, torch.float32, device)
    conts = [hf_greedy(hf, p, tokens, device) for p in prompts]       # the float32 text
    forced_fp32 = [_hf_forced_argmax(hf, p, c, device) for p, c in zip(prompts, conts)]
    del hf
    hf = _hf_model(gguf, torch.bfloat16, device)
    forced_hf_bf16 = [_hf_forced_argmax(hf, p, c, device) for p, c in zip(prompts, conts)]
    free_hf_bf16 = [hf_greedy(hf, p, tokens, device) for p in prompts]
    del hf
    gc.collect()

    llm = LLM(model=str(gguf), dtype="bfloat16", device=device, **llm_kwargs)
    forced = SamplingParams(max_tokens=1, prompt_logprobs=1, detokenize=False)
    outs = llm.generate([{"prompt_token_ids": p + c} for p, c in zip(prompts, conts)], forced,
                        use_tqdm=False)
    forced_ours = []
    for p, o in zip(prompts, outs):
        rows = o.prompt_logprobs[len(p):]  # position i: the distribution over token i
        forced_ours.append([next(t for t, lp in row.items() if lp.rank == 1) for row in rows])
    greedy = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True, detokenize=False)
    free_ours = [list(o.outputs[0].token_ids) for o in
                 llm.generate([{"prompt_token_ids": p} for p in prompts], greedy, use_tqdm=False)]
    del llm
    gc.collect()

    return {
        "model": gguf.name, "device": device, "prompts": len(prompts), "tokens_each": tokens,
        "teacher_forced_ours_bf16_vs_hf_fp32": agreement(forced_ours, forced_fp32),
        "teacher_forced_ours_bf16_vs_hf_bf16": agreement(forced_ours, forced_hf_bf16),
        "teacher_forced_hf_bf16_vs_hf_fp32": agreement(forced_hf_bf16, forced_fp32),
        "free_running_ours_bf16_vs_hf_bf16": agreement(free_ours, free_hf_bf16),
        "free_running_ours_bf16_vs_hf_fp32": agreement(free_ours, conts),
        "free_running_hf_bf16_vs_hf_fp32": agreement(free_hf_bf16, conts),
    }
