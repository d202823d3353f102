"""IdempotentProducer against the real reference server (issue 3, PROTOCOL.md §5.2.1).

Every test writes through the producer and reads the stream back with a plain
``requests.get(url + "?offset=-1")``, so the assertions do not depend on the reading module.
Requests the server cannot echo back (headers) are observed with a recording
``requests.Session`` that still talks to the real server.

Fault injection (``server.inject_fault``) is always restricted to ``method="POST"`` so the
read-back GET is never hit by a fault meant for the producer.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from producer_helpers import (
    FAST,
    JSON,
    Errors,
    producer_threads,
    raw_post,
    read_json,
    read_raw,
    wait_until,
)

from durable_streams import (
    BadRequestError,
    DeliveryError,
    DurableStream,
    DurableStreamError,
    IdempotentProducer,
    ProducerClosedError,
    ProducerStats,
    StaleEpochError,
    StreamClosedError,
)
from durable_streams.testing import ReferenceServer

pytestmark = pytest.mark.timeout(60)



def body_of(request: requests.PreparedRequest) -> bytes:
    """The bytes of a recorded request body (the producer may wrap them in an object that
    streams them and exposes them as ``.body``)."""
    body = request.body
    if body is None or isinstance(body, bytes):
        return body or b""
    if isinstance(body, str):
        return body.encode()
    inner = getattr(body, "body", None)
    assert isinstance(inner, bytes), f"cannot see the body of {body!r}"
    return inner


class RecordingSession(requests.Session):
    """A real session that remembers the headers and URL of every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.sent.append(request)
        return super().send(request, **kwargs)

    def posts(self) -> list[requests.PreparedRequest]:
        return [r for r in self.sent if r.method == "POST"]


# -- constructor validation ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "needles"),
    [
        ({"epoch": -1}, ValueError, ["epoch"]),
        ({"epoch": 2**53}, ValueError, ["epoch"]),
        ({"epoch": "1"}, TypeError, ["epoch"]),
        ({"epoch": True}, TypeError, ["epoch"]),
        ({"epoch": 1.0}, TypeError, ["epoch"]),
        ({"max_batch_bytes": 0}, ValueError, ["max_batch_bytes", "maxBatchBytes"]),
        ({"max_batch_bytes": -5}, ValueError, ["max_batch_bytes", "maxBatchBytes"]),
        ({"max_batch_bytes": "1"}, TypeError, ["max_batch_bytes", "maxBatchBytes"]),
        ({"max_batch_items": 0}, ValueError, ["max_batch_items", "maxBatchItems"]),
        ({"max_in_flight": 0}, ValueError, ["max_in_flight"]),
        ({"max_in_flight": 2.5}, TypeError, ["max_in_flight"]),
        ({"max_buffer_bytes": 0}, ValueError, ["max_buffer_bytes"]),
        ({"max_buffer_bytes": 100, "max_batch_bytes": 200}, ValueError, ["max_buffer_bytes"]),
        ({"linger_ms": -1}, ValueError, ["linger_ms"]),
        ({"linger_ms": "5"}, ValueError, ["linger_ms"]),
        ({"max_block_ms": -1}, ValueError, ["max_block_ms"]),
        ({"delivery_timeout_ms": -0.5}, ValueError, ["delivery_timeout_ms"]),
        ({"on_error": 42}, TypeError, ["on_error"]),
    ],
)
def test_constructor_validation_names_the_parameter(
    url: str, kwargs: dict[str, Any], exc: type[Exception], needles: list[str]
) -> None:
    before = threading.active_count()
    with pytest.raises(exc) as info:
        IdempotentProducer(url, "p", **kwargs)
    for needle in needles:
        assert needle in str(info.value)
    assert threading.active_count() == before


@pytest.mark.parametrize("producer_id", ["", "   ", None, 7])
def test_producer_id_must_be_non_empty_string(url: str, producer_id: Any) -> None:
    with pytest.raises((ValueError, TypeError), match="producer_id"):
        IdempotentProducer(url, producer_id)


@pytest.mark.parametrize("stream", [42, None, b"http://x/y"])
def test_stream_must_be_handle_or_url(stream: Any) -> None:
    with pytest.raises(TypeError, match="stream"):
        IdempotentProducer(stream, "p")


def test_stream_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="stream"):
        IdempotentProducer("ftp://127.0.0.1/s", "p")


def test_epoch_bounds_are_inclusive(json_stream: DurableStream,
                                    make: Callable[..., IdempotentProducer]) -> None:
    """0 and 2**53-1 (the largest safe integer, §5.2.1) are valid epochs."""
    top = make(json_stream, "top", epoch=2**53 - 1)
    top.append("1")
    top.flush()
    assert top.epoch == 2**53 - 1
    assert read_json(json_stream.url) == [1]


@pytest.mark.parametrize("name", ["linger_ms", "max_block_ms", "delivery_timeout_ms"])
def test_nan_durations_are_rejected(url: str, name: str) -> None:
    """NaN compares false with everything, so it would slip through a `< 0` check and make
    every deadline computation meaningless."""
    with pytest.raises(ValueError, match=name):
        options: dict[str, Any] = {name: float("nan")}
        IdempotentProducer(url, "p", **options)


def test_infinite_linger_is_rejected_or_works(json_stream: DurableStream,
                                              make: Callable[..., IdempotentProducer]) -> None:
    """linger_ms=inf must either be refused up front or mean "seal only on size/flush"; it
    must not crash the sender threads (Condition.wait(inf) raises OverflowError)."""
    try:
        p = make(json_stream, linger_ms=float("inf"))
    except ValueError as exc:
        assert "linger_ms" in str(exc)
        return
    p.append("1")
    p.append("2")
    p.flush(timeout=10)
    assert read_json(json_stream.url) == [1, 2]


def test_threads_start_lazily_and_stop_on_close(json_stream: DurableStream) -> None:
    p = IdempotentProducer(json_stream, "lazy", retry=FAST)
    assert producer_threads("lazy") == []
    p.append("1")
    assert producer_threads("lazy")
    p.close()
    assert producer_threads("lazy") == []
    assert p.closed


# -- append types and sizes -------------------------------------------------------------------


def test_byte_mode_accepts_str_and_bytes_like_and_concatenates(
        text_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    p = make(text_stream, linger_ms=50)
    p.append("Hello")
    p.append(b" ")
    p.append(bytearray(b"Wor"))
    p.append(memoryview(b"ld"))
    p.append("…")
    p.flush()
    assert read_raw(text_stream.url) == "Hello World…".encode()
    assert p.stats().batches_sent == 1


def test_bytearray_is_copied_at_append(text_stream: DurableStream,
                                       make: Callable[..., IdempotentProducer]) -> None:
    """append() returns before sending: mutating the caller's buffer afterwards must not
    change the message."""
    p = make(text_stream, linger_ms=10_000)
    data = bytearray(b"abc")
    p.append(data)
    data[:] = b"XYZ"
    p.flush()
    assert read_raw(text_stream.url) == b"abc"


@pytest.mark.parametrize("value", [{"a": 1}, 42, None, [1, 2], 1.5, object()])
def test_non_text_append_is_type_error_naming_json_dumps(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer], value: Any) -> None:
    p = make(json_stream)
    with pytest.raises(TypeError, match=r"json\.dumps"):
        p.append(value)
    assert p.stats().messages_appended == 0
    p.append('"still fine"')
    p.flush()
    assert read_json(json_stream.url) == ["still fine"]


@pytest.mark.parametrize("value", ["", b"", bytearray(), memoryview(b"")])
def test_empty_append_is_value_error(json_stream: DurableStream,
                                     make: Callable[..., IdempotentProducer], value: Any) -> None:
    p = make(json_stream)
    with pytest.raises(ValueError, match="empty"):
        p.append(value)
    assert p.stats().messages_appended == 0


def test_message_larger_than_max_batch_bytes_is_value_error(
        text_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    p = make(text_stream, max_batch_bytes=10)
    p.append(b"x" * 10)  # exactly the limit is fine
    with pytest.raises(ValueError, match="max_batch_bytes"):
        p.append(b"x" * 11)
    p.flush()
    assert read_raw(text_stream.url) == b"x" * 10
    assert p.stats().messages_appended == 1


def test_unencodable_str_is_value_error(text_stream: DurableStream,
                                        make: Callable[..., IdempotentProducer]) -> None:
    p = make(text_stream)
    with pytest.raises(ValueError):
        p.append("lone surrogate \ud800")
    assert p.stats().messages_appended == 0


# -- JSON and byte bodies -----------------------------------------------------------------------


def test_json_mode_each_append_is_one_message(json_stream: DurableStream,
                                              make: Callable[..., IdempotentProducer]) -> None:
    """The batch body is a JSON array the server flattens one level: a message that is
    itself an array stays one message (conformance json-batch-nested-arrays)."""
    p = make(json_stream, linger_ms=10_000)
    values = ['{"a": 1}', "[1, 2, 3]", "42", '"text"', "null", "true", "[]", "[[0]]"]
    for v in values:
        p.append(v)
    p.flush()
    assert read_json(json_stream.url) == [{"a": 1}, [1, 2, 3], 42, "text", None, True, [],
                                          [[0]]]
    assert p.stats().batches_sent == 1


def test_json_mode_bytes_are_json_text(json_stream: DurableStream,
                                       make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream)
    p.append(b'{"k": "v"}')
    p.append(bytearray(b"[1]"))
    p.flush()
    assert read_json(json_stream.url) == [{"k": "v"}, [1]]


def test_invalid_json_only_the_bad_message_is_reported(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    errs = Errors()
    p = make(json_stream, linger_ms=10_000, on_error=errs)
    p.append('{"n": 1}')
    p.append("{bad")
    p.append('{"n": 2}')
    p.append("1, 2")  # two values: would silently become two messages if unchecked
    p.append('{"n": 3}')
    with pytest.raises(DeliveryError) as info:
        p.flush()
    assert set(info.value.undelivered) == {b"{bad", b"1, 2"}
    assert all(isinstance(e, BadRequestError) for e in info.value.errors)
    assert read_json(json_stream.url) == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert set(errs.undelivered) == {b"{bad", b"1, 2"}
    stats = p.stats()
    assert stats.messages_acked == 3
    assert stats.messages_failed == 2
    # The failure was reported once; the producer carries on.
    p.append('{"n": 4}')
    p.flush()
    assert read_json(json_stream.url)[-1] == {"n": 4}


def test_invalid_json_without_client_validation_reports_only_the_bad_message(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    """validate_json=False: the server rejects the whole batch (400, nothing stored); the
    producer then finds the invalid message, reports it alone and resends the rest."""
    errs = Errors()
    session = RecordingSession()
    p = make(json_stream, linger_ms=10_000, validate_json=False, on_error=errs,
             session=session)
    p.append('{"n": 1}')
    p.append("{bad")
    p.append('{"n": 2}')
    with pytest.raises(DeliveryError) as info:
        p.flush()
    assert info.value.undelivered == (b"{bad",)
    assert isinstance(info.value.errors[0], BadRequestError)
    assert errs.undelivered == [b"{bad"]
    assert len(session.posts()) == 2  # the bad batch went to the server once
    p.append('{"n": 3}')
    p.flush()
    assert read_json(json_stream.url) == [{"n": 1}, {"n": 2}, {"n": 3}]


# -- batching -----------------------------------------------------------------------------------


def test_linger_batches_appends_without_flush(json_stream: DurableStream,
                                              make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream, linger_ms=250)
    start = time.monotonic()
    for i in range(20):
        p.append(str(i))
    assert wait_until(lambda: p.stats().messages_acked == 20, timeout=10)
    elapsed = time.monotonic() - start
    stats = p.stats()
    assert stats.batches_sent == 1
    assert stats.requests_sent == 1
    assert elapsed >= 0.24  # it did linger
    assert read_json(json_stream.url) == list(range(20))


def test_linger_zero_sends_without_flush(json_stream: DurableStream,
                                         make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream, linger_ms=0)
    p.append("1")
    assert wait_until(lambda: p.stats().messages_acked == 1, timeout=10)
    assert read_json(json_stream.url) == [1]


def test_batches_seal_by_size_before_linger(text_stream: DurableStream,
                                            make: Callable[..., IdempotentProducer]) -> None:
    """With a 60 s linger, only the size limit can send these: 10 x 50 bytes under a
    100-byte limit are exactly 5 full batches, none over the limit."""
    session = RecordingSession()
    p = make(text_stream, linger_ms=60_000, max_batch_bytes=100, session=session)
    for i in range(10):
        p.append(bytes([65 + i]) * 50)
    assert wait_until(lambda: p.stats().messages_acked == 10, timeout=10)
    assert p.stats().batches_sent == 5
    # (a batch may be sent more than once: pipelined batches that arrive early get a 409)
    sizes = {r.headers["Producer-Seq"]: len(body_of(r)) for r in session.posts()}
    assert sizes == {str(seq): 100 for seq in range(5)}
    assert read_raw(text_stream.url) == b"".join(bytes([65 + i]) * 50 for i in range(10))


def test_max_batch_items_limits_batches(json_stream: DurableStream,
                                        make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream, linger_ms=60_000, max_batch_items=3)
    for i in range(10):
        p.append(str(i))
    p.flush()
    assert p.stats().batches_sent == 4
    assert read_json(json_stream.url) == list(range(10))


# -- flush --------------------------------------------------------------------------------------


def test_flush_waits_for_acks(json_stream: DurableStream,
                              make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream, linger_ms=60_000)
    for i in range(100):
        p.append(str(i))
    p.flush()
    # flush returned: everything is acknowledged and readable, nothing is pending
    assert read_json(json_stream.url) == list(range(100))
    assert p.pending_count == 0
    assert p.in_flight_count == 0
    assert p.pending_bytes == 0
    assert p.stats().messages_acked == 100


def test_flush_waits_for_a_batch_being_sealed(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    """flush() must also wait for messages a sender has taken out of the buffer but not yet
    registered as a batch (while it builds and validates the body of a large batch)."""
    message = json.dumps({"k": list(range(150))})  # ~650 bytes: ~1 MiB in 1500 messages
    p = make(json_stream, linger_ms=0, max_in_flight=1)
    server.inject_fault(json_stream.url, delayMs=200, method="POST")
    p.append(message)
    assert wait_until(lambda: p.in_flight_count == 1, timeout=5)
    for _ in range(1500):  # all buffered: the only sender waits for the slow response
        p.append(message)
    p.flush(timeout=30)
    assert p.stats().messages_acked == 1501
    assert len(read_json(json_stream.url)) == 1501


def test_flush_returns_the_offset_after_the_last_acknowledged_message(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    """flush() returns the natural fork point: the offset just after this producer's last
    acknowledged message (PROTOCOL §5.2 Stream-Next-Offset), the same as last_offset."""
    p = make(json_stream)
    assert p.flush() == ""  # nothing acknowledged yet
    for i in range(50):
        p.append(str(i))
    first = p.flush()
    assert first and first == p.last_offset
    assert first == json_stream.head().offset  # the tail: all of ours is before it
    p.append("50")
    second = p.flush()
    assert second > first and second == p.last_offset
    with json_stream.stream(offset=first) as res:  # from the fork point: only "50"
        assert res.read_json() == [50]
    assert p.flush() == second  # nothing new: the same offset


def test_flush_with_nothing_appended_returns(json_stream: DurableStream,
                                             make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream)
    start = time.monotonic()
    p.flush()
    p.flush(timeout=0)
    assert time.monotonic() - start < 1
    assert p.stats().requests_sent == 0


def test_flush_raises_delivery_error_and_calls_on_error(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    """A non-retryable failure (400) is reported to on_error and raised by flush() with the
    failed messages; it is reported once; later batches still get through."""
    errs = Errors()
    p = make(json_stream, linger_ms=60_000, on_error=errs)
    server.inject_fault(json_stream.url, status=400, method="POST")
    p.append('"a"')
    p.append('"b"')
    with pytest.raises(DeliveryError) as info:
        p.flush()
    err = info.value
    assert err.undelivered == (b'"a"', b'"b"')
    assert len(err.errors) == 1
    assert isinstance(err.errors[0], BadRequestError)
    assert err.errors[0].undelivered == (b'"a"', b'"b"')
    assert err.__cause__ is err.errors[0]
    assert errs.event.wait(5)
    assert errs.undelivered == [b'"a"', b'"b"']
    assert all(name.startswith("ds-producer-") for name in errs.threads)
    p.flush()  # already reported: no second raise
    p.append('"c"')
    p.flush()
    assert read_json(json_stream.url) == ["c"]
    assert p.stats().messages_failed == 2


def test_flush_timeout_raises_on_time_then_completes(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream)
    server.inject_fault(json_stream.url, delayMs=1500, method="POST")
    p.append('"slow"')
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        p.flush(timeout=0.3)
    elapsed = time.monotonic() - start
    assert 0.28 <= elapsed < 1.2
    # The message is sealed and on the wire, not lost.
    assert p.pending_count == 0
    assert p.in_flight_count == 1
    p.flush(timeout=10)
    assert p.in_flight_count == 0
    assert read_json(json_stream.url) == ["slow"]


def test_concurrent_flushes_each_wait_for_their_messages(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream, linger_ms=20, max_batch_items=7)
    seen: dict[int, int] = {}
    failures: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(50):
                p.append(f"[{t},{i}]")
                if i % 10 == 9:
                    p.flush(timeout=20)
                    # everything this thread appended so far is acknowledged now
                    seen[t] = max(seen.get(t, 0), i + 1)
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert failures == []
    assert seen == {n: 50 for n in range(4)}
    got = read_json(json_stream.url)
    assert len(got) == 200
    for n in range(4):
        assert [i for who, i in got if who == n] == list(range(50))


def test_max_block_zero_raises_at_once_when_full(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    from durable_streams import BufferFullError

    p = make(json_stream, linger_ms=60_000, max_buffer_bytes=10, max_batch_bytes=10,
             max_block_ms=0)
    # The full batch is sent at once: slow its answer, so that no acknowledgement can
    # free the room before the next append (the premise: the buffer is full).
    server.inject_fault(json_stream.url, delayMs=1000, method="POST")
    p.append(b'"12345678"')  # 10 bytes: the buffer is full
    start = time.monotonic()
    with pytest.raises(BufferFullError):
        p.append(b"1")
    assert time.monotonic() - start < 0.5
    p.flush()
    p.append(b"2")  # room again
    p.flush()
    assert read_json(json_stream.url) == ["12345678", 2]


def test_close_from_two_threads(json_stream: DurableStream) -> None:
    p = IdempotentProducer(json_stream, "twice", retry=FAST, linger_ms=60_000)
    for i in range(100):
        p.append(str(i))
    outcomes: list[str] = []

    def closer() -> None:
        try:
            p.close(timeout=20)
            # close() returned: whichever call it was, the messages are delivered
            outcomes.append(f"ok acked={p.stats().messages_acked}")
        except Exception as exc:  # pragma: no cover - reported below
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=closer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(25)
    assert outcomes == ["ok acked=100", "ok acked=100"]
    assert read_json(json_stream.url) == list(range(100))


# -- close, with, close_stream --------------------------------------------------------------


def test_close_is_idempotent_and_append_after_close_raises(
        json_stream: DurableStream) -> None:
    p = IdempotentProducer(json_stream, "c", retry=FAST, linger_ms=60_000)
    p.append("1")
    p.close()
    assert p.closed
    p.close()
    p.close(timeout=1)
    with pytest.raises(ProducerClosedError):
        p.append("2")
    assert read_json(json_stream.url) == [1]
    assert json_stream.head().closed is False


def test_close_raises_on_undelivered(server: ReferenceServer,
                                     json_stream: DurableStream) -> None:
    errs = Errors()
    p = IdempotentProducer(json_stream, "c", retry=FAST, on_error=errs)
    server.inject_fault(json_stream.url, status=400, method="POST")
    p.append('"lost"')
    with pytest.raises(DeliveryError) as info:
        p.close()
    assert info.value.undelivered == (b'"lost"',)
    assert errs.undelivered == [b'"lost"']
    assert p.closed
    # the callback thread may take a moment to notice; it must go away by itself
    assert wait_until(lambda: producer_threads("c") == [], timeout=5)


def test_with_block_closes_producer_but_not_stream(json_stream: DurableStream) -> None:
    with IdempotentProducer(json_stream, "w", retry=FAST, linger_ms=60_000) as p:
        p.append('"x"')
    assert p.closed
    assert producer_threads("w") == []
    info = json_stream.head()
    assert info.closed is False
    json_stream.append({"after": 1})  # the stream still takes appends
    assert read_json(json_stream.url) == ["x", {"after": 1}]


def test_with_block_exception_propagates_and_still_delivers(
        json_stream: DurableStream) -> None:
    with pytest.raises(KeyError), \
            IdempotentProducer(json_stream, "w", retry=FAST, linger_ms=60_000) as p:
        p.append('"before the error"')
        raise KeyError("boom")
    assert read_json(json_stream.url) == ["before the error"]


def test_close_stream_without_final_message(json_stream: DurableStream,
                                            make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream, linger_ms=60_000)
    p.append("1")
    p.append("2")
    final = p.close_stream()
    info = json_stream.head()
    assert info.closed is True
    assert final == info.offset
    assert p.last_offset == final
    assert read_json(json_stream.url) == [1, 2]
    assert p.close_stream() == final  # idempotent: same result
    with pytest.raises(StreamClosedError):
        p.append("3")


def test_close_stream_with_final_message(json_stream: DurableStream,
                                         make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream, linger_ms=60_000)
    p.append('"first"')
    final = p.close_stream('{"eof": true}')
    assert read_json(json_stream.url) == ["first", {"eof": True}]
    assert json_stream.head().offset == final
    assert p.close_stream('{"eof": true}') == final
    assert read_json(json_stream.url) == ["first", {"eof": True}]


def test_close_stream_byte_mode_final_message(text_stream: DurableStream,
                                              make: Callable[..., IdempotentProducer]) -> None:
    p = make(text_stream)
    p.append(b"abc")
    final = p.close_stream(b"END")
    assert read_raw(text_stream.url) == b"abcEND"
    assert text_stream.head().closed
    assert final == text_stream.head().offset


def test_close_stream_request_is_deduplicated_on_retry(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    """The close carries the producer headers: replaying the exact request the producer
    sent (as a retry after a lost response would) is a 204 duplicate with the same final
    offset, and the final message is not stored twice."""
    session = RecordingSession()
    p = make(json_stream, session=session)
    p.append('"m"')
    final = p.close_stream('"last"')
    close_req = session.posts()[-1]
    headers = {k.lower(): v for k, v in close_req.headers.items()}
    assert headers["stream-closed"] == "true"
    assert headers["producer-id"] == "p"
    replay = requests.post(json_stream.url, data=body_of(close_req),
                           headers=dict(close_req.headers), timeout=10)
    assert replay.status_code == 204
    assert replay.headers["Stream-Next-Offset"] == final
    assert read_json(json_stream.url) == ["m", "last"]


def test_close_stream_on_unused_producer(json_stream: DurableStream,
                                         make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream)
    final = p.close_stream()
    assert json_stream.head().closed
    assert final == json_stream.head().offset


def test_stream_closed_by_someone_else_stops_the_producer(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    errs = Errors()
    p = make(json_stream, on_error=errs)
    p.append('"before"')
    p.flush()
    json_stream.close_stream()
    p.append('"after"')
    with pytest.raises(DeliveryError) as info:
        p.flush()
    assert any(isinstance(e, StreamClosedError) for e in info.value.errors)
    assert info.value.undelivered == (b'"after"',)
    assert errs.event.wait(5)
    with pytest.raises(StreamClosedError):
        p.append('"later"')
    assert read_json(json_stream.url) == ["before"]


# -- pipelining, epochs, fencing ----------------------------------------------------------------


def test_pipelining_with_409_reordering_is_exactly_once_in_order(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    """Five one-message batches in flight at once arrive out of order; the server answers
    409 (expected seq below ours) and the producer resends after the earlier batch."""
    n = 500
    p = make(json_stream, max_in_flight=5, max_batch_items=1, linger_ms=0)
    for i in range(n):
        p.append(str(i))
    p.flush(timeout=45)
    assert read_json(json_stream.url) == list(range(n))
    stats = p.stats()
    assert stats.batches_sent == n
    assert p.next_seq == n
    assert stats.messages_acked == n
    assert stats.duplicates == 0
    assert stats.failures == 0


def _seed_epoch(url: str, producer_id: str, epoch: int, body: bytes) -> None:
    response = raw_post(url, body, {
        "Content-Type": JSON, "Producer-Id": producer_id,
        "Producer-Epoch": str(epoch), "Producer-Seq": "0",
    })
    assert response.status_code == 200, response.text


def test_auto_claim_when_server_holds_higher_epoch(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    _seed_epoch(json_stream.url, "job", 5, b'["seed"]')
    errs = Errors()
    # epoch=0 given explicitly: the producer must claim past the server's epoch 5.
    p = make(json_stream, "job", epoch=0, auto_claim=True, max_in_flight=5,
             max_batch_items=2, linger_ms=0, on_error=errs)
    for i in range(40):
        p.append(str(i))
    p.flush(timeout=30)
    assert p.epoch == 6
    assert p.stats().epoch_claims >= 1
    assert read_json(json_stream.url) == ["seed", *range(40)]
    assert errs.items == []
    # The old epoch is fenced on the server now.
    stale = raw_post(json_stream.url, b'["zombie"]', {
        "Content-Type": JSON, "Producer-Id": "job", "Producer-Epoch": "5",
        "Producer-Seq": "1"})
    assert stale.status_code == 403


def test_without_auto_claim_a_higher_server_epoch_is_stale_epoch(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    _seed_epoch(json_stream.url, "job", 5, b'["seed"]')
    errs = Errors()
    p = make(json_stream, "job", on_error=errs)
    p.append('"mine"')
    with pytest.raises(DeliveryError) as info:
        p.flush()
    stale = [e for e in info.value.errors if isinstance(e, StaleEpochError)]
    assert stale and stale[0].current_epoch == 5
    assert info.value.undelivered == (b'"mine"',)
    with pytest.raises(StaleEpochError):
        p.append('"more"')
    assert read_json(json_stream.url) == ["seed"]


def test_zombie_producer_is_fenced_by_newer_one(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    zombie_errs = Errors()
    zombie = make(json_stream, "worker", epoch=0, on_error=zombie_errs)
    zombie.append('"z1"')
    zombie.flush()
    fresh = make(json_stream, "worker", epoch=1)
    fresh.append('"f1"')
    fresh.flush()
    zombie.append('"z2"')
    with pytest.raises(DeliveryError) as info:
        zombie.flush()
    assert any(isinstance(e, StaleEpochError) and e.current_epoch == 1
               for e in info.value.errors)
    assert b'"z2"' in info.value.undelivered
    assert zombie_errs.event.wait(5)
    assert any(isinstance(e, StaleEpochError) for e in zombie_errs.items)
    with pytest.raises(StaleEpochError):
        zombie.append('"z3"')
    fresh.append('"f2"')
    fresh.flush()
    assert read_json(json_stream.url) == ["z1", "f1", "f2"]


def test_auto_claim_fences_an_older_writer_and_keeps_both_histories(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    """A restarted job with the same id and auto_claim must not lose its first batch to the
    previous run's (id, epoch 0, seq 0): the 204 on its first send is not believed."""
    first = make(json_stream, "cron", linger_ms=60_000)
    for i in range(3):
        first.append(f'"run1-{i}"')
    first.flush()
    first.close()
    second = make(json_stream, "cron", auto_claim=True, linger_ms=60_000)
    for i in range(3):
        second.append(f'"run2-{i}"')
    second.flush()
    assert second.epoch >= 1
    assert read_json(json_stream.url) == [f"run{r}-{i}" for r in (1, 2) for i in range(3)]


def test_many_threads_each_keep_their_order_exactly_once(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    threads_n, per_thread = 8, 10_000
    p = make(json_stream, max_in_flight=5)
    barrier = threading.Barrier(threads_n)
    failures: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                p.append(f"[{t},{i}]")
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    assert not any(w.is_alive() for w in workers)
    assert failures == []
    p.flush(timeout=30)
    got = read_json(json_stream.url)
    assert len(got) == threads_n * per_thread
    per: dict[int, list[int]] = {t: [] for t in range(threads_n)}
    for t, i in got:
        per[t].append(i)
    for t in range(threads_n):
        assert per[t] == list(range(per_thread)), f"thread {t} out of order or duplicated"
    assert p.stats().messages_acked == threads_n * per_thread


# -- on_error re-entrancy -------------------------------------------------------------------


def test_on_error_may_call_flush_and_append_without_deadlock(
        server: ReferenceServer, json_stream: DurableStream,
        producers: list[IdempotentProducer]) -> None:
    calls: list[str] = []
    done = threading.Event()
    holder: dict[str, IdempotentProducer] = {}

    def on_error(err: DurableStreamError) -> None:
        p = holder["p"]
        calls.append("called")
        p.append('"from-callback"')
        try:
            p.flush(timeout=10)
            calls.append("flush ok")
        except DeliveryError:
            calls.append("flush raised")  # the failure being reported may surface here too
        done.set()

    p = IdempotentProducer(json_stream, "cb", retry=FAST, on_error=on_error)
    producers.append(p)
    holder["p"] = p
    server.inject_fault(json_stream.url, status=400, method="POST")
    p.append('"bad-luck"')

    outcome: list[str] = []

    def main_flush() -> None:
        try:
            p.flush(timeout=20)
            outcome.append("ok")
        except DeliveryError:
            outcome.append("delivery error")
        except TimeoutError:
            outcome.append("timeout")

    t = threading.Thread(target=main_flush)
    t.start()
    t.join(25)
    assert not t.is_alive(), "flush() deadlocked with an on_error callback calling flush()"
    assert done.wait(20), "the callback's own flush() deadlocked"
    assert outcome and outcome[0] != "timeout"
    assert calls[0] == "called"
    p.flush(timeout=10)
    assert read_json(json_stream.url) == ["from-callback"]


def test_flush_inside_on_error_does_not_hide_the_failure_from_the_caller(
        server: ReferenceServer, json_stream: DurableStream,
        producers: list[IdempotentProducer]) -> None:
    """The caller's flush() covers the failed message, so it must raise, even when the
    on_error callback (which already holds the error) calls flush() itself first."""
    inner: list[str] = []
    holder: dict[str, IdempotentProducer] = {}

    def on_error(err: DurableStreamError) -> None:
        try:
            holder["p"].flush(timeout=10)
            inner.append("ok")
        except DeliveryError:
            inner.append("raised")

    p = IdempotentProducer(json_stream, "cb", retry=FAST, on_error=on_error)
    producers.append(p)
    holder["p"] = p
    server.inject_fault(json_stream.url, status=400, method="POST")
    p.append('"lost"')
    with pytest.raises(DeliveryError) as info:
        p.flush(timeout=20)
    assert info.value.undelivered == (b'"lost"',)
    assert inner  # the callback ran (and did not deadlock)


def test_on_error_exception_does_not_break_the_producer(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    def on_error(err: DurableStreamError) -> None:
        raise RuntimeError("callback bug")

    p = make(json_stream, on_error=on_error)
    server.inject_fault(json_stream.url, status=400, method="POST")
    p.append('"x"')
    with pytest.raises(DeliveryError):
        p.flush(timeout=10)
    p.append('"y"')
    p.flush(timeout=10)
    assert read_json(json_stream.url) == ["y"]


# -- properties and stats -----------------------------------------------------------------------


def test_properties_and_stats(json_stream: DurableStream,
                              make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream, epoch=3, linger_ms=60_000)
    assert (p.epoch, p.next_seq, p.pending_count, p.in_flight_count, p.last_offset) == (
        3, 0, 0, 0, "")
    assert p.closed is False
    fresh = p.stats()
    assert isinstance(fresh, ProducerStats)
    assert all(value == 0 for value in dataclasses.asdict(fresh).values()), fresh
    p.append("1")
    p.append("22")
    p.append("333")
    assert p.pending_count == 3
    assert p.pending_bytes == 6
    s = p.stats()
    assert (s.messages_appended, s.buffered_messages, s.buffered_bytes, s.pending_bytes) == (
        3, 3, 6, 6)
    p.flush()
    assert (p.next_seq, p.pending_count, p.in_flight_count, p.pending_bytes) == (1, 0, 0, 0)
    assert p.last_offset == json_stream.head().offset
    s = p.stats()
    assert (s.messages_acked, s.bytes_acked, s.batches_sent, s.requests_sent) == (3, 6, 1, 1)
    assert (s.retries, s.duplicates, s.failures, s.messages_failed) == (0, 0, 0, 0)
    assert (s.buffered_messages, s.buffered_bytes, s.pending_bytes, s.in_flight) == (0, 0, 0, 0)
    first_offset = p.last_offset
    p.append("4")
    p.flush()
    assert p.next_seq == 2
    assert p.last_offset > first_offset
    assert p.last_offset == json_stream.head().offset


def test_stats_count_retries(server: ReferenceServer, json_stream: DurableStream,
                             make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream)
    server.inject_fault(json_stream.url, status=503, count=2, method="POST")
    p.append("1")
    p.flush(timeout=10)
    s = p.stats()
    assert s.requests_sent == 3
    assert s.retries == 2
    assert s.batches_sent == 1
    assert read_json(json_stream.url) == [1]


# -- headers ------------------------------------------------------------------------------------


def test_header_callables_are_evaluated_per_request(
        server: ReferenceServer, url: str, make: Callable[..., IdempotentProducer]) -> None:
    calls = {"producer": 0, "stream": 0}

    def token() -> str:
        calls["producer"] += 1
        return f"t{calls['producer']}"

    def stream_headers() -> dict[str, str]:
        calls["stream"] += 1
        return {"X-Stream-Call": str(calls["stream"])}

    handle = DurableStream.create(url, content_type=JSON)
    handle.headers = stream_headers
    session = RecordingSession()
    p = make(handle, headers={"Authorization": token, "X-Skip": lambda: None},
             session=session)
    server.inject_fault(url, status=503, count=2, method="POST")
    p.append("1")
    p.flush(timeout=10)
    posts = session.posts()
    assert len(posts) == 3 == p.stats().requests_sent
    # a fresh value on every request (the producer may send other requests too, e.g. a
    # HEAD, which also evaluate the callables)
    for name in ("Authorization", "X-Stream-Call"):
        values = [r.headers[name] for r in posts]
        assert len(set(values)) == 3, (name, values)
        assert values == sorted(values, key=lambda v: int(v.lstrip("t"))), (name, values)
    assert all("X-Skip" not in r.headers for r in posts)
    # every retry resends the same batch identity and body
    assert len({(r.headers["Producer-Seq"], r.headers["Producer-Epoch"], body_of(r))
                for r in posts}) == 1
    assert read_json(url) == [1]


def test_user_headers_never_override_protocol_headers(
        url: str, make: Callable[..., IdempotentProducer]) -> None:
    handle = DurableStream.create(url, content_type=JSON,
                                  headers={"X-Layer": "stream", "X-Stream-Only": "s"},
                                  params={"tenant": "acme"})
    session = RecordingSession()
    evil = {
        "x-layer": "producer",
        "producer-id": "evil",
        "PRODUCER-EPOCH": "7",
        "Producer-Seq": "9",
        "content-type": "text/plain",
    }
    p = make(handle, "real", headers=evil, session=session)
    p.append('"a"')
    p.flush()
    p.append('"b"')
    p.flush()
    posts = session.posts()
    assert len(posts) == 2
    for seq, r in enumerate(posts):
        h = r.headers
        assert h["Producer-Id"] == "real"
        assert h["Producer-Epoch"] == "0"
        assert h["Producer-Seq"] == str(seq)
        assert h["Content-Type"] == JSON
        assert h["X-Layer"] == "producer"  # producer headers beat stream headers
        assert h["X-Stream-Only"] == "s"
        assert "tenant=acme" in (r.url or "")  # the handle's params are used
        raw_names = [k.lower() for k in r.headers]
        assert len(raw_names) == len(set(raw_names))
    assert read_json(url) == ["a", "b"]


def test_user_stream_closed_header_cannot_close_the_stream(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    """Stream-Closed is a protocol header (PROTOCOL §4.1, §5.2.1: content-type, Producer-*,
    Stream-Closed); a user header of that name must not turn appends into a close."""
    p = make(json_stream, headers={"Stream-Closed": "true"})
    p.append('"a"')
    p.flush()
    assert json_stream.head().closed is False
    p.append('"b"')
    p.flush()
    assert read_json(json_stream.url) == ["a", "b"]


# -- learning the content type ----------------------------------------------------------------


def test_url_only_producer_learns_content_type(url: str,
                                               make: Callable[..., IdempotentProducer]) -> None:
    DurableStream.create(url, content_type=JSON).close()
    p = make(url)
    p.append('{"a": 1}')
    p.append("[1, 2]")
    p.flush()
    assert read_json(url) == [{"a": 1}, [1, 2]]


def test_url_only_producer_on_missing_stream_reports_not_silently_drops(
        url: str, make: Callable[..., IdempotentProducer]) -> None:
    """A producer built from a bare URL learns the content type with a HEAD when it seals
    its first batch. If that HEAD fails (here: 404, no such stream) the messages must be
    reported: flush() must raise, not return as if they had been delivered."""
    errs = Errors()
    p = make(url, on_error=errs)
    p.append(b"abc")
    with pytest.raises(DeliveryError) as info:
        p.flush(timeout=10)
    assert info.value.undelivered == (b"abc",)
    assert errs.event.wait(5)
    assert errs.undelivered == [b"abc"]


def test_auto_claim_without_epoch_starts_past_any_earlier_run(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    """With auto_claim and no epoch, the first epoch comes from the clock, so it is above
    what an earlier run of the same job used (PROTOCOL §5.2.1: epochs must only grow) and
    no claim round trip is needed."""
    _seed_epoch(json_stream.url, "job", 5, b'["seed"]')
    before = int(time.time() * 1000)
    p = make(json_stream, "job", auto_claim=True)
    p.append('"mine"')
    p.flush(timeout=30)
    assert p.epoch >= before
    assert p.stats().epoch_claims == 0
    assert read_json(json_stream.url) == ["seed", "mine"]
