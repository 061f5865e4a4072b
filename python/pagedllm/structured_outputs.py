"""Structured outputs (vLLM's StructuredOutputsParams): a JSON schema, any JSON object, a regular
expression, a choice among strings or an EBNF grammar constrains what a request may generate.

xgrammar compiles the constraint against the tokenizer's vocabulary when the request is added
(GrammarCompiler, one per engine); each sequence then keeps a matcher of the tokens it generated
(GrammarState) that gives, before every draw, the bitmask of the tokens that may come next. The
sampler masks the others to -inf before everything else (sampler.py). Matching needs each
sequence's latest token on the host, so these requests run synchronous steps (as penalties).
xgrammar is optional: `pip install "pagedllm[structured]"`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

STRUCTURED_OUTPUT_KINDS = ("json", "regex", "choice", "grammar", "json_object")


@dataclass
class StructuredOutputsParams:
    """Exactly one of the constraint fields; vLLM's names."""

    json: Optional[Union[str, dict]] = None  # a JSON schema (dict or JSON text)
    regex: Optional[str] = None
    choice: Optional[list[str]] = None
    grammar: Optional[str] = None  # EBNF, xgrammar's dialect (GBNF-like)
    json_object: Optional[bool] = None  # any JSON object
    disable_any_whitespace: bool = False  # JSON without free whitespace between tokens

    def __post_init__(self) -> None:
        given = [k for k in STRUCTURED_OUTPUT_KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "structured_outputs: exactly one of json, regex, choice, grammar or json_object "
                f"must be set, got {given or 'none'}"
            )
        if self.choice is not None and (
            not isinstance(self.choice, (list, tuple))
            or not self.choice
            or not all(isinstance(c, str) and c for c in self.choice)
        ):
            raise ValueError("structured_outputs: choice must be a non-empty list of strings")
        if self.json_object is not None and self.json_object is not True:
            raise ValueError("structured_outputs: json_object must be true when given")

    @classmethod
    def coerce(cls, value: Any) -> "StructuredOutputsParams":
        """The params themselves, or a dict of their fields (a request body's form)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            unknown = set(value) - set(cls.__dataclass_fields__)
            if unknown:
                raise ValueError(f"structured_outputs: unknown fields {sorted(unknown)}")
            return cls(**value)
        raise ValueError(
            f"structured_outputs: expected StructuredOutputsParams or a dict, got "
            f"{type(value).__name__}"
        )


def _xgrammar() -> Any:
    try:
        import xgrammar
    except ImportError as exc:
        raise ValueError(
            "structured_outputs: needs the xgrammar package (pip install \"pagedllm[structured]\")"
        ) from exc
    return xgrammar


class GrammarCompiler:
    """Compiles constraints for one engine's tokenizer and vocabulary (the model's logits width,
    which may exceed the tokenizer's own size). Built on the first structured request."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Sequence[int]) -> None:
        xgr = _xgrammar()
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids)
        )
        self.vocab_size = vocab_size
        self._compiler = xgr.GrammarCompiler(info)

    def compile(self, params: StructuredOutputsParams) -> Any:
        """A compiled grammar; ValueError naming the field for a constraint xgrammar rejects."""
        try:
            if params.json is not None:
                schema = params.json if isinstance(params.json, str) else json.dumps(params.json)
                return self._compiler.compile_json_schema(
                    schema, any_whitespace=not params.disable_any_whitespace
                )
            if params.json_object:  # OpenAI's json_object mode: any JSON object (not array)
                return self._compiler.compile_json_schema(
                    '{"type": "object"}', any_whitespace=not params.disable_any_whitespace
                )
            if params.regex is not None:
                return self._compiler.compile_regex(params.regex)
            if params.choice is not None:
                # One alternative per choice; JSON string escapes are valid EBNF literals.
                ebnf = "root ::= " + " | ".join(json.dumps(c) for c in params.choice)
                return self._compiler.compile_grammar(ebnf)
            return self._compiler.compile_grammar(params.grammar)
        except (RuntimeError, ValueError, TypeError) as exc:
            kind = next(k for k in STRUCTURED_OUTPUT_KINDS if getattr(params, k) is not None)
            raise ValueError(f"structured_outputs.{kind}: {exc}") from exc


class GrammarState:
    """One sequence's position in its grammar, and the bitmask of its next allowed tokens
    (`bitmask` [ceil(V / 32)] int32 on the host, refreshed in place by fill()).

    With `reasoning_end` (a thinking model's end-of-reasoning token) the grammar is inactive
    until that token is generated: the reasoning is free, the answer after it constrained."""

    def __init__(self, compiled: Any, vocab_size: int,
                 reasoning_end: Optional[int] = None) -> None:
        xgr = _xgrammar()
        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)  # [1, W] int32
        self.bitmask = self._bitmask[0]  # [W]
        self._reasoning_end = reasoning_end

    @property
    def active(self) -> bool:
        return self._reasoning_end is None

    def see_reasoning_token(self, token_id: int) -> bool:
        """While inactive: note a generated token; True when it ended the reasoning."""
        if token_id == self._reasoning_end:
            self._reasoning_end = None
            return True
        return False

    def fill(self) -> None:
        self._matcher.fill_next_token_bitmask(self._bitmask, 0)

    def accept(self, token_id: int) -> bool:
        """Advance by one generated token; False if the grammar does not allow it."""
        return bool(self._matcher.accept_token(int(token_id)))


def allowed_mask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Bitmask [W] int32 (bit j of word w: token 32 w + j may come next) -> bool [vocab_size]."""
    shifts = torch.arange(32, device=bitmask.device, dtype=torch.int32)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1  # [W, 32]
    return bits.reshape(-1)[:vocab_size].bool()
