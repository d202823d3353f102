"""JSON without a nesting limit (PROTOCOL.md §9.1: any valid JSON value is a message).

The iterative parser must agree with ``json.loads`` on every input ``json.loads`` can parse
(value or error), and parse what ``json.loads`` cannot: nesting deeper than Python's
recursion limit.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_streams import ParseError
from durable_streams import _protocol as P
from durable_streams._json import loads, loads_iterative
from durable_streams._read_cursor import ReadCursor, parse_json_array

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


@given(json_values, st.sampled_from([None, 0, 2]))
def test_iterative_parse_agrees_with_json_loads(value: Any, indent: int | None) -> None:
    text = json.dumps(value, indent=indent)
    assert loads_iterative(text) == json.loads(text)


@given(st.text(alphabet='[]{}",:0123456789.eE+-tfrunlsa \n\\x', max_size=30))
def test_iterative_parse_accepts_and_refuses_like_json_loads(text: str) -> None:
    try:
        expected: Any = json.loads(text)
    except ValueError:
        with pytest.raises(ValueError):
            loads_iterative(text)
    else:
        assert loads_iterative(text) == expected


@pytest.mark.parametrize("text", ["NaN", "[Infinity]", "[-Infinity]", "\ufeff[]", "[1,]",
                                  '{"a":1,}', "[1] 2", "", '"\x01"'])
def test_refused_as_the_server_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)
    with pytest.raises(ValueError):
        loads_iterative(text)


def _depth(value: Any) -> int:
    n = 0
    while isinstance(value, (list, dict)) and value:
        value = value[0] if isinstance(value, list) else next(iter(value.values()))
        n += 1
    return n


@pytest.mark.parametrize("depth", [3000, sys.getrecursionlimit() * 20])
def test_deep_nesting_parses_without_recursion_error(depth: int) -> None:
    text = "[" * depth + "]" * depth
    if depth > 3000:  # Python 3.13's C parser manages 3000 levels; no version manages this
        with pytest.raises(RecursionError):
            json.loads(text)  # the reason this module exists
    assert _depth(P.load_json(text.encode())) == depth - 1
    deep_obj = '{"a":' * depth + "1" + "}" * depth
    assert _depth(loads(deep_obj)) == depth


def test_reader_parses_a_deep_message_and_refuses_garbage_with_parse_error() -> None:
    deep = "[" * 5000 + "]" * 5000
    items = parse_json_array(f"[{deep},1]".encode(), where="read")
    assert len(items) == 2 and items[1] == 1
    cursor = ReadCursor("http://h/s", "-1", json_mode=True)
    chunk = cursor.apply_control('{"streamNextOffset":"1_1","upToDate":true}', [deep], False)
    assert chunk is not None and chunk.items is not None and _depth(chunk.items[0]) == 4998
    with pytest.raises(ParseError):
        parse_json_array(b"[" * 5000, where="read")
    with pytest.raises(ParseError):
        cursor.apply_control("[" * 5000, [], False)
