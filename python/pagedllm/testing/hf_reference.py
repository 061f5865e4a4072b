"""transformers as the reference in tests: greedy decoding that never stops early."""
from __future__ import annotations

import inspect

import torch


@torch.inference_mode()
def hf_greedy(model, prompt_ids: list[int], num_tokens: int) -> list[int]:
    """Greedy tokens from transformers with its KV cache, ignoring EOS. generate() would stop at
    EOS, and min_new_tokens would change the logits by masking it."""
    # transformers 5.x renamed the cache argument and output from past_key_values to cache.
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"
    out = model(torch.tensor([prompt_ids]), use_cache=True)
    tokens: list[int] = []
    for _ in range(num_tokens):
        tokens.append(int(out.logits[0, -1].argmax()))
        if len(tokens) == num_tokens:
            break
        out = model(torch.tensor([[tokens[-1]]]), use_cache=True,
                    **{cache_arg: out[cache_arg]})
    return tokens
