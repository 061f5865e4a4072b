"""Tiny random-weight Hugging Face model directories for tests, built offline in about a second.

`make_tiny_model("llama", dir)` writes config.json, model.safetensors, generation_config.json and a
byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json with a chat template) trained here
with the `tokenizers` library, so any unicode text round-trips and no network is ever needed.

Weights come from transformers' own initialisation (seeded), scaled up so that logits are peaked:
greedy decoding then rarely meets near-ties, which keeps token-identity tests deterministic.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

# Special tokens take the first ids; the ids are part of the contract with the tests.
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

SUPPORTED_ARCHS = ("opt", "llama", "qwen2", "qwen3", "phi3", "gemma3", "qwen3_moe", "mixtral",
                   "qwen2_moe")
# Built on request only (not by the test session's fixture): a Gemma 3 vision-language
# checkpoint with a tiny vision tower, whose language model pagedllm serves text-only.
MULTIMODAL_ARCHS = ("gemma3_multimodal",)

# The tiny Gemma 3's sliding window: shorter than most test prompts, so the local layers' window
# really cuts their context.
GEMMA3_SLIDING_WINDOW = 12

# ChatML-like template over the tiny vocabulary's special tokens.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|bos|>{{ message['role'] }}\n{{ message['content'] }}<|eos|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|bos|>assistant\n{% endif %}"
)

# Text the BPE merges are learned from: mixed English, code, numbers and a little non-Latin text.
_TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you today? I am fine, thank you.",
    "Once upon a time there was a little model that could predict the next token.",
    "def main():\n    print('hello')\n    return 0\n",
    "for i in range(10): total += i * 2",
    "1 2 3 4 5 6 7 8 9 10 100 1000 3.14159 2.71828",
    "A paged KV cache stores keys and values in fixed-size blocks.",
    "The scheduler decides which requests run in each step of the engine.",
    "Attention is all you need. Transformers changed natural language processing.",
    "Paris is the capital of France. Berlin is the capital of Germany.",
    "日本語のテキストも少し含めます。こんにちは世界。",
    "中文文本：你好，世界！机器学习很有趣。",
    "Ünïcödé çharacters, naïve café, façade, smörgåsbord.",
    "Emoji test: 😀🎉🚀👍🏽 and more 🤖💡.",
    "Привет, мир! Это тест.",
]


def _train_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer: every byte is in the alphabet, so nothing is ever unknown."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT * 4, trainer=trainer)
    if tokenizer.get_vocab_size() > vocab_size:
        raise ValueError(f"vocab_size: tokenizer needs {tokenizer.get_vocab_size()} > {vocab_size}")
    for token, expected_id in zip(SPECIAL_TOKENS, (PAD_ID, BOS_ID, EOS_ID)):
        if tokenizer.token_to_id(token) != expected_id:
            raise RuntimeError(f"special token {token} did not get id {expected_id}")
    return tokenizer


def _add_bos_post_processor(tokenizer) -> None:
    from tokenizers import processors

    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, BOS_ID)],
    )


def _config(arch: str, vocab_size: int, overrides: dict[str, Any]):
    from transformers import (Gemma3Config, Gemma3TextConfig, LlamaConfig, MixtralConfig,
                              OPTConfig, Phi3Config, Qwen2Config, Qwen2MoeConfig, Qwen3Config,
                              Qwen3MoeConfig)

    common = dict(vocab_size=vocab_size, pad_token_id=PAD_ID, bos_token_id=BOS_ID,
                  eos_token_id=EOS_ID, max_position_embeddings=512)
    if arch == "opt":
        # OPT has no GQA and head_dim = hidden / heads: 64 / 2 = 32.
        kwargs = dict(common, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                      num_attention_heads=2, word_embed_proj_dim=64, do_layer_norm_before=True,
                      activation_function="relu", enable_bias=True, tie_word_embeddings=True,
                      dropout=0.0, init_std=0.02)
        kwargs.update(overrides)
        return OPTConfig(**kwargs), ["OPTForCausalLM"]
    decoder = dict(common, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
                   hidden_act="silu", initializer_range=0.02)
    if arch == "llama":
        kwargs = dict(decoder, rope_theta=10000.0, tie_word_embeddings=False)
        kwargs.update(overrides)
        return LlamaConfig(**kwargs), ["LlamaForCausalLM"]
    if arch == "qwen2":
        # Qwen2Config has no head_dim argument; the modeling code reads getattr(config, "head_dim").
        kwargs = dict(decoder, rope_theta=1_000_000.0, tie_word_embeddings=True)
        kwargs.update(overrides)
        return Qwen2Config(**kwargs), ["Qwen2ForCausalLM"]
    if arch == "qwen3":
        kwargs = dict(decoder, rope_theta=1_000_000.0, tie_word_embeddings=True)
        kwargs.update(overrides)
        return Qwen3Config(**kwargs), ["Qwen3ForCausalLM"]
    if arch == "phi3":
        # Phi3Config has no head_dim (heads are hidden / num_attention_heads): 128 / 4 = 32.
        # Its checkpoint fuses q/k/v into qkv_proj and gate/up into gate_up_proj.
        kwargs = {k: v for k, v in decoder.items() if k != "head_dim"}
        kwargs.update(hidden_size=128, rope_theta=10000.0, tie_word_embeddings=False)
        kwargs.update(overrides)
        return Phi3Config(**kwargs), ["Phi3ForCausalLM"]
    if arch == "qwen3_moe":
        # Experts, dense, experts (mlp_only_layers), 2 of 8 experts per token renormalized as
        # in Qwen3-30B-A3B; the experts' intermediate size is a quarter of the dense MLP's.
        kwargs = dict(decoder, num_hidden_layers=3, mlp_only_layers=[1], num_experts=8,
                      num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                      rope_theta=1_000_000.0, tie_word_embeddings=True)
        kwargs.update(overrides)
        return Qwen3MoeConfig(**kwargs), ["Qwen3MoeForCausalLM"]
    if arch == "mixtral":
        # intermediate_size is each expert's; every layer has experts, top-2 of 8.
        kwargs = dict(decoder, intermediate_size=32, num_local_experts=8, num_experts_per_tok=2,
                      rope_theta=1_000_000.0, tie_word_embeddings=False)
        kwargs.update(overrides)
        return MixtralConfig(**kwargs), ["MixtralForCausalLM"]
    if arch == "qwen2_moe":
        # As Qwen1.5-MoE: q/k/v bias, top-4 weights not renormalized, a shared expert.
        kwargs = dict(decoder, num_experts=8, num_experts_per_tok=4, moe_intermediate_size=32,
                      shared_expert_intermediate_size=64, norm_topk_prob=False,
                      rope_theta=1_000_000.0, tie_word_embeddings=False)
        kwargs.update(overrides)
        return Qwen2MoeConfig(**kwargs), ["Qwen2MoeForCausalLM"]
    if arch in ("gemma3", "gemma3_multimodal"):
        # Local, global, local: both layer types and both rotary tables, the global one scaled
        # as in gemma-3-4b+. query_pre_attn_scalar differs from head_dim, as in gemma-3-27b.
        kwargs = dict(decoder, num_hidden_layers=3, hidden_activation="gelu_pytorch_tanh",
                      layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                      sliding_window=GEMMA3_SLIDING_WINDOW, query_pre_attn_scalar=24,
                      rope_parameters={
                          "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                          "full_attention": {"rope_type": "linear", "factor": 8.0,
                                             "rope_theta": 1_000_000.0}},
                      tie_word_embeddings=True)
        del kwargs["hidden_act"]
        kwargs.update(overrides)
        if arch == "gemma3":
            return Gemma3TextConfig(**kwargs), ["Gemma3ForCausalLM"]
        # A 28-pixel image in 14-pixel patches: 2 x 2 patches pooled to 4 tokens per image.
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, image_size=28, patch_size=14)
        return (Gemma3Config(text_config=kwargs, vision_config=vision, mm_tokens_per_image=4),
                ["Gemma3ForConditionalGeneration"])
    raise ValueError(f"arch: unknown tiny architecture {arch!r}; supported: "
                     f"{SUPPORTED_ARCHS + MULTIMODAL_ARCHS}")


# Projections that write into the residual stream.
_RESIDUAL_WRITERS = ("o_proj", "down_proj", "out_proj", "fc2")
# Gemma normalizes each block's output before its residual add, so these norms' gains (not the
# writers' std) set how much the layers weigh against the sqrt(hidden)-scaled embedding.
_GEMMA_POST_NORMS = ("post_attention_layernorm", "post_feedforward_layernorm")
_GEMMA_POST_NORM_GAIN = 4.0   # below ~2 the tied head only echoes the last token
# MoE routers ([E, H] "mlp.gate.weight"): logits this many times larger than a plain layer's keep
# the k-th and (k+1)-th experts' scores apart, so rounding rarely flips which experts run.
_ROUTER_STD_SCALE = 4.0


def _sharpen_weights(model: torch.nn.Module, seed: int, gemma: bool = False) -> None:
    """Re-draw matrices with a larger std than HF's 0.02 so logits are far from ties; norms keep
    random gains around 1 so that norm weights are exercised too. gemma: the language model's
    norms store gain - 1 (Gemma's RMSNorm multiplies by 1 + weight), the post-block ones
    _GEMMA_POST_NORM_GAIN."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                std = 1.0 / max(param.shape[-1], 1) ** 0.5
                if "embed" in name or "lm_head" in name:
                    std = 0.4
                elif any(k in name for k in _RESIDUAL_WRITERS):
                    std *= 3.0   # layers outweigh the token's own embedding (tied heads echo it)
                elif name.endswith("mlp.gate.weight"):
                    std *= _ROUTER_STD_SCALE
                param.copy_(torch.randn(param.shape, generator=gen) * std)
            elif "norm" in name and name.endswith("weight"):
                gain = 1.0
                gemma_norm = gemma and "vision_tower" not in name
                if gemma_norm and any(k in name for k in _GEMMA_POST_NORMS):
                    gain = _GEMMA_POST_NORM_GAIN
                stored = gain - 1.0 if gemma_norm else gain
                param.copy_(stored + 0.1 * torch.randn(param.shape, generator=gen))
            else:  # biases
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))


def make_tiny_model(arch: str, out_dir: str | Path, *, seed: int = 0, vocab_size: int = 512,
                    added_tokens: tuple[str, ...] = (), **overrides: Any) -> Path:
    """Write a complete tiny HF model directory for `arch` into `out_dir` and return its path.

    `added_tokens` get the last ids of the vocabulary as whole (non-special) tokens, as thinking
    models' `<think>` / `</think>` are. `overrides` replace config fields (e.g.
    num_hidden_layers=3, tie_word_embeddings=False).
    """
    from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

    if arch not in SUPPORTED_ARCHS + MULTIMODAL_ARCHS:
        raise ValueError(f"arch: unknown tiny architecture {arch!r}; supported: "
                         f"{SUPPORTED_ARCHS + MULTIMODAL_ARCHS}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    config, architectures = _config(arch, vocab_size, overrides)
    config.architectures = architectures
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _sharpen_weights(model, seed, gemma=arch.startswith("gemma"))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    generation = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
    generation.save_pretrained(out)

    raw = _train_tokenizer(vocab_size - len(added_tokens))
    if added_tokens:
        raw.add_tokens(list(added_tokens))
    # As the real tokenizers of these families do.
    adds_bos = arch in ("opt", "llama", "gemma3", "gemma3_multimodal", "mixtral")
    if adds_bos:
        _add_bos_post_processor(raw)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=config.get_text_config().max_position_embeddings,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    _patch_tokenizer_config(out / "tokenizer_config.json", adds_bos)
    return out


def _patch_tokenizer_config(path: Path, adds_bos: bool) -> None:
    """Record settings transformers reads back (chat template inline, no space clean-up)."""
    data = json.loads(path.read_text())
    data["chat_template"] = CHAT_TEMPLATE
    data["clean_up_tokenization_spaces"] = False
    data["add_bos_token"] = adds_bos
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False))
