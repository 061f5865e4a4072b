"""SamplingParams: how one request is sampled and when it stops (vLLM's names and defaults).

Every invalid value raises ValueError naming the field. Temperature below _GREEDY_EPS means greedy
decoding; the random-sampling knobs (top_p, top_k, min_p) are then reset to their neutral values
so that the sampler can treat the row as a plain argmax.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any, Optional, Union

_GREEDY_EPS = 1e-5


class RequestOutputKind(Enum):
    CUMULATIVE = 0  # every RequestOutput carries everything generated so far
    DELTA = 1  # every RequestOutput carries only what is new since the previous one
    FINAL_ONLY = 2  # a single RequestOutput when the request finishes


class SamplingType(IntEnum):
    GREEDY = 0
    RANDOM = 1
    RANDOM_SEED = 2


class SamplingParamsError(ValueError):
    """An invalid SamplingParams value; `field` names it (the server's 400 reports it as the
    `param`)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name} {message}")
        self.field = field_name


def _check(cond: bool, field_name: str, message: str) -> None:
    if not cond:
        raise SamplingParamsError(field_name, message)


def _is_token_id(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and t >= 0


def _token_key(t: Any) -> Any:
    """A logit_bias key: "42" -> 42; anything else unchanged (and judged by _verify)."""
    if isinstance(t, str):
        try:
            return int(t)
        except ValueError:
            return t
    return t


def _is_finite_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class SamplingParams:
    n: int = 1
    best_of: Optional[int] = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) disables top-k
    min_p: float = 0.0
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: bool = False
    max_tokens: Optional[int] = 16  # None: until max_model_len
    min_tokens: int = 0
    logprobs: Optional[int] = None  # top-N logprobs per generated token (plus the sampled one)
    prompt_logprobs: Optional[int] = None
    detokenize: bool = True
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    output_kind: RequestOutputKind = RequestOutputKind.CUMULATIVE
    priority: int = 0  # pagedllm extra: lower runs first under the priority policy
    cache_salt: Optional[str] = None
    logits_processors: Optional[list[Any]] = None  # accepted for compatibility; must be empty
    extra_args: Optional[dict[str, Any]] = field(default=None)
    # Added to the logits of these token ids before penalties and sampling (greedy too).
    logit_bias: Optional[dict[int, float]] = None
    # Only these token ids may be sampled (the rest are masked before everything else).
    allowed_token_ids: Optional[list[int]] = None
    # Words never generated: the engine tokenizes each (as is and after a space) and bans the
    # token that would complete one.
    bad_words: Optional[list[str]] = None
    # A JSON schema, regex, choice or grammar the output must follow (structured_outputs.py;
    # a dict of StructuredOutputsParams' fields is accepted too).
    structured_outputs: Optional[Any] = None

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        elif self.stop is None:
            self.stop = []
        else:
            self.stop = list(self.stop)
        self.stop_token_ids = [] if self.stop_token_ids is None else list(self.stop_token_ids)
        if isinstance(self.logit_bias, dict):
            # {} is no bias; keys may come as strings of ints, as OpenAI's JSON sends them.
            self.logit_bias = {_token_key(t): b for t, b in self.logit_bias.items()} or None
        if self.allowed_token_ids is not None and not isinstance(self.allowed_token_ids, str):
            self.allowed_token_ids = list(self.allowed_token_ids)
        if self.structured_outputs is not None:
            from pagedllm.structured_outputs import StructuredOutputsParams

            self.structured_outputs = StructuredOutputsParams.coerce(self.structured_outputs)
        if isinstance(self.bad_words, str):
            self.bad_words = [self.bad_words]
        elif self.bad_words is not None:
            self.bad_words = list(self.bad_words) or None
        if self.top_k == -1:
            self.top_k = 0
        if self.best_of is None:
            self.best_of = self.n
        self._verify()
        if self.temperature < _GREEDY_EPS:
            # Greedy: the random-sampling knobs are meaningless, make them neutral.
            self.top_p, self.top_k, self.min_p = 1.0, 0, 0.0

    def _verify(self) -> None:
        _check(isinstance(self.n, int) and self.n >= 1, "n", f"must be an int >= 1, got {self.n!r}")
        _check(
            isinstance(self.best_of, int) and self.best_of >= self.n,
            "best_of",
            f"must be an int >= n ({self.n}), got {self.best_of!r}",
        )
        _check(self.best_of == self.n, "best_of", "different from n is not supported")
        _check(
            -2.0 <= self.presence_penalty <= 2.0,
            "presence_penalty",
            f"must be in [-2, 2], got {self.presence_penalty}",
        )
        _check(
            -2.0 <= self.frequency_penalty <= 2.0,
            "frequency_penalty",
            f"must be in [-2, 2], got {self.frequency_penalty}",
        )
        _check(
            self.repetition_penalty > 0.0,
            "repetition_penalty",
            f"must be > 0, got {self.repetition_penalty}",
        )
        _check(self.temperature >= 0.0, "temperature", f"must be >= 0, got {self.temperature}")
        _check(0.0 < self.top_p <= 1.0, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(
            isinstance(self.top_k, int) and self.top_k >= 0,
            "top_k",
            f"must be 0 or -1 (disabled) or >= 1, got {self.top_k!r}",
        )
        _check(0.0 <= self.min_p <= 1.0, "min_p", f"must be in [0, 1], got {self.min_p}")
        _check(
            self.seed is None or isinstance(self.seed, int),
            "seed",
            f"must be an int or None, got {self.seed!r}",
        )
        _check(
            self.max_tokens is None or (isinstance(self.max_tokens, int) and self.max_tokens >= 1),
            "max_tokens",
            f"must be an int >= 1 or None, got {self.max_tokens!r}",
        )
        _check(
            isinstance(self.min_tokens, int) and self.min_tokens >= 0,
            "min_tokens",
            f"must be an int >= 0, got {self.min_tokens!r}",
        )
        _check(
            self.max_tokens is None or self.min_tokens <= self.max_tokens,
            "min_tokens",
            f"must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}",
        )
        _check(
            self.logprobs is None or (isinstance(self.logprobs, int) and self.logprobs >= 0),
            "logprobs",
            f"must be an int >= 0 or None, got {self.logprobs!r}",
        )
        _check(
            self.prompt_logprobs is None
            or (isinstance(self.prompt_logprobs, int) and self.prompt_logprobs >= 0),
            "prompt_logprobs",
            f"must be an int >= 0 or None, got {self.prompt_logprobs!r}",
        )
        _check(
            all(isinstance(s, str) and s for s in self.stop),
            "stop",
            "must be a string or a list of non-empty strings",
        )
        _check(
            all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids),
            "stop_token_ids",
            "must be a list of non-negative ints",
        )
        _check(
            self.detokenize or not self.stop,
            "stop",
            "strings need detokenize=True (stop_token_ids work without it)",
        )
        _check(
            isinstance(self.output_kind, RequestOutputKind),
            "output_kind",
            f"must be a RequestOutputKind, got {self.output_kind!r}",
        )
        _check(not self.logits_processors, "logits_processors", "are not supported")
        _check(
            self.logit_bias is None
            or (
                isinstance(self.logit_bias, dict)
                and all(_is_token_id(t) for t in self.logit_bias)
                and all(_is_finite_number(b) for b in self.logit_bias.values())
            ),
            "logit_bias",
            "must map token ids (ints >= 0) to finite numbers",
        )
        _check(
            self.bad_words is None
            or all(isinstance(w, str) and w.strip() for w in self.bad_words),
            "bad_words",
            "must be a list of non-blank strings",
        )
        _check(
            self.allowed_token_ids is None
            or (
                isinstance(self.allowed_token_ids, list)
                and len(self.allowed_token_ids) > 0
                and all(_is_token_id(t) for t in self.allowed_token_ids)
            ),
            "allowed_token_ids",
            "must be a non-empty list of token ids (ints >= 0)",
        )
        _check(
            self.cache_salt is None or isinstance(self.cache_salt, str),
            "cache_salt",
            "must be a string or None",
        )

    # -- derived properties -------------------------------------------------------------------
    @property
    def sampling_type(self) -> SamplingType:
        if self.temperature < _GREEDY_EPS:
            return SamplingType.GREEDY
        return SamplingType.RANDOM if self.seed is None else SamplingType.RANDOM_SEED

    @property
    def output_text_buffer_length(self) -> int:
        """Characters held back while streaming: a stop string may still start inside them."""
        if not self.stop or self.include_stop_str_in_output:
            return 0
        return max(len(s) for s in self.stop) - 1

    def check_token_ids(self, vocab_size: int) -> None:
        """SamplingParamsError if logit_bias or allowed_token_ids name a token outside the
        model's vocabulary [0, vocab_size) (checked where the vocabulary is known)."""
        for name, tokens in (("logit_bias", self.logit_bias or ()),
                             ("allowed_token_ids", self.allowed_token_ids or ())):
            for t in tokens:
                _check(t < vocab_size, name,
                       f"has token id {t}, outside the vocabulary [0, {vocab_size})")

    def clone(self) -> "SamplingParams":
        return copy.deepcopy(self)

    @classmethod
    def from_optional(cls, **kwargs: Any) -> "SamplingParams":
        """Build from keyword arguments where None means "use the default" (OpenAI requests).
        As vLLM's factory, logit_bias values are clamped to OpenAI's [-100, 100]."""
        bias = kwargs.get("logit_bias")
        if isinstance(bias, dict):
            kwargs["logit_bias"] = {
                t: min(100.0, max(-100.0, b)) if _is_finite_number(b) else b
                for t, b in bias.items()
            }
        return cls(**{k: v for k, v in kwargs.items() if v is not None})


@dataclass
class BeamSearchParams:
    """vLLM's beam search parameters (LLM.beam_search; the search is pagedllm.beam_search).
    Each step keeps the beam_width best of the 2 * beam_width likeliest continuations of every
    beam, scored by cumulative logprob / (all tokens, prompt included) ** length_penalty."""

    beam_width: int
    max_tokens: int
    ignore_eos: bool = False
    temperature: float = 0.0
    length_penalty: float = 1.0
    include_stop_str_in_output: bool = False
    structured_outputs: Optional[Any] = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        _check(isinstance(self.beam_width, int) and not isinstance(self.beam_width, bool)
               and self.beam_width >= 1, "beam_width",
               f"must be an int >= 1, got {self.beam_width!r}")
        _check(isinstance(self.max_tokens, int) and not isinstance(self.max_tokens, bool)
               and self.max_tokens >= 1, "max_tokens",
               f"must be an int >= 1, got {self.max_tokens!r}")
        _check(_is_finite_number(self.temperature) and self.temperature >= 0, "temperature",
               f"must be a finite number >= 0, got {self.temperature!r}")
        _check(_is_finite_number(self.length_penalty), "length_penalty",
               f"must be a finite number, got {self.length_penalty!r}")
        _check(self.structured_outputs is None, "structured_outputs",
               "is not supported with beam search")
