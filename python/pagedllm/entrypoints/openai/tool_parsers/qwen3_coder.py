"""Qwen3-Coder's XML tool calls, typed by the request's parameter schemas."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from typing import Any

from pagedllm.entrypoints.openai.tool_parsers.base import (
    MarkedToolParser,
    ParsedToolCall,
    encode_arguments,
    first_marker,
)

_JSON_TYPES = {type(None): "null", bool: "boolean", int: "integer", float: "number",
               str: "string", list: "array", dict: "object"}
# vLLM's order: a value is the first of its parameter's types that reads it.
_TYPE_ORDER = ("null", "integer", "number", "boolean", "object", "array", "string")
_BOOLEAN_WORDS = {"true": True, "1": True, "false": False, "0": False}


def _schema_types(schema: Any) -> set[str]:
    """The JSON types a parameter schema allows (its type, its enum values' types, anyOf /
    oneOf / allOf); "string" when it says none."""
    if not isinstance(schema, dict):
        return {"string"}
    declared = schema.get("type")
    types = {declared} if isinstance(declared, str) else set()
    if isinstance(declared, list):
        types.update(t for t in declared if isinstance(t, str))
    if isinstance(schema.get("enum"), list):
        types.update(_JSON_TYPES.get(type(value), "string") for value in schema["enum"])
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list):
            for choice in schema[key]:
                types |= _schema_types(choice)
    return types or {"string"}


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("JSON has no infinite numbers")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"JSON has no {name}")


# Strict JSON: no NaN / Infinity, which json.dumps would write back as invalid JSON.
_STRICT_JSON = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)


def _read_as(kind: str, text: str) -> Any:
    """`text` as a value of the JSON type `kind`; ValueError if it is not one."""
    word = text.strip()
    if kind == "string":
        return text
    if kind == "integer":
        return int(word)
    if kind == "number":
        number = _finite_float(word)
        return int(number) if number.is_integer() else number
    if kind == "null" and word.lower() == "null":
        return None
    if kind == "boolean" and word.lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[word.lower()]
    if kind in ("object", "array"):
        value = _STRICT_JSON.decode(word)
        if isinstance(value, dict if kind == "object" else list):
            return value
    raise ValueError(f"not a {kind}: {text!r}")


def typed_value(text: str, schema: Any) -> Any:
    """A value written as text, typed by its parameter's schema as vLLM types it: the first of
    the schema's types that reads it; failing all, any JSON it reads as (unless the schema
    allows strings), else the text."""
    types = _schema_types(schema)
    for kind in _TYPE_ORDER:
        if kind in types:
            try:
                return _read_as(kind, text)
            except ValueError:
                continue
    try:
        return _STRICT_JSON.decode(text.strip())
    except ValueError:
        return text


class Qwen3CoderToolParser(MarkedToolParser):
    """Qwen3-Coder's XML calls, as vLLM reads them:
        <tool_call>
        <function=get_weather>
        <parameter=city>
        Paris
        </parameter>
        </function>
        </tool_call>
    A value is the text between its tags less one newline at each end, typed by the request's
    tool schema (integer, number, boolean, null, object, array), else a string. A call counts
    once its </function> is written; <tool_call>, </tool_call> and a </parameter> before the
    next tag may be missing. Content is the text before the first call."""

    name = "qwen3_coder"
    keeps_special_tokens = True  # some tokenizers mark <tool_call> special
    FUNCTION, FUNCTION_END = "<function=", "</function>"
    STARTS = ("<tool_call>", FUNCTION)
    _PARAMETER = re.compile(r"<parameter=([^>]*)>(.*?)(?:</parameter>|(?=<parameter=)|\Z)",
                            re.DOTALL)

    def _call(self, function: str) -> ParsedToolCall:
        """A call from the text between `<function=` and `</function>`."""
        name, closed, body = function.partition(">")
        name = name.strip()
        if not closed or not name or "<" in name:
            raise ValueError("a function tag must be <function=NAME>")
        schema = self.tools.get(name)
        properties = schema.get("properties") if isinstance(schema, dict) else None
        arguments = {}
        for match in self._PARAMETER.finditer(body):
            key = match.group(1).strip()
            value = match.group(2).removeprefix("\n").removesuffix("\n")
            if isinstance(properties, dict) and key in properties:
                arguments[key] = typed_value(value, properties[key])
            else:
                arguments[key] = value
        return ParsedToolCall(name, encode_arguments(arguments))

    def _each_call(self, text: str) -> Iterator[ParsedToolCall]:
        start = first_marker(text, self.STARTS)
        pos = -1 if start < 0 else text.find(self.FUNCTION, start)
        while pos >= 0:
            end = text.find(self.FUNCTION_END, pos)
            if end < 0:
                raise ValueError("a function left open")
            yield self._call(text[pos + len(self.FUNCTION):end])
            pos = text.find(self.FUNCTION, end + len(self.FUNCTION_END))
