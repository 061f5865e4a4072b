"""Helpers for the engine tests: engines on the tiny models and a transformers reference."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

# Mixed-length prompts (1 to ~60 tokens) over mixed scripts.
PROMPTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def main():\n    print('hello')",
    "1 2 3 4 5",
    "日本語のテキスト",
    "A",
    "Once upon a time there was a little model that could predict the next token.",
    "Paris is the capital of",
    "Emoji test: 😀🎉🚀",
    "for i in range(10): total += i * 2",
    "Привет, мир!",
    "The scheduler decides which requests run in each step of the engine. " * 2,
    "naïve café",
    "Attention is all you need.",
    "中文文本：你好",
    "3.14159 2.71828",
    "How are you today? I am fine, thank you.",
]


def engine_kwargs(**overrides) -> dict:
    kw = dict(
        device="cpu", dtype="float32", seed=0, max_model_len=256, kv_cache_space_bytes=8 << 20
    )
    kw.update(overrides)
    return kw


@functools.lru_cache(maxsize=8)
def _hf_model(path: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


@functools.lru_cache(maxsize=8)
def _tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def hf_model() -> Callable[[Path], object]:
    return lambda path: _hf_model(str(path))


@pytest.fixture(scope="session")
def tokenizer_of() -> Callable[[Path], object]:
    return lambda path: _tokenizer(str(path))


def hf_generate_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """transformers' own greedy generate (stops at EOS; the EOS id is kept, as vLLM does).
    Memoised: several tests compare against the same prompts."""
    return list(_hf_generate_cached(model, tuple(prompt_ids), max_new_tokens))


@functools.lru_cache(maxsize=None)
@torch.inference_mode()
def _hf_generate_cached(model, prompt_ids: tuple[int, ...], max_new_tokens: int) -> tuple[int, ...]:
    ids = torch.tensor([list(prompt_ids)])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=0,
    )
    return tuple(out[0, len(prompt_ids) :].tolist())


@torch.inference_mode()
def hf_logits(model, ids: list[int]) -> torch.Tensor:
    """float32 logits [len(ids), V] of one full forward."""
    return model(torch.tensor([ids])).logits[0].float()


@torch.inference_mode()
def reference_decode(
    model,
    prompt_ids: list[int],
    max_new_tokens: int,
    process: Optional[Callable[[torch.Tensor, list[int], list[int]], torch.Tensor]] = None,
    stop_ids: tuple[int, ...] = (),
) -> list[int]:
    """Greedy decoding by hand (full recompute each step) with an optional logits transform:
    the oracle for penalties and min_tokens."""
    out: list[int] = []
    for _ in range(max_new_tokens):
        logits = hf_logits(model, prompt_ids + out)[-1].clone()
        if process is not None:
            logits = process(logits, prompt_ids, out)
        out.append(int(logits.argmax()))
        if out[-1] in stop_ids:
            break
    return out
