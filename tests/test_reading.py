"""Reading streams against the real reference server (PROTOCOL.md §5.6–5.8, §8, §9.1, §10).

Every mode (catch-up, long-poll, SSE, auto) is checked with each kind of content (JSON, text,
binary), from offsets ``-1``, ``now`` and a saved offset, up to EOF. Live tests synchronise
the writer and the reader with conditions on what the reader has received, never with
sleeps. Only what the server cannot produce or show (multi-line JSON ``data:`` events, a
connection cut between a data event and its control event, the query we send) is played by
``responses``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import responses
from blocking_probe import blocked

from durable_streams import (
    BadRequestError,
    DurableStream,
    InvalidOffsetError,
    JsonBatch,
    RetentionGoneError,
    RetryPolicy,
    StreamEvent,
    StreamNotFoundError,
    StreamResponse,
    stream,
)
from durable_streams.reading import LiveMode
from durable_streams.testing import ReferenceServer

pytestmark = pytest.mark.timeout(30)

JSON = "application/json"
FAST = RetryPolicy(max_retries=3, initial_delay_ms=1, max_delay_ms=5)
LIVE_MODES = ["long-poll", "sse", "auto"]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for a condition on observable state (not a sleep used as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


@dataclass
class Kind:
    content_type: str
    message: Callable[[int], Any]
    consume: Callable[[StreamResponse], Iterator[Any]]
    combine: Callable[[list[Any]], Any]


KINDS = {
    "json": Kind(JSON, lambda i: {"n": i, "s": "h\u00e9"}, lambda r: r.iter_json(), list),
    "text": Kind("text/plain; charset=utf-8", lambda i: f"line {i} \u00e9\u2603\n",
                 lambda r: r.iter_text(), "".join),
    "binary": Kind("application/octet-stream", lambda i: bytes([i % 256, 0, 255, 10, 13]),
                   lambda r: r.iter_bytes(), b"".join),
}


def create(url: str, kind: Kind) -> DurableStream:
    return DurableStream.create(url, content_type=kind.content_type, retry=FAST)


class Collector:
    """Runs a consumption in a thread and exposes what it received so far."""

    def __init__(self, pieces: Iterator[Any]) -> None:
        self.pieces: list[Any] = []
        self.error: BaseException | None = None
        self.done = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, args=(pieces,), daemon=True)
        self._thread.start()

    def _run(self, pieces: Iterator[Any]) -> None:
        try:
            for piece in pieces:
                with self._cond:
                    self.pieces.append(piece)
                    self._cond.notify_all()
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            self.done.set()
            with self._cond:
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 10.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.pieces) or self.done.is_set(),
                                     timeout)
            assert ok and predicate(self.pieces), f"reader got {self.pieces!r}"

    def join(self, timeout: float = 10.0) -> list[Any]:
        assert self.done.wait(timeout), "the reader did not finish"
        if self.error is not None:
            raise self.error
        return self.pieces


# -- catch-up (§5.6) ---------------------------------------------------------------------------


def test_catch_up_json_items_batches_and_offsets(json_stream: DurableStream) -> None:
    """§5.6, §9.1: a catch-up read returns every message; offset is the resume point."""
    for i in range(3):
        json_stream.append({"i": i})
    with stream(json_stream.url) as res:
        assert res.content_type == JSON
        assert res.offset == "-1"
        assert res.read_json() == [{"i": 0}, {"i": 1}, {"i": 2}]
        assert res.up_to_date and not res.closed
        saved = res.offset
    assert saved == json_stream.head().offset

    json_stream.append([{"i": 3}, {"i": 4}])  # one message that is a list (§9.1.2 wrapping)
    with json_stream.stream(offset=saved) as res:
        batches = list(res.iter_json_batches())
    assert [b.items for b in batches] == [[[{"i": 3}, {"i": 4}]]]
    assert isinstance(batches[0], JsonBatch)
    assert batches[0].offset == json_stream.head().offset and batches[0].up_to_date


def test_catch_up_events_and_now(json_stream: DurableStream) -> None:
    """§8: ``now`` skips existing data; the empty response is an up-to-date notification."""
    json_stream.append({"a": 1})
    with stream(json_stream.url, offset="now") as res:
        events = list(res.iter_events())
    assert events == [StreamEvent(b"", json_stream.head().offset, True, False, None)]

    with stream(json_stream.url) as res:
        (event,) = list(res.iter_events())
    assert event.data == b'[{"a":1}]' and event.up_to_date and not event.closed


def test_catch_up_text_and_binary(url: str, server: ReferenceServer) -> None:
    """§5.6: bytes come back exactly; text is decoded as UTF-8 across chunk boundaries."""
    text = DurableStream.create(url, content_type="text/plain")
    text.append("h\u00e9llo ")
    text.append("\u2603")
    with stream(url) as res:
        assert res.read_text() == "h\u00e9llo \u2603"
    with stream(url) as res:
        assert "".join(res.iter_text()) == "h\u00e9llo \u2603"

    binary_url = server.stream_url()
    binary = DurableStream.create(binary_url, content_type="application/octet-stream")
    payload = bytes(range(256))
    binary.append(payload)
    binary.append(b"\r\n")
    with stream(binary_url) as res:
        assert res.read_bytes() == payload + b"\r\n"
    with stream(binary_url, offset="now") as res:
        assert res.read_bytes() == b"" and res.up_to_date


def test_empty_stream_reads_nothing(json_stream: DurableStream) -> None:
    with json_stream.stream() as res:
        assert res.read_json() == []
        assert res.up_to_date and not res.closed


@pytest.mark.parametrize("kind", KINDS)
def test_closed_stream_catch_up_is_eof(url: str, kind: str) -> None:
    """§5.6: a 200 with the final data and ``Stream-Closed`` is EOF; so is 200 + empty."""
    k = KINDS[kind]
    handle = create(url, k)
    handle.append(k.message(1))
    final = handle.close_stream(final_message=k.message(2))
    with stream(url) as res:
        assert k.combine(list(k.consume(res))) == k.combine(
            [k.message(1), k.message(2)] if kind != "json" else [k.message(1), k.message(2)]
        )
        assert res.closed and res.up_to_date and res.offset == final
    with stream(url, offset=final) as res:
        events = list(res.iter_events())
    assert events == [StreamEvent(b"", final, True, True, None)]


def test_consumed_once(json_stream: DurableStream, server: ReferenceServer) -> None:
    text_stream = DurableStream.create(server.stream_url(), content_type="text/plain")
    res = stream(json_stream.url)
    assert list(res.iter_json()) == []
    with pytest.raises(RuntimeError, match="already consumed with iter_json"):
        res.read_json()
    res.close()
    with stream(text_stream.url) as res, pytest.raises(TypeError, match="JSON stream"):
        res.iter_json()
    closed = stream(text_stream.url)
    closed.close()
    with pytest.raises(RuntimeError, match="closed"):
        closed.read_bytes()


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("live", [False, "long-poll", "sse", "auto"])
@pytest.mark.parametrize("offset", ["-1", "now"])
def test_missing_stream_is_not_found(url: str, live: Any, offset: str) -> None:
    """§5.6–5.8: 404 for every mode and offset, with the stream URL in the message."""
    with pytest.raises(StreamNotFoundError) as info:
        stream(url, live=live, offset=offset, retry=FAST)
    assert info.value.status == 404 and info.value.code == "NOT_FOUND"
    assert urlparse(url).path in str(info.value)


@pytest.mark.parametrize("live", ["long-poll", "auto"])
def test_stream_deleted_before_the_live_phase(json_stream: DurableStream, live: LiveMode) -> None:
    """A 404 on the live request is raised (``auto`` does not fall back on a 404).

    (``live="sse"`` opens its connection in ``stream()`` itself: see the 404 test above.)"""
    res = json_stream.stream(live=live)
    json_stream.delete()
    with res, pytest.raises(StreamNotFoundError, match=urlparse(json_stream.url).path):
        list(res.iter_events())


def test_malformed_offset_is_invalid_offset(json_stream: DurableStream) -> None:
    """§5.6: 400 for a malformed offset, not retried."""
    with pytest.raises(InvalidOffsetError) as info:
        stream(json_stream.url, offset="not-an-offset")
    assert info.value.status == 400 and info.value.code == "INVALID_OFFSET"
    assert json_stream.url in str(info.value)


def test_400_is_not_retried(json_stream: DurableStream, server: ReferenceServer) -> None:
    """A 400 is final: a retry would have succeeded here, since the fault fires once."""
    server.inject_fault(json_stream.url, status=400, count=1, method="GET")
    with pytest.raises(BadRequestError) as info:
        stream(json_stream.url)
    assert info.value.status == 400


def test_soft_deleted_stream_is_gone(json_stream: DurableStream, server: ReferenceServer) -> None:
    """§5.6: 410 when the stream is soft-deleted (deleted while a fork still uses it)."""
    json_stream.append({"a": 1})
    fork_url = server.stream_url()
    response = requests.put(
        fork_url,
        headers={"Content-Type": JSON, "Stream-Forked-From": urlparse(json_stream.url).path},
        timeout=10,
    )
    assert response.status_code in (200, 201), response.text
    json_stream.delete()
    with pytest.raises(RetentionGoneError) as info:
        stream(json_stream.url)
    assert info.value.status == 410 and json_stream.url in str(info.value)


# -- live: a writer appends while a reader follows (§5.7, §5.8) --------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("live", LIVE_MODES)
def test_live_follow_every_message_once_in_order(url: str, live: LiveMode, kind: str) -> None:
    """§5.7/§5.8: catch up, follow live, stop at EOF: every message exactly once, in order."""
    k = KINDS[kind]
    handle = create(url, k)
    n = 10
    first = [k.message(i) for i in range(3)]
    for message in first:
        handle.append(message)
    res = stream(url, live=live, retry=FAST)
    reader = Collector(k.consume(res))

    def received(count: int) -> Callable[[list[Any]], bool]:
        want = k.combine([k.message(i) for i in range(count)])
        return lambda pieces: k.combine(pieces) == want

    reader.wait_for(received(3))  # caught up: the reader is now in its live phase
    for i in range(3, n):
        handle.append(k.message(i))
        if i % 2:
            reader.wait_for(received(i + 1))
    final = handle.close_stream()
    got = k.combine(reader.join())
    assert got == k.combine([k.message(i) for i in range(n)])
    assert res.closed and res.up_to_date and res.offset == final
    if live in ("long-poll", "sse"):
        assert res.cursor  # live responses carry a cursor (§10.1)
    res.close()


@pytest.mark.parametrize("live", LIVE_MODES)
def test_live_from_now_and_from_saved_offset(json_stream: DurableStream, live: LiveMode) -> None:
    """§8: ``now`` delivers only what is appended later; a saved offset resumes after it."""
    json_stream.append({"old": 1})
    res = json_stream.stream(offset="now", live=live)
    events: list[StreamEvent] = []
    live_now = threading.Event()

    def consume() -> Iterator[JsonBatch]:
        for batch in res.iter_json_batches():
            if batch.up_to_date:
                live_now.set()
            yield batch

    reader = Collector(consume())
    assert live_now.wait(10)
    json_stream.append({"new": 1})
    reader.wait_for(lambda batches: any(b.items for b in batches))
    res.close()
    batches = reader.join()
    assert [item for b in batches for item in b.items] == [{"new": 1}]
    saved = [b.offset for b in batches if b.items][0]
    del events

    json_stream.append({"new": 2})
    json_stream.close_stream()
    with json_stream.stream(offset=saved, live=live) as again:
        assert list(again.iter_json()) == [{"new": 2}]
        assert again.closed


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("live", LIVE_MODES)
@pytest.mark.parametrize("offset", ["-1", "now"])
def test_already_closed_stream_ends_at_once(url: str, live: LiveMode, kind: str,
                                            offset: str) -> None:
    """§5.7/§5.8/§8: a closed stream at the tail answers EOF at once in every mode."""
    k = KINDS[kind]
    handle = create(url, k)
    handle.append(k.message(7))
    final = handle.close_stream()
    started = time.monotonic()
    with stream(url, live=live, offset=offset) as res:
        got = k.combine(list(k.consume(res)))
        assert res.closed and res.offset == final
    assert time.monotonic() - started < 5  # far below the 30 s long-poll hold
    assert got == (k.combine([k.message(7)]) if offset == "-1" else k.combine([]))


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_close_while_following_ends_with_eof_event(json_stream: DurableStream,
                                                   live: LiveMode) -> None:
    """§5.7: 204 + Stream-Closed; §5.8: control with streamClosed — both end the read."""
    res = json_stream.stream(live=live)
    reader = Collector(res.iter_events())
    reader.wait_for(lambda events: any(e.up_to_date for e in events))
    final = json_stream.close_stream(final_message={"last": True})
    events = reader.join()
    assert events[-1].closed and events[-1].offset == final
    data = [e for e in events if e.data]
    assert data[-1].data == b'[{"last":true}]'


def test_sse_reads_the_backlog_over_sse(url: str, server: ReferenceServer) -> None:
    """§5.8: ``live="sse"`` reads everything over SSE, from the first request. The reference
    server writes ``data:<line>`` without a space, so by the SSE rules a message that starts
    with a space loses that one space over SSE (not over plain GETs)."""
    handle = DurableStream.create(url, content_type="text/plain")
    handle.append("  two leading spaces")
    with stream(url, live="sse", stop_at_up_to_date=True) as res:  # HEAD, then SSE
        assert res.content_type == "text/plain"
        assert res.read_text() == " two leading spaces"
    with stream(url) as res:
        assert res.read_text() == "  two leading spaces"


# -- stopping: close() from another thread, deadlines -------------------------------------------


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_close_from_another_thread_unblocks_a_live_read(
    json_stream: DurableStream, live: LiveMode
) -> None:
    """close() ends a read blocked in a long-poll (server hold: 30 s) or an idle SSE stream."""
    res = json_stream.stream(live=live)
    reader = Collector(res.iter_events())
    # caught up: the catch-up response, or the first control event of the SSE connection
    reader.wait_for(lambda events: len(events) >= 1)
    # white-box: the reader is inside its blocking request / SSE read
    wait_until(lambda: blocked(reader._thread))
    started = time.monotonic()
    res.close()
    reader.join(timeout=5)
    assert time.monotonic() - started < 2
    assert not res.closed  # the stream itself is still open
    json_stream.append({"still": "open"})


def has_items(count: int) -> Callable[[list[Any]], bool]:
    return lambda items: len(items) == count


@pytest.mark.parametrize("live", ["long-poll", "sse"])
@pytest.mark.parametrize("transport", ["default", "user session"])
def test_live_requests_are_interruptible_on_both_transports(
    url: str, live: LiveMode, transport: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default path stops a pending live request through its socket, with no thread
    per request; through a user's session each live request waits on a helper thread.
    Either way close() ends the blocked read at once and the handle stays usable."""
    session = requests.Session() if transport == "user session" else None
    handle = DurableStream.create(url, content_type=JSON, session=session)
    res = handle.stream(live=live)
    reader = Collector(res.iter_json())
    wait_until(lambda: blocked(reader._thread))  # caught up, waiting in the first live request
    started_threads: list[str] = []
    real_start = threading.Thread.start

    def spy_start(thread: threading.Thread) -> None:
        started_threads.append(thread.name)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", spy_start)
    for i in range(3):  # long-poll: each delivery is answered to a new request
        handle.append({"n": i})
        reader.wait_for(has_items(i + 1))
    wait_until(lambda: blocked(reader._thread))
    monkeypatch.undo()
    if transport == "default" or live == "sse":  # SSE: one request, made before the spy
        assert started_threads == []
    else:
        assert len(started_threads) >= 3, started_threads
    started = time.monotonic()
    res.close()
    assert reader.join(timeout=5) == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert time.monotonic() - started < 2
    handle.append({"n": 3})  # the shared connections are still fine
    assert handle.stream().read_json() == [{"n": i} for i in range(4)]
    handle.close()
    if session is not None:
        session.close()


@pytest.mark.parametrize("live", ["long-poll", "sse", "auto"])
def test_stop_after_ends_an_idle_live_read(json_stream: DurableStream, live: LiveMode) -> None:
    """``stop_after`` ends a live read with what it got; a quiet stream is up to date."""
    json_stream.append({"a": 1})
    started = time.monotonic()
    with json_stream.stream(live=live, stop_after=0.5) as res:
        items = list(res.iter_json())
    elapsed = time.monotonic() - started
    assert items == [{"a": 1}] and res.up_to_date and not res.closed
    assert 0.4 < elapsed < 3


@pytest.mark.parametrize("live", LIVE_MODES)
def test_stop_at_up_to_date_and_read_methods_end_when_caught_up(
    json_stream: DurableStream, live: LiveMode
) -> None:
    json_stream.append({"a": 1})
    with json_stream.stream(live=live, stop_at_up_to_date=True) as res:
        assert list(res.iter_json()) == [{"a": 1}]
    with json_stream.stream(live=live) as res:
        assert res.read_json() == [{"a": 1}]  # read_* stop at the first up-to-date


# -- long-poll timeouts and SSE keep-alives (a server with a short hold) ------------------------


@pytest.fixture(scope="module")
def quick_server() -> Iterator[ReferenceServer]:
    """A second server whose long-poll hold (and SSE keep-alive interval) is 200 ms."""
    with ReferenceServer(long_poll_timeout_ms=200) as srv:
        yield srv


@pytest.mark.parametrize("live", ["long-poll", "sse"])
def test_idle_timeouts_are_up_to_date_notifications(
    quick_server: ReferenceServer, live: LiveMode
) -> None:
    """§5.7: a 204 after the hold (SSE: a keep-alive control) is an empty up-to-date event."""
    url = quick_server.stream_url()
    handle = DurableStream.create(url, content_type="text/plain")
    calls: list[int] = []

    def counter() -> str:
        calls.append(1)
        return str(len(calls))

    res = stream(url, live=live, headers={"X-Count": counter})
    reader = Collector(res.iter_events())
    reader.wait_for(lambda events: len(events) >= 3)
    handle.append("after the quiet time")
    reader.wait_for(lambda events: any(e.data for e in events))
    handle.close_stream()
    events = reader.join()
    quiet = [e for e in events if not e.data]
    assert all(e.up_to_date for e in quiet)
    assert b"".join(e.data for e in events) == b"after the quiet time"
    assert events[-1].closed
    assert len(calls) >= 2  # dynamic headers are evaluated for every request


def test_status_is_204_after_an_empty_long_poll(quick_server: ReferenceServer) -> None:
    """§5.7: a long-poll at the tail that times out with nothing new answers 204, and
    ``res.status`` says so; the catch-up response before it was a 200."""
    url = quick_server.stream_url()
    handle = DurableStream.create(url, content_type="text/plain")
    tail = handle.append("old")
    res = stream(url, offset=tail, live="long-poll")
    assert res.status == 200  # the first (catch-up) response, sent by stream()
    with res:
        events = res.iter_events()
        first = next(events)  # the catch-up answer at the tail: empty, up to date
        assert first.data == b"" and first.up_to_date and res.status == 200
        quiet = next(events)  # the long-poll: held 200 ms, then 204 with nothing new
        assert quiet.data == b"" and quiet.up_to_date and not quiet.closed
        assert res.status == 204
        assert res.offset == tail
        handle.append("new")
        fresh = next(events)
        assert fresh.data == b"new" and res.status == 200


# -- what the server cannot show or produce (``responses``) ------------------------------------

FAKE = "http://durable.test/stream"


def _query(request: Any) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlparse(request.url).query).items()}


@responses.activate
def test_cursor_is_echoed_and_offsets_follow_next_offset() -> None:
    """§10.1: the client echoes the last Stream-Cursor; requests use Stream-Next-Offset."""
    seen: list[dict[str, str]] = []
    replies = [
        (200, {"Stream-Next-Offset": "0_1", "Stream-Up-To-Date": "true"}, "a"),
        (204, {"Stream-Next-Offset": "0_1", "Stream-Up-To-Date": "true",
               "Stream-Cursor": "100"}, ""),
        (200, {"Stream-Next-Offset": "0_2", "Stream-Up-To-Date": "true",
               "Stream-Cursor": "105"}, "b"),
        (204, {"Stream-Next-Offset": "0_2", "Stream-Up-To-Date": "true",
               "Stream-Closed": "true"}, ""),
    ]

    def reply(request: Any) -> tuple[int, dict[str, str], str]:
        seen.append(_query(request))
        status, headers, body = replies[len(seen) - 1]
        return status, {"Content-Type": "text/plain", **headers}, body

    responses.add_callback(responses.GET, FAKE, callback=reply)
    with stream(FAKE, live="long-poll", params={"offset": "ignored", "tenant": "t1"},
                session=requests.Session()) as res:
        assert res.read_text() == "a"  # read_* stop at the first up-to-date
    seen.clear()
    with stream(FAKE, live="long-poll", params={"tenant": "t1"}, session=requests.Session()) as res:
        assert "".join(res.iter_text()) == "ab" and res.closed
    assert seen == [
        {"offset": "-1", "tenant": "t1"},
        {"offset": "0_1", "live": "long-poll", "tenant": "t1"},
        {"offset": "0_1", "live": "long-poll", "cursor": "100", "tenant": "t1"},
        {"offset": "0_2", "live": "long-poll", "cursor": "105", "tenant": "t1"},
    ]


@responses.activate
def test_sse_multi_line_json_and_a_cut_between_data_and_control() -> None:
    """§5.8: JSON arrays spread over ``data:`` lines (CRLF too) are flattened; data whose
    control event never arrived is discarded and read again from the last control offset."""
    seen: list[dict[str, str]] = []
    sse = {"Content-Type": "text/event-stream"}
    bodies = [
        (200, sse, 'event: control\ndata: {"streamNextOffset":"0_0","upToDate":true}\n\n'
         ": the server ends this connection (as it may every ~60 s)\n"),
        (200, sse,
         'event: data\ndata: [\ndata: {"k":"v"},\ndata: {"k":"w"}\ndata: ]\n\n'
         'event: control\ndata: {"streamNextOffset":"0_2","streamCursor":"c1"}\n\n'
         ': the connection drops before the next control event\n'
         'event: data\ndata:[3]\n\n'),
        (200, sse,
         "event: data\r\ndata:[3]\r\n\r\nevent: whatever\r\ndata: ignored\r\n\r\n"
         'event: control\r\ndata:{"streamNextOffset":"0_3","streamCursor":"c2",'
         '"upToDate":true}\r\n\r\n'
         'event: data\r\ndata:[4,\r\ndata: 5]\r\n\r\n'
         'event: control\r\ndata:{"streamNextOffset":"0_5","streamClosed":true}\r\n\r\n'),
    ]

    def reply(request: Any) -> tuple[int, dict[str, str], str]:
        seen.append(_query(request))
        return bodies[len(seen) - 1]

    responses.add_callback(responses.GET, FAKE, callback=reply)
    with stream(FAKE, live="sse", retry=FAST, content_type=JSON, session=requests.Session()) as res:
        batches = list(res.iter_json_batches())
    assert [b.items for b in batches if b.items] == [[{"k": "v"}, {"k": "w"}], [3], [4, 5]]
    assert [b.offset for b in batches if b.items] == ["0_2", "0_3", "0_5"]
    assert batches[-1].closed and res.offset == "0_5"
    assert seen == [
        {"offset": "-1", "live": "sse"},  # live="sse": SSE from the first request
        {"offset": "0_0", "live": "sse"},  # reconnected after the server ended it
        {"offset": "0_2", "live": "sse", "cursor": "c1"},  # after the cut: last control
    ]


@responses.activate
def test_auto_falls_back_to_long_poll_when_sse_is_refused() -> None:
    """``live=True``: SSE first; a 400 to the SSE request switches to long-poll for good."""
    seen: list[dict[str, str]] = []

    def reply(request: Any) -> tuple[int, dict[str, str], str]:
        query = _query(request)
        seen.append(query)
        if query.get("live") == "sse":
            return 400, {"Content-Type": "text/plain"}, "SSE not supported here"
        if "live" not in query:
            return 200, {"Stream-Next-Offset": "0_1", "Stream-Up-To-Date": "true"}, "x"
        return 204, {"Stream-Next-Offset": "0_1", "Stream-Closed": "true"}, ""

    responses.add_callback(responses.GET, FAKE, callback=reply)
    with stream(FAKE, live=True, session=requests.Session()) as res:
        assert b"".join(res.iter_bytes()) == b"x" and res.closed
    assert [q.get("live") for q in seen] == [None, "sse", "long-poll"]
