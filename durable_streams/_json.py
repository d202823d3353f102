"""JSON parsing with no recursion limit (PROTOCOL.md §9.1: any valid JSON value is a message).

:func:`json.loads` recurses once per nesting level and raises :class:`RecursionError` near
Python's recursion limit (about 1,000 levels): ``'[' * 3000 + ']' * 3000`` is valid JSON
that the server stores, yet ``json.loads`` cannot parse it. :func:`loads` parses with the
fast C decoder and, only when that runs out of recursion depth, again with
:func:`loads_iterative`, which keeps its own stack: the depth it accepts is bounded by the
input's size, never by the interpreter. Both follow the same rules: strict (no control
characters in strings), no ``NaN``/``Infinity``, duplicate keys keep the last value, errors
are :class:`json.JSONDecodeError` (a ``ValueError``).

:func:`check_json_text` answers "is this one JSON value?" without building it (the
producer's check of each message): the C parser first, and when it refuses a text, the
verdict of :func:`scan`, an iterative scanner with an explicit stack that also overrules
the integer digit limit of ``sys.set_int_max_str_digits``; its memory is the nesting stack.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring  # type: ignore[attr-defined]  # public since 2.6
from typing import Any

__all__ = ["check_json_text", "loads", "loads_iterative", "scan"]

_WS = re.compile(r"[ \t\n\r]*")
_NUMBER = re.compile(r"(-?(?:0|[1-9][0-9]*))(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS = {"true": True, "false": False, "null": None}
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')

# what the scanner expects next
_VALUE, _AFTER_VALUE, _KEY_OR_END, _KEY, _VALUE_OR_END = range(5)
_ARRAY, _OBJECT = 0, 1


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


def check_json_text(data: bytes | bytearray | memoryview | str) -> None:
    """Raise ``ValueError`` (with the reason and position) unless ``data`` is exactly one
    JSON value in UTF-8 (``str``: already decoded text). Never ``RecursionError``."""
    if isinstance(data, str):
        text = data
    else:
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 text: {exc}") from None
    try:
        json.loads(text, parse_constant=_reject_constant)
        return
    except (ValueError, RecursionError):
        pass
    scan(text)


def scan(text: str) -> None:
    """The iterative check: raise ``ValueError`` unless ``text`` is one JSON value."""
    stack: list[int] = []
    pos = _WS.match(text, 0).end()  # type: ignore[union-attr]
    end = len(text)
    state = _VALUE
    while True:
        if state in (_VALUE, _VALUE_OR_END):
            if pos >= end:
                raise ValueError(f"a value was expected at character {pos} (end of text)")
            c = text[pos]
            if state == _VALUE_OR_END and c == "]":
                stack.pop()
                pos += 1
                state = _AFTER_VALUE
            elif c == "[":
                stack.append(_ARRAY)
                pos += 1
                state = _VALUE_OR_END
            elif c == "{":
                stack.append(_OBJECT)
                pos += 1
                state = _KEY_OR_END
            elif c == '"':
                m = _STRING.match(text, pos)
                if m is None:
                    raise ValueError(f"invalid string at character {pos}")
                pos = m.end()
                state = _AFTER_VALUE
            elif c == "-" or "0" <= c <= "9":
                m = _NUMBER.match(text, pos)
                if m is None:
                    raise ValueError(f"invalid number at character {pos}")
                pos = m.end()
                state = _AFTER_VALUE
            else:
                for word in _LITERALS:
                    if text.startswith(word, pos):
                        pos += len(word)
                        state = _AFTER_VALUE
                        break
                else:
                    raise ValueError(f"a value was expected at character {pos}, got {c!r}")
        elif state in (_KEY_OR_END, _KEY):
            if pos < end and text[pos] == "}" and state == _KEY_OR_END:
                stack.pop()
                pos += 1
                state = _AFTER_VALUE
            else:
                m = _STRING.match(text, pos)
                if m is None:
                    raise ValueError(f"an object key (a string) was expected at character "
                                     f"{pos}")
                pos = _WS.match(text, m.end()).end()  # type: ignore[union-attr]
                if pos >= end or text[pos] != ":":
                    raise ValueError(f"':' was expected at character {pos}")
                pos += 1
                state = _VALUE
        else:  # _AFTER_VALUE
            if not stack:
                if pos != end:
                    raise ValueError(f"extra data at character {pos}: one JSON value per "
                                     "message")
                return
            if pos >= end:
                raise ValueError(f"unterminated {'array' if stack[-1] == _ARRAY else 'object'}"
                                 f" at the end of the text ({len(stack)} still open)")
            c = text[pos]
            top = stack[-1]
            if c == ",":
                pos += 1
                state = _VALUE if top == _ARRAY else _KEY
            elif (c == "]" and top == _ARRAY) or (c == "}" and top == _OBJECT):
                stack.pop()
                pos += 1
            else:
                closer = "]" if top == _ARRAY else "}"
                raise ValueError(f"',' or {closer!r} was expected at character {pos}, got "
                                 f"{c!r}")
        pos = _WS.match(text, pos).end()  # type: ignore[union-attr]
