"""Is this one JSON value? Checked without any Python limit (recursion depth, digits).

The fast path is the C parser of :mod:`json` (UTF-8 only, no ``NaN``/``Infinity``, as the
server parses). When it refuses a text, the verdict comes from :func:`scan`, an iterative
scanner of RFC 8259 with an explicit stack: a refusal that was only a Python limit
(``RecursionError`` for deep nesting, the integer digit limit of
``sys.set_int_max_str_digits``) is thereby overruled, so a valid message is never refused
because of the interpreter, and an invalid one gets a precise reason. The scanner builds no
values: its memory is the nesting stack (one small int per open bracket).
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["check_json_text", "scan"]

_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LITERALS = ("true", "false", "null")

# what the scanner expects next
_VALUE, _AFTER_VALUE, _KEY_OR_END, _KEY, _VALUE_OR_END = range(5)
_ARRAY, _OBJECT = 0, 1


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


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
