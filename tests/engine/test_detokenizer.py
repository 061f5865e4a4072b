"""Incremental detokenization and stop strings on the tiny byte-level BPE tokenizer."""

from __future__ import annotations

import pytest
from pagedllm.engine.detokenizer import IncrementalDetokenizer
from pagedllm.sampling_params import SamplingParams
from transformers import AutoTokenizer

TEXTS = [
    "Hello, world! How are you today?",
    "日本語のテキスト 😀🎉 naïve café — Привет",  # multi-byte characters split across tokens
    "def main():\n    print('hi')  \n\n",
    "🤖💡🚀👍🏽 emoji only",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    return AutoTokenizer.from_pretrained(str(tiny_llama))


def _stream(tokenizer, prompt_ids, out_ids, params, per_step=1):
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, params)
    pieces, emitted = [], 0
    for i in range(0, len(out_ids), per_step):
        detok.update(out_ids[i : i + per_step], stop_terminated=False)
        end = detok.releasable_text_len(finished=detok.stop_string is not None)
        pieces.append(detok.text[emitted:end])
        emitted = end
        if detok.stop_string is not None:
            break
    if detok.stop_string is None:
        detok.finish()
    pieces.append(detok.text[emitted:])
    return detok, pieces


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("per_step", [1, 3])
def test_deltas_concatenate_to_full_decode(tokenizer, text: str, per_step: int) -> None:
    prompt_ids = tokenizer.encode("Prompt: ")
    out_ids = tokenizer.encode(text, add_special_tokens=False)
    detok, pieces = _stream(tokenizer, prompt_ids, out_ids, SamplingParams(), per_step)
    assert "".join(pieces) == detok.text == text == tokenizer.decode(out_ids)
    # No piece may contain a broken character.
    assert all("\ufffd" not in p for p in pieces)


def test_split_multibyte_character_waits_for_its_bytes(tokenizer) -> None:
    out_ids = tokenizer.encode("🤖", add_special_tokens=False)
    assert len(out_ids) > 1, "the tiny tokenizer should split this emoji over several tokens"
    detok = IncrementalDetokenizer(tokenizer, [1], SamplingParams())
    for t in out_ids[:-1]:
        detok.update([t], stop_terminated=False)
        assert detok.text == ""
    detok.update(out_ids[-1:], stop_terminated=False)
    assert detok.text == "🤖"


def test_special_tokens_skipped_or_kept(tokenizer) -> None:
    ids = (
        tokenizer.encode("ab", add_special_tokens=False)
        + [tokenizer.bos_token_id]
        + tokenizer.encode("cd", add_special_tokens=False)
    )
    skip, _ = _stream(tokenizer, [], ids, SamplingParams())
    keep, _ = _stream(tokenizer, [], ids, SamplingParams(skip_special_tokens=False))
    assert skip.text == "abcd"
    assert keep.text == "ab<|bos|>cd"


@pytest.mark.parametrize("include", [False, True])
def test_stop_string_spanning_tokens(tokenizer, include: bool) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    out_ids = tokenizer.encode(text, add_special_tokens=False)
    params = SamplingParams(stop=["fox jum"], include_stop_str_in_output=include)
    detok, pieces = _stream(tokenizer, [], out_ids, params)
    expected = "The quick brown fox jum" if include else "The quick brown "
    assert detok.stop_string == "fox jum"
    assert detok.text == expected and "".join(pieces) == expected
    # While streaming, nothing past the final text was ever shown.
    shown = ""
    for p in pieces:
        shown += p
        assert expected.startswith(shown)


def test_earliest_stop_string_wins_and_min_tokens_delays_it(tokenizer) -> None:
    out_ids = tokenizer.encode("one two three four", add_special_tokens=False)
    detok, _ = _stream(tokenizer, [], out_ids, SamplingParams(stop=["four", "two"]))
    assert detok.stop_string == "two" and detok.text == "one "
    # Until more than min_tokens tokens exist, stop strings are not checked.
    detok, _ = _stream(
        tokenizer, [], out_ids, SamplingParams(stop=["one"], min_tokens=len(out_ids))
    )
    assert detok.stop_string is None and detok.text == "one two three four"


def test_stop_token_text_left_out_unless_included(tokenizer) -> None:
    ids = tokenizer.encode("hello", add_special_tokens=False)
    stop_id = tokenizer.encode(" world", add_special_tokens=False)[0]
    for include, expected in ((False, "hello"), (True, "hello" + tokenizer.decode([stop_id]))):
        detok = IncrementalDetokenizer(
            tokenizer,
            [],
            SamplingParams(stop_token_ids=[stop_id], include_stop_str_in_output=include),
        )
        detok.update(ids, stop_terminated=False)
        detok.update([stop_id], stop_terminated=True)
        assert detok.text == expected


def test_detokenize_false_produces_no_text(tokenizer) -> None:
    detok = IncrementalDetokenizer(tokenizer, [1, 5], SamplingParams(detokenize=False))
    detok.update(tokenizer.encode("abc", add_special_tokens=False), stop_terminated=False)
    detok.finish()
    assert detok.text == ""


def test_stop_string_completed_by_the_final_flush(tokenizer) -> None:
    """A request cut by max_tokens in the middle of a UTF-8 character flushes a replacement
    character at finish(); a stop string that this flush completes still stops the text."""
    out_ids = tokenizer.encode("ab 🤖", add_special_tokens=False)
    cut = out_ids[:-1]                      # the emoji's last byte never arrives
    detok = IncrementalDetokenizer(tokenizer, [1], SamplingParams(stop=[" \ufffd"]))
    for t in cut:
        assert detok.update([t], stop_terminated=False) is None
    assert detok.finish() == " \ufffd"
    assert detok.stop_string == " \ufffd" and detok.text == "ab"
    # Without a matching stop string the flush just appends the replacement character.
    detok = IncrementalDetokenizer(tokenizer, [1], SamplingParams(stop=["zz"]))
    for t in cut:
        detok.update([t], stop_terminated=False)
    assert detok.finish() is None and detok.text == "ab \ufffd"
