"""JSON parsing with no recursion limit (PROTOCOL.md §9.1: any valid JSON value is a message).

:func:`json.loads` recurses once per nesting level and raises :class:`RecursionError` near
Python's recursion limit (about 1,000 levels): ``'[' * 3000 + ']' * 3000`` is valid JSON
that the server stores, yet ``json.loads`` cannot parse it. :func:`loads` parses with the
fast C decoder and, only when that runs out of recursion depth, again with
:func:`loads_iterative`, which keeps its own stack: the depth it accepts is bounded by the
input's size, never by the interpreter. Both follow the same rules: strict (no control
characters in strings), no ``NaN``/``Infinity``, duplicate keys keep the last value, errors
are :class:`json.JSONDecodeError` (a ``ValueError``).
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring  # type: ignore[attr-defined]  # public since 2.6
from typing import Any

__all__ = ["loads", "loads_iterative"]

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS = {"true": True, "false": False, "null": None}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def loads(text: str) -> Any:
    """Parse one JSON value (strict, no NaN/Infinity), whatever its nesting depth."""
    try:
        return _DECODER.decode(text)
    except RecursionError:
        return loads_iterative(text)


def _fail(message: str, text: str, pos: int) -> json.JSONDecodeError:
    return json.JSONDecodeError(message, text, pos)


def _skip(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return match.end() if match is not None else pos


def _key(text: str, pos: int) -> tuple[str, int]:
    """An object key and its colon at ``pos``; returns the key and where its value starts."""
    if pos >= len(text) or text[pos] != '"':
        raise _fail("Expecting property name enclosed in double quotes", text, pos)
    key, pos = scanstring(text, pos + 1, True)
    pos = _skip(text, pos)
    if pos >= len(text) or text[pos] != ":":
        raise _fail("Expecting ':' delimiter", text, pos)
    return key, _skip(text, pos + 1)


def _scalar(text: str, pos: int) -> tuple[Any, int]:
    if pos >= len(text):
        raise _fail("Expecting value", text, pos)
    char = text[pos]
    if char == '"':
        string, after = scanstring(text, pos + 1, True)
        return str(string), int(after)
    for word, value in _LITERALS.items():
        if text.startswith(word, pos):
            return value, pos + len(word)
    match = _NUMBER.match(text, pos)
    if match is None:
        if text.startswith(("NaN", "Infinity", "-Infinity"), pos):
            raise _fail("NaN and Infinity are not valid JSON", text, pos)
        raise _fail("Expecting value", text, pos)
    integer, frac, exp = match.groups()
    number: Any = float(integer + (frac or "") + (exp or "")) if frac or exp else int(integer)
    return number, match.end()


def loads_iterative(text: str) -> Any:
    """Parse one JSON value with an explicit stack (no recursion at all)."""
    containers: list[Any] = []  # the open arrays and objects, innermost last
    keys: list[str | None] = []  # for each open object, the key whose value comes next
    pos = _skip(text, 0)
    end = len(text)
    while True:
        # A value starts at pos.
        char = text[pos] if pos < end else ""
        if char == "[" or char == "{":
            pos = _skip(text, pos + 1)
            closer = "]" if char == "[" else "}"
            if pos < end and text[pos] == closer:
                value: Any = [] if char == "[" else {}
                pos += 1
            elif char == "[":
                containers.append([])
                keys.append(None)
                continue
            else:
                key, pos = _key(text, pos)
                containers.append({})
                keys.append(key)
                continue
        else:
            value, pos = _scalar(text, pos)
        # A value ended: attach it, then close every container that ends here.
        while True:
            if not containers:
                pos = _skip(text, pos)
                if pos != end:
                    raise _fail("Extra data", text, pos)
                return value
            parent = containers[-1]
            if isinstance(parent, list):
                parent.append(value)
            else:
                parent[keys[-1]] = value
            pos = _skip(text, pos)
            char = text[pos] if pos < end else ""
            if char == ",":
                pos = _skip(text, pos + 1)
                if isinstance(parent, dict):
                    keys[-1], pos = _key(text, pos)
                break
            if char != ("]" if isinstance(parent, list) else "}"):
                delimiter = "','" + (" or ']'" if isinstance(parent, list) else " or '}'")
                raise _fail(f"Expecting {delimiter} delimiter", text, pos)
            pos += 1
            containers.pop()
            keys.pop()
            value = parent
