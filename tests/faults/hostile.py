"""Scenario 6: bad input and hostile servers. Each case returns a :class:`Case`.

A case passes when the producer (or ``DurableStream``) ends in the expected, clear exception
within its bound, and every message the application handed over is either in the stream
(acknowledged) or reported back to it (``DeliveryError.undelivered`` / ``on_error``): never
a hang, never a silent drop. Servers the reference server cannot imitate are
:class:`FakeServer` instances (or a raw socket) on loopback.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from durable_streams import (
    BadRequestError,
    ConflictError,
    DeliveryError,
    DurableStream,
    DurableStreamError,
    ForbiddenError,
    IdempotentProducer,
    ProducerError,
    RetryPolicy,
    SequenceGapError,
    ServerError,
    StaleEpochError,
    TransportError,
)
from durable_streams.testing import ReferenceServer

from .harness import FakeServer, read_json_stream
from .scenarios import JSON, new_json_stream

QUICK_RETRY = RetryPolicy(max_retries=3, initial_delay_ms=10, max_delay_ms=100)


@dataclass
class Case:
    name: str
    expected: type[BaseException] | None  # None: must succeed
    bound: float  # seconds the outcome may take
    sent: int = 0  # messages append() accepted
    acked: int = 0
    found: int | None = None  # in the real stream (None: a fake server)
    reported: int = 0
    raised: BaseException | None = None
    elapsed: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def silent_drops(self) -> int:
        return self.sent - self.acked - self.reported

    @property
    def ok(self) -> bool:
        if self.expected is None:
            right = self.raised is None
        else:
            right = isinstance(self.raised, self.expected)
        return right and self.elapsed <= self.bound and self.silent_drops == 0 and (
            self.found is None or self.found == self.acked)


def _producer(url: str, **kw: Any) -> IdempotentProducer:
    options: dict[str, Any] = dict(content_type=JSON, linger_ms=20, retry=QUICK_RETRY,
                                   delivery_timeout_ms=1500, request_timeout=(1.0, 1.0))
    options.update(kw)
    return IdempotentProducer(url, "hostile", **options)


def _deliver(case: Case, producer: IdempotentProducer, messages: list[str | bytes],
             *, errors_seen: list[DurableStreamError] | None = None) -> None:
    """Append, flush and close; record what was accepted, acknowledged and reported."""
    start = time.monotonic()
    try:
        for m in messages:
            producer.append(m)
            case.sent += 1
        try:
            producer.flush(timeout=case.bound + 1)
        finally:
            if not close_bounded(producer, 2):
                case.detail["close_hung"] = True
    except DeliveryError as exc:
        case.raised = exc.errors[0] if exc.errors else exc
        case.reported = len(exc.undelivered)
        case.detail["undelivered"] = list(exc.undelivered)
        case.detail["delivery_error"] = exc
    except BaseException as exc:  # noqa: BLE001 - the case records it
        case.raised = exc
    case.elapsed = time.monotonic() - start
    case.acked = producer.stats().messages_acked
    if errors_seen is not None:
        case.detail["on_error"] = [e.undelivered for e in errors_seen]


def close_bounded(producer: IdempotentProducer, timeout: float) -> bool:
    """close(timeout) on a helper thread; False if it had not returned after timeout + 3s
    (the thread is a daemon and is left behind: a hang is the finding, not a test hang)."""

    def run() -> None:
        with contextlib.suppress(DurableStreamError, TimeoutError):
            producer.close(timeout=timeout)

    thread = threading.Thread(target=run, name="bounded-close", daemon=True)
    thread.start()
    thread.join(timeout + 3)
    return not thread.is_alive()


# -- bad input -------------------------------------------------------------------------------
class _Color(enum.Enum):
    RED = "red"


NOT_STR_OR_BYTES: list[Any] = [1, 1.5, None, True, {"a": 1}, ["a"], ("a",), {"a"}, object(),
                               _Color.RED, 10**30, complex(1, 2), range(3), iter([b"x"])]


def case_non_str_bytes(server: ReferenceServer) -> Case:
    """Every append() argument that is not str or bytes-like raises TypeError at once."""
    case = Case("6a append(non str/bytes)", TypeError, bound=1.0)
    url = new_json_stream(server.url, "types")
    producer = _producer(url)
    start = time.monotonic()
    outcomes: dict[str, str] = {}
    for value in NOT_STR_OR_BYTES:
        try:
            producer.append(value)
        except TypeError as exc:
            outcomes[type(value).__name__] = "TypeError" if "json.dumps" in str(exc) else (
                f"TypeError without a hint: {exc}")
            case.raised = exc
        except BaseException as exc:  # noqa: BLE001
            outcomes[type(value).__name__] = f"{type(exc).__name__}: {exc}"
        else:
            outcomes[type(value).__name__] = "accepted"
            case.sent += 1
    # bytes-like values are accepted and delivered as their bytes
    for value in (bytearray(b'"ba"'), memoryview(b'"mv"')):
        producer.append(value)
        case.sent += 1
    producer.close(timeout=10)
    case.elapsed = time.monotonic() - start
    case.acked = producer.stats().messages_acked
    items, _ = read_json_stream(url)
    case.found = len(items)
    case.detail = {"outcomes": outcomes, "items": items,
                   "requests": producer.stats().requests_sent}
    if any(v != "TypeError" for v in outcomes.values()):
        case.raised = AssertionError(f"not all rejected with a hint: {outcomes}")
    return case


class _Name(str):
    """A str subclass, like enum.StrEnum members or numpy.str_ values."""


def case_str_subclass(server: ReferenceServer) -> Case:
    """A str subclass is a str: it must be accepted like one."""
    case = Case("6b append(str subclass)", None, bound=10.0)
    url = new_json_stream(server.url, "strsub")
    _deliver(case, _producer(url), [_Name('"subclassed"')])
    case.found = len(read_json_stream(url)[0])
    return case


def case_invalid_json_among_good(server: ReferenceServer) -> Case:
    """Invalid JSON messages are reported one by one; the good ones of their batch land."""
    case = Case("6c invalid JSON among good", BadRequestError, bound=10.0)
    url = new_json_stream(server.url, "badjson")
    bad = ["{bad", "1,2", "NaN", "[1", "2]", "'single'", '"unterminated']
    messages: list[str | bytes] = []
    for i in range(60):
        messages.append(json.dumps(f"g:{i}"))
        if i % 8 == 3:
            messages.append(bad[(i // 8) % len(bad)])
    seen: list[DurableStreamError] = []
    producer = _producer(url, on_error=seen.append, linger_ms=50)
    _deliver(case, producer, messages, errors_seen=seen)
    items, _ = read_json_stream(url)
    case.found = len(items)
    expected_bad = [m.encode() for m in messages if isinstance(m, str) and not m.startswith('"g')]
    case.detail.update(items=items, expected_bad=expected_bad)
    good_in_order = items == [f"g:{i}" for i in range(60)]
    if case.detail.get("undelivered") != expected_bad or not good_in_order:
        case.raised = AssertionError(
            f"reported {case.detail.get('undelivered')}, expected {expected_bad}; "
            f"stream in order: {good_in_order}")
    return case


def case_json_with_bom(server: ReferenceServer) -> Case:
    """JSON text with a byte-order mark (or in UTF-16) is not JSON for the server: it must
    be reported on its own, not sent and take its batch's good messages down with it."""
    case = Case("6d JSON with BOM / UTF-16", BadRequestError, bound=10.0)
    url = new_json_stream(server.url, "bom")
    bad: list[str | bytes] = [b'\xef\xbb\xbf{"a":1}', "\ufeff2", b"\xff\xfe3\x00"]
    messages: list[str | bytes] = []
    for i, b in enumerate(bad):
        messages += [json.dumps(f"g:{2 * i}"), b, json.dumps(f"g:{2 * i + 1}")]
    producer = _producer(url, linger_ms=50)
    _deliver(case, producer, messages)
    items, _ = read_json_stream(url)
    case.found = len(items)
    expected = [f"g:{i}" for i in range(2 * len(bad))]
    case.detail["items"] = items
    if items != expected or case.reported != len(bad):
        case.raised = AssertionError(
            f"good messages lost with the bad ones: stream {items}, reported "
            f"{case.detail.get('undelivered')}")
    return case


def case_oversize(server: ReferenceServer) -> Case:
    """A message over max_batch_bytes raises ValueError at append(); nothing is queued."""
    case = Case("6e message over the size limit", ValueError, bound=10.0)
    url = new_json_stream(server.url, "big")
    producer = _producer(url, max_batch_bytes=1024, max_buffer_bytes=4096)
    start = time.monotonic()
    producer.append(json.dumps("before"))
    case.sent += 1
    try:
        producer.append(json.dumps("x" * 2000))
    except ValueError as exc:
        case.raised = exc
    else:
        case.sent += 1
    try:
        producer.append(b"")
    except ValueError:
        pass
    else:
        case.sent += 1
    producer.append(json.dumps("after"))
    case.sent += 1
    producer.close(timeout=10)
    case.elapsed = time.monotonic() - start
    case.acked = producer.stats().messages_acked
    items, _ = read_json_stream(url)
    case.found = len(items)
    case.detail["items"] = items
    return case


# -- hostile servers -------------------------------------------------------------------------
def _echo_ok(headers: Mapping[str, str], offset: int) -> dict[str, str]:
    return {"Stream-Next-Offset": f"{offset:016d}_{offset:016d}",
            "Producer-Epoch": headers.get("Producer-Epoch", "0"),
            "Producer-Seq": headers.get("Producer-Seq", "0")}


@contextlib.contextmanager
def _fake(respond: Callable[[str, str, Mapping[str, str], bytes],
                            tuple[int, Mapping[str, str], bytes] | None],
          *, reads_ok: bool = True) -> Iterator[FakeServer]:
    """A fake stream: HEAD and GET answer like an empty JSON stream (unless ``reads_ok`` is
    false); POSTs get ``respond``."""

    def route(m: str, p: str, h: Mapping[str, str], b: bytes
              ) -> tuple[int, Mapping[str, str], bytes] | None:
        if reads_ok and m in ("HEAD", "GET"):
            return 200, {"Content-Type": JSON, "Stream-Next-Offset": f"{0:016d}_{0:016d}",
                         "Stream-Up-To-Date": "true", "Cache-Control": "no-store"}, b"[]"
        return respond(m, p, h, b)

    server = FakeServer(route)
    try:
        yield server
    finally:
        server.close()


def case_200_without_offset_stream_append(server: ReferenceServer) -> Case:
    """DurableStream.append() must raise when a 200/204 carries no Stream-Next-Offset."""
    case = Case("6f 200 w/o offset: append()", DurableStreamError, bound=5.0)
    with _fake(lambda m, p, h, b: (200, {"Content-Type": JSON}, b"")) as fake:
        stream = DurableStream(fake.url + "/s", content_type=JSON, retry=QUICK_RETRY)
        start = time.monotonic()
        try:
            stream.append(json.dumps("x"))
            case.sent = 1
            case.acked = 1  # it returned: the caller believes it landed
        except DurableStreamError as exc:
            case.raised = exc
            case.sent = case.reported = 1
        finally:
            stream.close()
        case.elapsed = time.monotonic() - start
        case.detail["posts"] = fake.count("POST")
    return case


def case_200_echo_without_offset_producer(server: ReferenceServer) -> Case:
    """A 200 that echoes Producer-Epoch/-Seq but has no Stream-Next-Offset: the server
    accepted that (epoch, seq); the offset is informational. Acknowledged, last_offset ''."""
    case = Case("6g 200 echo w/o offset: producer", None, bound=10.0)

    def respond(m: str, p: str, h: Mapping[str, str], b: bytes
                ) -> tuple[int, Mapping[str, str], bytes]:
        echo = _echo_ok(h, 1)
        del echo["Stream-Next-Offset"]
        return 200, echo, b""

    with _fake(respond) as fake:
        producer = _producer(fake.url + "/s")
        _deliver(case, producer, [json.dumps(f"m:{i}") for i in range(20)])
        case.detail["last_offset"] = producer.last_offset
    return case


def case_bare_200_producer(server: ReferenceServer) -> Case:
    """A bare 200 (no Stream-Next-Offset, no Producer-* echo: a captive portal, a
    mis-routed load balancer, a stub) says nothing about the stream. Taking it as an
    acknowledgement drops the messages silently; it should be retried and then reported."""
    case = Case("6h bare 200: producer", TransportError, bound=10.0)
    with _fake(lambda m, p, h, b: (200, {"Content-Type": "text/html"},
                                   b"<html>welcome</html>")) as fake:
        producer = _producer(fake.url + "/s")
        _deliver(case, producer, [json.dumps(f"m:{i}") for i in range(20)])
        case.detail["posts"] = fake.count("POST")
    # Nobody stored these: the fake server is not a stream. Acknowledged = silently lost.
    case.detail["acked_by_a_non_stream"] = case.acked
    if case.acked:
        case.raised = AssertionError(f"{case.acked} messages taken as acknowledged by a bare 200")
    case.acked = 0
    return case


def case_garbage_403(server: ReferenceServer) -> Case:
    """403 with a non-integer Producer-Epoch: a clear ForbiddenError, everything reported."""
    case = Case("6i 403 garbage Producer-Epoch", ForbiddenError, bound=5.0)
    with _fake(lambda m, p, h, b: (403, {"Producer-Epoch": "soon", "Content-Type":
                                         "text/plain"}, b"Stale producer epoch")) as fake:
        _deliver(case, _producer(fake.url + "/s", auto_claim=True),
                 [json.dumps(f"m:{i}") for i in range(30)])
    return case


def case_403_epoch_overflow(server: ReferenceServer) -> Case:
    """403 naming an epoch at 2^53-1 with auto_claim: no epoch left to claim; clear error."""
    case = Case("6j 403 epoch 2^53-1, auto_claim", ProducerError, bound=2.0)
    with _fake(lambda m, p, h, b: (403, {"Producer-Epoch": str(2**53 - 1)}, b"")) as fake:
        _deliver(case, _producer(fake.url + "/s", auto_claim=True),
                 [json.dumps(f"m:{i}") for i in range(30)])
        case.detail["posts"] = fake.count("POST")
    return case


def case_409_no_headers(server: ReferenceServer) -> Case:
    """409 without Producer-* headers or Stream-Closed: a ConflictError, all reported."""
    case = Case("6k 409 without producer headers", ConflictError, bound=5.0)
    with _fake(lambda m, p, h, b: (409, {"Content-Type": "text/plain"}, b"conflict")) as fake:
        _deliver(case, _producer(fake.url + "/s"), [json.dumps(f"m:{i}") for i in range(30)])
        case.detail["posts"] = fake.count("POST")
    return case


def case_409_garbage_expected(server: ReferenceServer) -> Case:
    """409 with Producer-Expected-Seq far ahead on every request: sequence gaps, reported
    batch by batch, bounded (no endless re-claiming)."""
    case = Case("6l 409 expected-seq 10^6 always", SequenceGapError, bound=10.0)
    with _fake(lambda m, p, h, b: (409, {"Producer-Expected-Seq": "1000000",
                                         "Producer-Received-Seq": h.get("Producer-Seq", "")},
                                   b"Producer sequence gap")) as fake:
        _deliver(case, _producer(fake.url + "/s", max_batch_items=5),
                 [json.dumps(f"m:{i}") for i in range(30)])
        case.detail["posts"] = fake.count("POST")
    return case


def case_204_first_send(server: ReferenceServer) -> Case:
    """204 'duplicate' for a first send: another writer used this id/epoch. StaleEpochError
    (without auto_claim), nothing counted as delivered."""
    case = Case("6m 204 on first send", StaleEpochError, bound=5.0)
    with _fake(lambda m, p, h, b: (204, {"Producer-Epoch": h.get("Producer-Epoch", ""),
                                         "Producer-Seq": "99"}, b"")) as fake:
        _deliver(case, _producer(fake.url + "/s"), [json.dumps(f"m:{i}") for i in range(30)])
    return case


def case_413(server: ReferenceServer) -> Case:
    """A gateway refusing one large batch (413): that batch is reported, the rest land."""
    case = Case("6n 413 for one batch", DurableStreamError, bound=10.0)
    offsets = itertools.count(1)

    def respond(m: str, p: str, h: Mapping[str, str], b: bytes
                ) -> tuple[int, Mapping[str, str], bytes]:
        if b"BIG" in b:
            return 413, {"Content-Type": "text/plain"}, b"Request Entity Too Large"
        return 200, _echo_ok(h, next(offsets)), b""

    with _fake(respond) as fake:
        producer = _producer(fake.url + "/s", max_batch_items=1, max_in_flight=1)
        _deliver(case, producer, [json.dumps("a"), json.dumps("BIG" * 100), json.dumps("b")])
        case.detail["posts"] = fake.count("POST")
    if "payload too large" not in str(case.raised) or "max_batch_bytes" not in str(case.raised):
        case.raised = AssertionError(f"413 not explained: {case.raised}")
    return case


def case_endless_503(server: ReferenceServer) -> Case:
    """The real server answering 503 (Retry-After: 3600) forever: retried with the same
    (epoch, seq) until delivery_timeout_ms, then a ServerError; never longer."""
    case = Case("6o endless 503, Retry-After 1h", ServerError, bound=1.5 + 2.0)
    url = new_json_stream(server.url, "e503")
    server.inject_fault(url, status=503, count=10**6, retryAfter=3600, method="POST")
    try:
        _deliver(case, _producer(url, delivery_timeout_ms=1500),
                 [json.dumps(f"m:{i}") for i in range(50)])
    finally:
        server.clear_faults()
    case.found = len(read_json_stream(url)[0])
    return case


def case_endless_503_stream_append(server: ReferenceServer) -> Case:
    """DurableStream.append() against an endless 503: bounded retries, then ServerError."""
    case = Case("6p endless 503: append()", ServerError, bound=5.0)
    url = new_json_stream(server.url, "e503b")
    server.inject_fault(url, status=503, count=10**6, method="POST")
    stream = DurableStream(url, content_type=JSON, retry=QUICK_RETRY)
    start = time.monotonic()
    try:
        stream.append(json.dumps("x"))
        case.sent = case.acked = 1
    except DurableStreamError as exc:
        case.raised = exc
        case.sent = case.reported = 1
    finally:
        stream.close()
        server.clear_faults()
    case.elapsed = time.monotonic() - start
    case.found = len(read_json_stream(url)[0])
    return case


def case_silent_server(server: ReferenceServer) -> Case:
    """A server that accepts the connection and never answers: each request times out
    (request_timeout), retries stop at delivery_timeout_ms, TransportError reported."""
    case = Case("6q server never answers", TransportError, bound=1.5 + 2.5)
    with _fake(lambda m, p, h, b: None, reads_ok=False) as fake:
        _deliver(case, _producer(fake.url + "/s", request_timeout=(1.0, 0.3)),
                 [json.dumps(f"m:{i}") for i in range(20)])
        case.detail["posts"] = fake.count("POST")
        case.detail["requests"] = [(r.method, r.path) for r in fake.requests]
    return case


@contextlib.contextmanager
def _garbage_server() -> Iterator[str]:
    """Answers every connection with bytes that are not HTTP, then closes it."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.settimeout(2)
                conn.recv(65536)
                conn.sendall(b"\x00\xffSSH-2.0-not-http\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True, name="garbage-server")
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(5)


def case_not_http(server: ReferenceServer) -> Case:
    """A peer that answers with non-HTTP bytes: TransportError after the delivery timeout."""
    case = Case("6r peer speaks no HTTP", TransportError, bound=1.5 + 2.0)
    with _garbage_server() as base:
        _deliver(case, _producer(base + "/s"), [json.dumps(f"m:{i}") for i in range(20)])
    return case


CASES: dict[str, Callable[[ReferenceServer], Case]] = {
    "non_str_bytes": case_non_str_bytes,
    "str_subclass": case_str_subclass,
    "invalid_json_among_good": case_invalid_json_among_good,
    "json_with_bom": case_json_with_bom,
    "oversize": case_oversize,
    "200_without_offset_stream_append": case_200_without_offset_stream_append,
    "200_echo_without_offset_producer": case_200_echo_without_offset_producer,
    "bare_200_producer": case_bare_200_producer,
    "garbage_403": case_garbage_403,
    "403_epoch_overflow": case_403_epoch_overflow,
    "409_no_headers": case_409_no_headers,
    "409_garbage_expected": case_409_garbage_expected,
    "204_first_send": case_204_first_send,
    "413": case_413,
    "endless_503": case_endless_503,
    "endless_503_stream_append": case_endless_503_stream_append,
    "silent_server": case_silent_server,
    "not_http": case_not_http,
}

# The producer's storm, JSON and error-wording cases live in hostile_storms (module size).
from .hostile_storms import CASES as _STORM_CASES  # noqa: E402

CASES.update(_STORM_CASES)

#: Cases that currently fail because of a library bug (see BUGS in test_hostile.py).
KNOWN_BUGS: set[str] = set()
