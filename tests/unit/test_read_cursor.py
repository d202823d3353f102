"""The read cursor (``durable_streams._read_cursor``), without a server.

Every response of a catch-up or long-poll read (PROTOCOL §5.6, §5.7) and every SSE control
event (§5.8) goes through :class:`ReadCursor`; these tables and properties pin down what each
one does to the offset (§8: ordered, never moving back), the cursor echo (§10.1), the
up-to-date and closed (EOF) flags, the status, and what is delivered.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import pytest
from blocking_probe import blocked
from hypothesis import given
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from durable_streams import errors
from durable_streams._read_cursor import Chunk, ReadCursor, RetryableRead
from durable_streams._read_interrupt import Stopped, StopSignal
from durable_streams._response import Response

URL = "http://reader:s3cret@durable.test/v1/stream/orders?token=abc"


def off(n: int) -> str:
    """An offset in the reference server's fixed-width form (ordered as text, §8)."""
    return f"{0:016d}_{n:016d}"


def hdrs(next_offset: str | None, *, up_to_date: bool = False, closed: bool = False,
         cursor: str | None = None, **extra: str) -> CaseInsensitiveDict[str]:
    h: CaseInsensitiveDict[str] = CaseInsensitiveDict()
    if next_offset is not None:
        h["Stream-Next-Offset"] = next_offset
    if up_to_date:
        h["Stream-Up-To-Date"] = "true"
    if closed:
        h["Stream-Closed"] = "true"
    if cursor is not None:
        h["Stream-Cursor"] = cursor
    for name, value in extra.items():
        h[name.replace("_", "-")] = value
    return h


def state(c: ReadCursor) -> tuple[Any, ...]:
    return (c.offset, c.cursor, c.up_to_date, c.closed, c.status)


def control(next_offset: str | None, **fields: Any) -> str:
    body: dict[str, Any] = dict(fields)
    if next_offset is not None:
        body["streamNextOffset"] = next_offset
    return json.dumps(body)


# -- HTTP responses: one table ----------------------------------------------------------------

# (start offset, status, headers, body) -> (delivered data or None, offset, up_to_date, closed)
RESPONSES = [
    pytest.param("-1", 200, hdrs(off(3)), b"abc", (b"abc", off(3), False, False),
                 id="data-more-to-come"),
    pytest.param("-1", 200, hdrs(off(3), up_to_date=True), b"abc",
                 (b"abc", off(3), True, False), id="data-caught-up"),
    pytest.param(off(3), 200, hdrs(off(3), up_to_date=True), b"",
                 (b"", off(3), True, False), id="empty-catch-up-at-tail-notifies"),
    pytest.param(off(3), 204, hdrs(off(3), up_to_date=True), b"",
                 (b"", off(3), True, False), id="long-poll-timeout-204-notifies"),
    pytest.param(off(3), 204, hdrs(off(3), up_to_date=True, closed=True), b"",
                 (b"", off(3), True, True), id="long-poll-eof-204"),
    pytest.param(off(3), 200, hdrs(off(3), closed=True), b"",
                 (b"", off(3), True, True), id="catch-up-eof-closed-implies-up-to-date"),
    pytest.param(off(3), 200, hdrs(off(5), closed=True), b"de",
                 (b"de", off(5), True, True), id="last-data-with-eof"),
    pytest.param(off(3), 200, hdrs(off(5)), b"",
                 (None, off(5), False, False), id="empty-with-progress-delivers-nothing"),
    pytest.param(off(3), 200, hdrs(off(3)), b"",
                 (b"", off(3), True, False), id="empty-without-progress-counts-as-up-to-date"),
    pytest.param("now", 200, hdrs(off(9), up_to_date=True), b"",
                 (b"", off(9), True, False), id="offset-now-takes-the-tail"),
    pytest.param(off(3), 200, hdrs(off(4), Stream_Up_To_Date="TRUE"), b"x",
                 (b"x", off(4), True, False), id="true-in-any-case"),
    pytest.param(off(3), 200, hdrs(off(4), Stream_Up_To_Date="yes", Stream_Closed="1"), b"x",
                 (b"x", off(4), False, False), id="only-true-is-true"),
]


@pytest.mark.parametrize(("start", "status", "headers", "body", "expected"), RESPONSES)
def test_responses_move_the_cursor(start: str, status: int, headers: Any, body: bytes,
                                   expected: tuple[bytes | None, str, bool, bool]) -> None:
    """§5.6/§5.7: Stream-Next-Offset, Stream-Up-To-Date and Stream-Closed, per response."""
    data, offset, up_to_date, closed = expected
    c = ReadCursor(URL, start)
    chunk = c.apply_response(status, headers, body)
    assert (c.offset, c.up_to_date, c.closed, c.status) == (offset, up_to_date, closed, status)
    if data is None:
        assert chunk is None
    else:
        assert chunk is not None and chunk.items is None
        assert chunk.event.data == data
        assert (chunk.event.offset, chunk.event.up_to_date, chunk.event.closed) == (
            offset, up_to_date, closed)


def test_cursor_is_kept_until_the_server_sends_a_new_one() -> None:
    """§10.1: the last Stream-Cursor is echoed; a response without one keeps it."""
    c = ReadCursor(URL, "-1")
    assert "cursor" not in c.query(None)
    c.apply_response(200, hdrs(off(1), cursor="c1"), b"a")
    assert c.cursor == "c1"
    c.apply_response(200, hdrs(off(2)), b"b")
    assert c.cursor == "c1"
    chunk = c.apply_response(200, hdrs(off(3), up_to_date=True, cursor="c2"), b"c")
    assert c.cursor == "c2" and chunk is not None and chunk.event.cursor == "c2"
    assert c.query("long-poll") == {"offset": off(3), "live": "long-poll", "cursor": "c2"}


def test_response_without_next_offset_is_a_protocol_error() -> None:
    c = ReadCursor(URL, off(1))
    before = state(c)
    with pytest.raises(errors.DurableStreamError) as info:
        c.apply_response(200, hdrs(None, up_to_date=True), b"x")
    assert info.value.code == "PROTOCOL_ERROR" and info.value.status == 200
    assert "Stream-Next-Offset" in str(info.value)
    assert state(c) == before


@pytest.mark.parametrize("status", [200, 204])
def test_an_answer_before_the_requested_offset_is_retried_not_applied(status: int) -> None:
    """§8: offsets never move back; the answer is dropped and asked for again."""
    c = ReadCursor(URL, "-1")
    c.apply_response(200, hdrs(off(10), up_to_date=True, cursor="c1"), b"0123456789")
    before = state(c)
    with pytest.raises(RetryableRead) as info:
        c.apply_response(status, hdrs(off(4), up_to_date=True, cursor="c0"), b"")
    assert info.value.retry_after is None
    assert info.value.error.code == "PROTOCOL_ERROR"
    assert off(4) in str(info.value.error) and off(10) in str(info.value.error)
    assert state(c) == before
    # The same offset again is not a step back.
    assert c.apply_response(200, hdrs(off(10), up_to_date=True), b"") is not None


@pytest.mark.parametrize("start", ["-1", "now"])
def test_sentinel_offsets_accept_any_next_offset(start: str) -> None:
    c = ReadCursor(URL, start)
    c.apply_response(200, hdrs(off(0), up_to_date=True), b"")
    assert c.offset == off(0)


# -- JSON mode (§9.1) ----------------------------------------------------------------------------


def test_json_bodies_are_parsed_into_items() -> None:
    c = ReadCursor(URL, "-1", json_mode=True)
    chunk = c.apply_response(200, hdrs(off(2)), b'[{"a":1},[2]]')
    assert chunk is not None and chunk.items == [{"a": 1}, [2]]
    assert chunk.event.data == b'[{"a":1},[2]]'
    # An empty array delivers nothing unless it is an up-to-date notification.
    assert c.apply_response(200, hdrs(off(3)), b"[]") is None
    note = c.apply_response(204, hdrs(off(3), up_to_date=True), b"")
    assert note is not None and note.items == [] and note.event.data == b""


@pytest.mark.parametrize("body", [b"[1,", b'{"a":1}', b"[NaN]", b"\xff[]"])
def test_bad_json_bodies_raise_parse_error_and_do_not_move(body: bytes) -> None:
    c = ReadCursor(URL, off(1), json_mode=True)
    with pytest.raises(errors.ParseError):
        c.apply_response(200, hdrs(off(2), up_to_date=True), body)
    assert state(c) == (off(1), None, False, False, None)


# -- SSE control events (§5.8) ---------------------------------------------------------------


def test_control_event_releases_the_data_before_it() -> None:
    c = ReadCursor(URL, "-1")
    chunk = c.apply_control(control(off(5), streamCursor="k1"), ["ab", "cde"], False)
    assert chunk is not None and chunk.event.data == b"abcde"
    assert state(c) == (off(5), "k1", False, False, 200)
    # A keep-alive: no data, up to date -> a notification.
    note = c.apply_control(control(off(5), streamCursor="k2", upToDate=True), [], False)
    assert note == Chunk(note.event, None) and note.event.data == b""
    assert state(c) == (off(5), "k2", True, False, 200)
    # EOF: streamClosed implies up to date.
    eof = c.apply_control(control(off(5), streamClosed=True), [], False)
    assert eof is not None and eof.event.closed and eof.event.up_to_date
    assert c.cursor == "k2"  # a control without a cursor keeps the last one


def test_control_without_data_and_not_up_to_date_delivers_nothing() -> None:
    c = ReadCursor(URL, off(1))
    assert c.apply_control(control(off(1)), [], False) is None
    assert c.offset == off(1) and not c.up_to_date


def test_control_flags_must_be_json_true() -> None:
    c = ReadCursor(URL, off(1))
    c.apply_control(control(off(2), upToDate="true", streamClosed=1), ["x"], False)
    assert not c.up_to_date and not c.closed


def test_base64_data_events_are_decoded() -> None:
    payload = bytes(range(256))
    text = base64.b64encode(payload).decode()
    lines = "\n".join(text[i:i + 64] for i in range(0, len(text), 64))  # split over lines
    c = ReadCursor(URL, "-1")
    chunk = c.apply_control(control(off(256), upToDate=True), [lines], True)
    assert chunk is not None and chunk.event.data == payload
    with pytest.raises(errors.ParseError):
        c.apply_control(control(off(300)), ["not base64!"], True)
    assert c.offset == off(256)


def test_json_data_events_are_joined_into_one_array() -> None:
    c = ReadCursor(URL, "-1", json_mode=True)
    chunk = c.apply_control(control(off(3), upToDate=True), ["[1]", " ", '[{"b":2},3]'], False)
    assert chunk is not None and chunk.items == [1, {"b": 2}, 3]
    assert json.loads(chunk.event.data) == [1, {"b": 2}, 3]


@pytest.mark.parametrize("text", ["", "not json", "[1]", '"x"', control(None),
                                  control(""), json.dumps({"streamNextOffset": 5})])
def test_malformed_control_events_are_parse_errors(text: str) -> None:
    c = ReadCursor(URL, off(1))
    with pytest.raises(errors.ParseError) as info:
        c.apply_control(text, ["data"], False)
    assert "control" in str(info.value)
    assert state(c) == (off(1), None, False, False, None)


def test_control_before_the_current_offset_is_retried() -> None:
    c = ReadCursor(URL, off(7))
    with pytest.raises(RetryableRead):
        c.apply_control(control(off(6), upToDate=True), ["late"], False)
    assert state(c) == (off(7), None, False, False, None)


def test_sse_status_is_that_of_the_connection() -> None:
    c = ReadCursor(URL, "-1")
    c.apply_response(204, hdrs(off(0), up_to_date=True), b"")
    assert c.status == 204
    c.apply_control(control(off(1)), ["a"], False, status=200)
    assert c.status == 200


# -- queries, the end of a read, messages ----------------------------------------------------


def test_query_carries_offset_live_mode_and_cursor() -> None:
    c = ReadCursor(URL, "now")
    assert c.query(None) == {"offset": "now"}
    assert c.query("sse") == {"offset": "now", "live": "sse"}


@pytest.mark.parametrize(("up_to_date", "closed", "stop_when_current", "finished"), [
    (False, False, True, False),
    (True, False, True, True),
    (True, False, False, False),  # a live read goes on after catching up
    (True, True, False, True),  # EOF ends every read
    (False, False, False, False),
])
def test_finished(up_to_date: bool, closed: bool, stop_when_current: bool,
                  finished: bool) -> None:
    c = ReadCursor(URL, off(1))
    c.up_to_date, c.closed = up_to_date, closed
    assert c.finished(stop_when_current) is finished


def test_messages_name_the_read_without_secrets() -> None:
    c = ReadCursor(URL, off(4))
    where = c.where()
    assert "durable.test/v1/stream/orders" in where and off(4) in where
    assert "s3cret" not in where and "abc" not in where
    with pytest.raises(RetryableRead) as info:
        c.apply_response(200, hdrs(off(1)), b"")
    assert "s3cret" not in str(info.value.error) and "token=abc" not in str(info.value.error)


# -- properties ------------------------------------------------------------------------------

answers = st.lists(
    st.tuples(
        st.sampled_from(["http", "sse"]),
        st.integers(min_value=0, max_value=40),  # next offset
        st.binary(max_size=4),
        st.booleans(),  # up to date
        st.booleans(),  # closed
        st.sampled_from([200, 204]),
    ),
    max_size=30,
)


@given(answers)
def test_the_offset_never_moves_back_and_nothing_is_lost(seq: list[Any]) -> None:
    """Whatever the server answers, the offset only grows, a rejected answer changes
    nothing, and what is delivered is exactly the data of the accepted answers."""
    c = ReadCursor(URL, "-1")
    delivered: list[bytes] = []
    accepted: list[bytes] = []
    for kind, n, data, up_to_date, closed, status in seq:
        before = state(c)
        try:
            if kind == "http":
                if status == 204:
                    data = b""
                chunk = c.apply_response(status, hdrs(off(n), up_to_date=up_to_date,
                                                      closed=closed), data)
            else:
                text = control(off(n), upToDate=up_to_date, streamClosed=closed)
                parts = [base64.b64encode(data).decode()] if data else []
                chunk = c.apply_control(text, parts, True)
        except RetryableRead:
            assert before[0] != "-1" and off(n) < before[0]
            assert state(c) == before
            continue
        assert before[0] == "-1" or c.offset >= before[0]
        assert c.offset == off(n)
        assert c.closed is closed and (c.up_to_date is (up_to_date or closed)
                                       or (kind == "http" and not data
                                           and off(n) == before[0]))
        accepted.append(data)
        if chunk is not None:
            assert chunk.event.offset == c.offset
            delivered.append(chunk.event.data)
            assert chunk.event.data or chunk.event.up_to_date or chunk.event.closed
        else:
            assert not data and not c.up_to_date and not c.closed
    assert b"".join(delivered) == b"".join(accepted)


@given(st.lists(st.lists(st.integers() | st.text(max_size=3), max_size=3), max_size=5),
       st.booleans())
def test_json_chunks_carry_exactly_the_messages(arrays: list[list[Any]], sse: bool) -> None:
    c = ReadCursor(URL, "-1", json_mode=True)
    flat = [item for array in arrays for item in array]
    if sse:
        chunk = c.apply_control(control(off(1), upToDate=True),
                                [json.dumps(a) for a in arrays], False)
    else:
        chunk = c.apply_response(200, hdrs(off(1), up_to_date=True), json.dumps(flat).encode())
    assert chunk is not None and chunk.items == flat
    assert (json.loads(chunk.event.data) if chunk.event.data else []) == flat


# -- stopping from another thread (``_read_interrupt``) ---------------------------------------


def test_interrupt_wakes_a_sleeping_reader_and_is_sticky() -> None:
    stop = StopSignal()
    threading.Timer(0.05, stop.interrupt, args=("closed",)).start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        stop.sleep(30)
    assert time.monotonic() - started < 5
    stop.interrupt("deadline")
    assert stop.reason == "closed"  # the first reason wins
    with pytest.raises(Stopped):
        stop.check()


def test_an_interrupted_call_is_abandoned_and_its_answer_closed() -> None:
    stop = StopSignal()
    release = threading.Event()
    closed = threading.Event()

    class _Raw:
        status, headers, reason = 200, {}, "OK"

    class Answer(Response):  # an answer that comes after the reader gave up
        def __init__(self) -> None:
            super().__init__(_Raw(), "http://h/s")

        def close(self) -> None:
            closed.set()

    helper_started = threading.Event()

    def slow() -> Any:
        helper_started.set()
        release.wait(10)
        return Answer()

    def interrupt_when_blocked() -> None:
        deadline = time.monotonic() + 5
        while not (helper_started.is_set() and blocked(caller)) and time.monotonic() < deadline:
            time.sleep(0.001)
        stop.interrupt("closed")

    caller = threading.current_thread()
    threading.Thread(target=interrupt_when_blocked, daemon=True).start()
    with pytest.raises(Stopped):
        stop.call(slow)
    assert not closed.is_set()
    release.set()
    assert closed.wait(5)  # the helper thread closed the abandoned answer
    stop2 = StopSignal()
    stop2.interrupt("closed")
    with pytest.raises(Stopped):
        stop2.call(slow)  # never started once stopping


def test_deadline_interrupts_and_finish_cancels_it() -> None:
    stop = StopSignal()
    stop.start_deadline(time.monotonic() + 0.05)
    with pytest.raises(Stopped):
        stop.sleep(10)
    assert stop.reason == "deadline"
    late = StopSignal()
    late.start_deadline(time.monotonic() + 0.05)
    late.finish()
    assert not late._event.wait(0.2) and late.reason is None
