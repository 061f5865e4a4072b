"""Python call lists: `[get_weather(city="Paris"), get_time()]` (Llama 3.2 / 4, OLMo)."""

from __future__ import annotations

import ast
import math
from typing import Any, Optional

from pagedllm.entrypoints.openai.tool_parsers.base import (
    ParsedToolCall,
    ToolCallParser,
    ToolParse,
    ToolSchemas,
    encode_arguments,
)

_JSON_NAMES = {"true": True, "false": False, "null": None}


def _python_literal(node: ast.expr) -> Any:
    """A Python call argument as a JSON value; ValueError if it is not a literal JSON can hold
    (JSON's own true / false / null names pass, as some models write them)."""
    if isinstance(node, ast.Constant):
        value = node.value
        if value is None or isinstance(value, (str, int)) or (
                isinstance(value, float) and math.isfinite(value)):
            return value
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_python_literal(item) for item in node.elts]
    elif isinstance(node, ast.Dict):
        if all(isinstance(key, ast.Constant) for key in node.keys):  # None for a `**spread`
            return {_python_literal(key): _python_literal(value)  # type: ignore[arg-type]
                    for key, value in zip(node.keys, node.values)}
    elif isinstance(node, ast.Name) and node.id in _JSON_NAMES:
        return _JSON_NAMES[node.id]
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
        number = _python_literal(node.operand)
        if isinstance(number, (int, float)) and not isinstance(number, bool):
            return -number if isinstance(node.op, ast.USub) else number
    elif isinstance(node, ast.JoinedStr) and all(  # an f-string without placeholders
            isinstance(part, ast.Constant) for part in node.values):
        return "".join(str(part.value) for part in node.values)  # type: ignore[attr-defined]
    raise ValueError(f"not a literal: {ast.dump(node)}")


def _python_call(node: ast.expr) -> ParsedToolCall:
    """`name(key=literal, ...)` (a dotted name too) as a call; ValueError otherwise."""
    if not isinstance(node, ast.Call) or node.args:
        raise ValueError("a call takes keyword arguments only")
    parts, func = [], node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name):
        raise ValueError("a call's function must be a (dotted) name")
    parts.append(func.id)
    arguments = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise ValueError("**kwargs in a call")
        arguments[keyword.arg] = _python_literal(keyword.value)
    return ParsedToolCall(".".join(reversed(parts)), encode_arguments(arguments))


def _python_calls(source: str) -> list[ParsedToolCall]:
    """The calls of a Python list of calls; ValueError if `source` is anything else."""
    try:
        tree = ast.parse(source, mode="eval")
    except (SyntaxError, RecursionError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(tree.body, ast.List) or not tree.body.elts:
        raise ValueError("the calls must be a non-empty list")
    return [_python_call(item) for item in tree.body.elts]


class PythonicToolParser(ToolCallParser):
    """A Python list of calls, `[get_weather(city="Paris", days=2), get_time()]` (Llama 3.2,
    Llama 4, ToolACE), read with `ast`: keyword arguments whose values are literals (strings,
    numbers, True / False / None or JSON's true / false / null, lists, dicts; tuples and sets
    become lists). The whole answer must be the list (blanks around it, and Llama 4's
    <|python_start|>...<|python_end|> around that, allowed); anything else is content."""

    name = "pythonic"
    START, END = "<|python_start|>", "<|python_end|>"

    def __init__(self, tools: Optional[ToolSchemas] = None) -> None:
        super().__init__(tools)
        # complete_calls' memo for a growing text: the text whose `)`s it has tried, and the
        # calls up to the last one that closed a call.
        self._tried = ""
        self._whole: list[ParsedToolCall] = []

    def _list_start(self, text: str) -> Optional[int]:
        """Where the call list's `[` is; len(text) if the text may still become one, None if
        it cannot."""
        pos = len(text) - len(text.lstrip())
        if text.startswith(self.START, pos):
            pos = len(text) - len(text[pos + len(self.START):].lstrip())
        elif self.START.startswith(text[pos:]):  # nothing yet, or a partial wrapper
            return len(text)
        return pos if pos == len(text) or text[pos] == "[" else None

    def parse(self, text: str) -> ToolParse:
        start = self._list_start(text)
        if start is None or start == len(text):
            return ToolParse(text, [])
        source = text[start:].rstrip()
        if self.START in text[:start]:
            source = source.removesuffix(self.END)
        try:
            return ToolParse(None, _python_calls(source))
        except ValueError:
            return ToolParse(text, [])

    def content_end(self, text: str) -> int:
        return len(text) if self._list_start(text) is None else 0

    def complete_calls(self, text: str) -> list[ParsedToolCall]:
        # The longest start of the list that ends with a `)` and parses once closed: what
        # closes there stays the same call in any longer text that is a list of calls. Each
        # `)` of a growing text is tried once (a long code argument has many).
        start = self._list_start(text)
        if start is None:
            return []
        if not text.startswith(self._tried):
            self._tried, self._whole = "", []
        end = text.rfind(")")
        while end > start and end >= len(self._tried):
            try:
                self._whole = _python_calls(text[start:end + 1] + "]")
                break
            except ValueError:
                end = text.rfind(")", start, end)
        self._tried = text
        return self._whole


class Llama4PythonicToolParser(PythonicToolParser):
    """vLLM's name for the pythonic format as Llama 4 writes it."""

    name = "llama4_pythonic"
