"""Chat template rendering: the model's template, --chat-template (file or text), and clear 400s."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from pagedllm.entrypoints.openai.api_server import _load_chat_template
from pagedllm.entrypoints.openai.errors import BadRequestError
from pagedllm.entrypoints.openai.protocol import ChatMessage
from pagedllm.entrypoints.openai.serving_chat import render_chat

CUSTOM = "{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}<go>"


@pytest.fixture(scope="module")
def tokenizer(tiny_llama: Path):
    return AutoTokenizer.from_pretrained(tiny_llama)


def msgs(*pairs):
    return [ChatMessage(role=r, content=c) for r, c in pairs]


def test_model_template_and_custom_template(tokenizer, tmp_path):
    ids = render_chat(tokenizer, msgs(("user", "hi")), None, True)
    assert ids and tokenizer.decode(ids).count("hi") == 1
    custom = render_chat(tokenizer, msgs(("system", "S"), ("user", "U")), CUSTOM, True)
    assert tokenizer.decode(custom) == "[system]S[user]U<go>"
    path = tmp_path / "t.jinja"
    path.write_text(CUSTOM)
    assert _load_chat_template(str(path)) == CUSTOM
    assert _load_chat_template(CUSTOM) == CUSTOM
    with pytest.raises(ValueError, match="chat_template"):
        _load_chat_template("no-such-file.jinja")


def test_template_problems_are_400(tokenizer):
    bare = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    bare.chat_template = None
    with pytest.raises(BadRequestError, match="no chat template"):
        render_chat(bare, msgs(("user", "hi")), None, True)
    raising = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(BadRequestError, match="roles must alternate"):
        render_chat(tokenizer, msgs(("user", "hi")), raising, True)
    with pytest.raises(BadRequestError, match="text content"):
        render_chat(tokenizer, [ChatMessage(role="user", content=[{"type": "image_url"}])], None,
                    True)
    # Reserved apply_chat_template arguments cannot be overridden by chat_template_kwargs.
    ids = render_chat(tokenizer, msgs(("user", "hi")), CUSTOM, True, {"tokenize": True, "x": 1})
    assert tokenizer.decode(ids) == "[user]hi<go>"
