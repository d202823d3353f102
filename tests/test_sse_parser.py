"""The incremental SSE parser and the pure decoding helpers of the reading module.

PROTOCOL.md §5.8 (SSE response format: ``data``/``control`` events, multi-line data, base64
for binary streams) and §9.1 (JSON mode: every response is one JSON array of messages).
No network here: ``hypothesis`` drives the parser with arbitrary chunk boundaries.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from durable_streams import ParseError
from durable_streams._sse import ServerSentEvent, SSEParser
from durable_streams.reading import decode_sse_base64, join_json_arrays, parse_json_array


def parse_all(body: bytes, cuts: list[int] | None = None) -> list[ServerSentEvent]:
    """Feed ``body`` split at ``cuts`` (byte positions) and collect every event."""
    parser = SSEParser()
    events: list[ServerSentEvent] = []
    start = 0
    for cut in sorted(set(cuts or [])):
        events.extend(parser.feed(body[start:cut]))
        start = cut
    events.extend(parser.feed(body[start:]))
    events.extend(parser.close())
    return events


def split_points(data: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(min_value=0, max_value=len(data)), max_size=12)


# -- examples ----------------------------------------------------------------------------------


def test_reference_server_shape_without_space_after_colon() -> None:
    """§5.8: the reference server writes ``data:[...]`` with no space after the colon."""
    body = b'event: data\ndata:[{"a":1}]\n\nevent: control\ndata:{"streamNextOffset":"1_2"}\n\n'
    assert parse_all(body) == [
        ServerSentEvent("data", '[{"a":1}]'),
        ServerSentEvent("control", '{"streamNextOffset":"1_2"}'),
    ]


def test_one_space_is_removed_and_only_one() -> None:
    body = b"data:  two spaces\n\ndata:none\n\ndata\n\n"
    assert [e.data for e in parse_all(body)] == [" two spaces", "none", ""]


def test_multi_line_data_is_joined_with_newlines() -> None:
    """§5.8 example: a JSON array spread across several ``data:`` lines."""
    body = b'event: data\ndata: [\ndata: {"k":"v"},\ndata: {"k":"w"}\ndata: ]\n\n'
    (event,) = parse_all(body)
    assert event.event == "data"
    assert event.data == '[\n{"k":"v"},\n{"k":"w"}\n]'
    assert json.loads(event.data) == [{"k": "v"}, {"k": "w"}]


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(eol: bytes) -> None:
    body = eol.join([b"event: control", b"data: {}", b"", b": comment", b"data: x", b"", b""])
    assert parse_all(body) == [ServerSentEvent("control", "{}"), ServerSentEvent("message", "x")]


def test_cr_then_lf_in_the_next_chunk_is_one_line_ending() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == [ServerSentEvent("message", "a")]
    assert parser.feed(b"\ndata: b\r\n\r\n") == [ServerSentEvent("message", "b")]


def test_comments_unknown_fields_and_events_without_data() -> None:
    body = b": hello\nfoo: bar\nevent: control\n\nevent: data\nid: 7\nretry: 15\ndata: x\n\n"
    events = parse_all(body)
    # the first block has no data line: not dispatched, and its event type does not leak
    assert events == [ServerSentEvent("data", "x", id="7", retry=15)]


def test_bom_and_split_utf8() -> None:
    body = "\ufeffdata: h\u00e9llo \u2603\n\n".encode()
    for cut in range(len(body) + 1):
        assert parse_all(body, [cut]) == [ServerSentEvent("message", "h\u00e9llo \u2603")]


def test_unfinished_event_at_end_is_dropped() -> None:
    assert parse_all(b"data: complete\n\ndata: partial\n") == [
        ServerSentEvent("message", "complete")
    ]


# -- properties --------------------------------------------------------------------------------

_text = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"),
    max_size=30,
)
_event = st.tuples(
    st.sampled_from(["data", "control", "message", "custom-type"]),
    st.lists(_text, min_size=1, max_size=4),
    st.lists(_text, max_size=2),  # comments before the event
)


@st.composite
def sse_documents(draw: st.DrawFn) -> tuple[bytes, list[ServerSentEvent]]:
    events = draw(st.lists(_event, max_size=8))
    out: list[bytes] = []
    expected = []
    for name, lines, comments in events:
        eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
        for comment in comments:
            out.append(f":{comment}{eol}".encode())
        if name != "message" or draw(st.booleans()):
            out.append(f"event: {name}{eol}".encode())
        for line in lines:
            # the space after the colon is optional unless the value itself starts with one
            sep = " " if line.startswith(" ") or draw(st.booleans()) else ""
            out.append(f"data:{sep}{line}{eol}".encode())
        out.append(eol.encode())
        expected.append(ServerSentEvent(name, "\n".join(lines)))
    return b"".join(out), expected


@given(sse_documents(), st.data())
def test_any_chunking_gives_the_same_events(
    doc: tuple[bytes, list[ServerSentEvent]], data: st.DataObject
) -> None:
    body, expected = doc
    cuts = data.draw(split_points(body))
    assert parse_all(body, cuts) == expected


@given(st.binary(max_size=300), st.integers(min_value=1, max_value=40),
       st.sampled_from(["\n", "\r\n", "\r"]), st.data())
def test_base64_split_across_lines_and_chunks(
    payload: bytes, width: int, eol: str, data: st.DataObject
) -> None:
    """§5.8: base64 may be split across ``data:`` lines; CR/LF are removed before decoding."""
    text = base64.b64encode(payload).decode()
    lines = [text[i:i + width] for i in range(0, len(text), width)] or [""]
    body = "".join(f"data:{line}{eol}" for line in lines).encode() + eol.encode()
    body = f"event: data{eol}".encode() + body
    cuts = data.draw(split_points(body))
    (event,) = parse_all(body, cuts)
    assert decode_sse_base64(event.data) == payload
    # the same text with CRLF kept inside (as a lenient server might send) also decodes
    assert decode_sse_base64(event.data.replace("\n", "\r\n")) == payload


def test_invalid_base64_is_a_parse_error() -> None:
    with pytest.raises(ParseError):
        decode_sse_base64("not base64!")


_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                  max_size=3),
    max_leaves=8,
)


@given(st.lists(st.lists(_json_value, max_size=5), max_size=6), st.data())
def test_json_batches_flatten_to_the_messages_in_order(
    batches: list[list[Any]], data: st.DataObject
) -> None:
    """§9.1: each response/data event is one JSON array; items are flattened, in order."""
    texts = []
    for batch in batches:
        if data.draw(st.booleans()):
            text = json.dumps(batch, separators=(",", ":"))
        else:  # spread over lines as in the §5.8 example, with optional spaces
            text = "[\n" + ",\n".join(json.dumps(item, indent=1) for item in batch) + "\n]"
        texts.append(text.encode())
    flattened = [item for text in texts for item in parse_json_array(text, where="test")]
    assert flattened == [item for batch in batches for item in batch]
    if texts:
        joined = join_json_arrays(texts)
        assert parse_json_array(joined, where="test") == flattened


@pytest.mark.parametrize("body", [b'[{"a":1}', b'XY"a":1}]', b'{"a":1}', b"\xff[]", b"[NaN]"])
def test_bad_json_bodies_are_parse_errors(body: bytes) -> None:
    with pytest.raises(ParseError):
        parse_json_array(body, where="read of test")


# -- cost: linear in the input (an endless line must not be re-scanned on every chunk) --------


class _CountingPattern:
    """Stands in for the parser's line-end pattern and counts the characters it is made to
    scan: the parser's work, independent of the machine's speed."""

    def __init__(self, pattern: Any) -> None:
        self.pattern = pattern
        self.scanned = 0

    def finditer(self, text: str, pos: int = 0) -> Any:
        self.scanned += len(text) - pos
        return self.pattern.finditer(text, pos)

    def split(self, text: str) -> Any:  # the old, quadratic parser split its whole buffer
        self.scanned += len(text)
        return self.pattern.split(text)


def _scanned(chunks: list[bytes], monkeypatch: pytest.MonkeyPatch) -> int:
    from durable_streams import _sse

    counter = _CountingPattern(_sse._LINE_END)
    monkeypatch.setattr(_sse, "_LINE_END", counter)
    parser = SSEParser()
    for chunk in chunks:
        parser.feed(chunk)
    monkeypatch.undo()
    return counter.scanned


def test_an_endless_line_fed_in_small_chunks_is_scanned_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    chunks = [b"data:"] + [b"x" * 100] * 2000  # 200 KB, one line, never ended
    assert _scanned(chunks, monkeypatch) == sum(len(c) for c in chunks)


@given(lines=st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=20),
       size=st.integers(min_value=1, max_value=257))
def test_parser_work_is_linear_in_its_input(lines: list[int], size: int) -> None:
    """Whatever the line lengths and chunk size, each character is scanned once."""
    body = b"".join(b"data:" + b"y" * n + b"\n" + (b"\n" if i % 3 == 0 else b"")
                    for i, n in enumerate(lines))
    chunks = [body[i:i + size] for i in range(0, len(body), size)]
    with pytest.MonkeyPatch.context() as mp:
        assert _scanned(chunks, mp) <= len(body)


def test_a_line_past_the_limit_raises_and_a_line_at_it_passes() -> None:
    from durable_streams._sse import SSELimitExceeded

    parser = SSEParser(max_bytes=1000)
    (event,) = parser.feed(b"data:" + b"a" * 995 + b"\n\n")
    assert len(event.data) == 995
    with pytest.raises(SSELimitExceeded):
        for _ in range(20):
            parser.feed(b"b" * 100)  # never ends
    with pytest.raises(SSELimitExceeded):
        SSEParser(max_bytes=1000).feed(b"data:" + b"c" * 2000 + b"\n")
    many = SSEParser(max_bytes=1000)
    with pytest.raises(SSELimitExceeded):  # one event's data lines add up past the limit
        many.feed(b"data:" + b"d" * 400 + b"\n" + b"data:" + b"e" * 400 + b"\n"
                  + b"data:" + b"f" * 400 + b"\n")
