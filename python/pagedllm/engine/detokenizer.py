"""Incremental detokenization of one sequence, with stop-string detection.

Each new token is decoded inside a small window of the tokens before it ("prefix"), and only the
text that the window gains is emitted. Decoding with context keeps tokenizer-specific joins right
(leading spaces, byte-level merges); waiting while the window ends in U+FFFD keeps a multi-byte
UTF-8 character that is split across tokens from being emitted as garbage. Invariant: `text` is
always the concatenation of everything emitted, so streamed deltas add up to the final text.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from pagedllm.sampling_params import SamplingParams

# Prompt tokens used as decoding context for the first generated token.
_PROMPT_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class _BackendDecode:
    """backend.decode(ids, skip_special_tokens=skip), with single-token results memoised: the
    window before each new token is usually one token long, and decode is a pure function of
    (ids, skip). One instance per tokenizer is shared by all of its detokenizers."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._single: dict[tuple[int, bool], str] = {}  # at most 2 * vocab entries

    def __call__(self, ids: list[int], skip: bool) -> str:
        if len(ids) == 1:
            key = (ids[0], skip)
            text = self._single.get(key)
            if text is None:
                text = self.backend.decode(ids, skip_special_tokens=skip)
                self._single[key] = text
            return text
        return self.backend.decode(ids, skip_special_tokens=skip)


def backend_decoder(tokenizer: Any) -> Optional[Callable[[list[int], bool], str]]:
    """The Rust tokenizer's decode when it is exactly what tokenizer.decode(ids,
    skip_special_tokens=...) returns, else None. transformers' fast tokenizers decode with the
    Rust backend and then only apply clean_up_tokenization_spaces (skipped for BPE models unless
    forced); spaces_between_special_tokens does not apply to them. Calling the backend directly
    saves the Python wrapper (~5 us per call, two calls per token). Any subclass that overrides
    decode or _decode, or a tokenizer whose cleanup would run, keeps the full path."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    cls = type(tokenizer)
    if not (
        isinstance(tokenizer, TokenizersBackend)
        and cls.decode is PreTrainedTokenizerBase.decode
        and cls._decode is TokenizersBackend._decode
    ):
        return None
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return None
    if getattr(tokenizer, "clean_up_tokenization_spaces", True):
        is_bpe = type(backend.model).__name__ == "BPE"
        forced = getattr(
            tokenizer,
            "clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output",
            True,
        )
        if not is_bpe or forced:
            return None
    return _BackendDecode(backend)


_UNSET: Any = object()


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        fast_decode: Optional[Callable[[list[int], bool], str]] = _UNSET,
    ) -> None:
        """fast_decode: backend_decoder(tokenizer), passed by callers that make many
        detokenizers for one tokenizer (computed here when not given)."""
        self.tokenizer = tokenizer
        self.params = params
        # Without a tokenizer (skip_tokenizer_init) there is no text, only token ids.
        self.enabled = params.detokenize and tokenizer is not None
        context = list(prompt_token_ids[-_PROMPT_CONTEXT_TOKENS:]) if self.enabled else []
        self._ids: list[int] = context  # context + detokenized output tokens
        self._prefix_offset = 0  # start of the decoding window
        self._read_offset = len(context)  # tokens before this are already in `text`
        self.text = ""  # full output text (cut at a stop string)
        self.stop_string: Optional[str] = None
        self._num_output_tokens = 0
        self._max_stop_len = max((len(s) for s in params.stop), default=0)
        if fast_decode is _UNSET:
            fast_decode = backend_decoder(tokenizer) if self.enabled else None
        self._fast_decode = fast_decode if self.enabled else None

    def _decode(self, ids: list[int]) -> str:
        if self._fast_decode is not None:
            return self._fast_decode(ids, self.params.skip_special_tokens)
        return self.tokenizer.decode(
            ids,
            skip_special_tokens=self.params.skip_special_tokens,
            spaces_between_special_tokens=self.params.spaces_between_special_tokens,
        )

    def update(self, new_token_ids: Sequence[int], stop_terminated: bool) -> Optional[str]:
        """Add tokens; `stop_terminated` means the last one is the EOS/stop token that ended the
        request (its text is left out unless include_stop_str_in_output). Returns the stop string
        if one now appears in the text (the text is then cut there), else None."""
        self._num_output_tokens += len(new_token_ids)
        if not self.enabled:
            return None
        ids = list(new_token_ids)
        if stop_terminated and ids and not self.params.include_stop_str_in_output:
            ids = ids[:-1]
        start = len(self.text)
        for token_id in ids:
            self._ids.append(token_id)
            self.text += self._next_piece(final=False)
        if stop_terminated:
            self.text += self._next_piece(final=True)  # flush a dangling partial character
        return self._check_stop(start)

    def finish(self) -> Optional[str]:
        """The sequence ended for a reason the detokenizer did not see (length, abort): flush a
        held-back partial character. The flushed text can complete a stop string (e.g. the
        replacement character of a cut UTF-8 sequence): returns it then, as update() does."""
        if not self.enabled or self.stop_string is not None:
            return None
        start = len(self.text)
        self.text += self._next_piece(final=True)
        return self._check_stop(start)

    def _next_piece(self, final: bool) -> str:
        if self._read_offset >= len(self._ids):
            return ""
        prefix_text = self._decode(self._ids[self._prefix_offset : self._read_offset])
        full_text = self._decode(self._ids[self._prefix_offset :])
        if len(full_text) <= len(prefix_text) and not final:
            return ""
        if full_text.endswith(_REPLACEMENT_CHAR) and not final:
            return ""  # an incomplete UTF-8 sequence: wait for its remaining bytes
        # Slide the window: the new context starts where this read started.
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return full_text[len(prefix_text) :]

    def _check_stop(self, new_text_start: int) -> Optional[str]:
        if not self.params.stop or self.stop_string is not None:
            return None
        if self._num_output_tokens <= self.params.min_tokens:
            return None
        # A stop string can begin up to (len - 1) characters before the new text.
        search_from = max(0, new_text_start - self._max_stop_len + 1)
        best: Optional[tuple[int, str]] = None
        for stop in self.params.stop:
            pos = self.text.find(stop, search_from)
            if pos != -1 and (best is None or pos < best[0]):
                best = (pos, stop)
        if best is None:
            return None
        pos, stop = best
        end = pos + len(stop) if self.params.include_stop_str_in_output else pos
        self.text = self.text[:end]
        self.stop_string = stop
        return stop

    def releasable_text_len(self, finished: bool) -> int:
        """How much of `text` may be shown now: a streamed tail that could still turn out to be
        the start of a stop string is held back until it can't."""
        if finished:
            return len(self.text)
        return max(0, len(self.text) - self.params.output_text_buffer_length)


class TokenTextCache:
    """Decoded text of single tokens (for Logprob.decoded_token), memoised per tokenizer."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._cache[token_id] = text
        return text
