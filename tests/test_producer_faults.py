"""IdempotentProducer under faults: the real reference server's fault injection, a server
that is down or killed, and a loopback TCP proxy that loses responses after the server has
committed the request (the case only producer headers make safe to retry).

Every scenario is bounded: small message counts, fast retry policies, explicit timeouts.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from producer_helpers import FAST, JSON, Errors, read_json

from durable_streams import (
    BufferFullError,
    DeliveryError,
    DurableStream,
    IdempotentProducer,
    ProducerClosedError,
    TransportError,
)
from durable_streams.testing import ReferenceServer

pytestmark = pytest.mark.timeout(60)



class RecordingSession(requests.Session):
    """A real session that remembers every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.sent.append(request)
        return super().send(request, **kwargs)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition the producer exposes no event for (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def closed_port() -> tuple[socket.socket, int]:
    """A loopback port nothing listens on: the socket is bound (so no one else gets the
    port) but not listening, so connections are refused at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


# -- a loopback TCP proxy that can lose responses ------------------------------------------------


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


class Request:
    """What the proxy saw of one request."""

    def __init__(self, request_line: str, headers: dict[str, str]) -> None:
        self.request_line = request_line
        self.method = request_line.split(" ", 1)[0]
        self.headers = headers

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class LossyProxy:
    """Relays HTTP/1.1 between the client and the server, byte for byte.

    Each request is forwarded in full. When the server's response starts arriving (so the
    server has processed the request), ``lose(request, status)`` decides whether the client
    gets it: if not, the proxy closes both connections without relaying a byte. To the
    client this looks like a connection reset after sending: the outcome is unknown, but
    the server has committed whatever the status says.
    """

    def __init__(self, upstream_port: int,
                 lose: Callable[[Request, int], bool] | None = None,
                 *, port: int = 0) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.lose = lose or (lambda request, status: False)
        self.requests: list[Request] = []
        self.lost: list[Request] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", port))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._spawn(self._accept_loop)

    def url(self, server_url: str) -> str:
        """The same stream URL, through the proxy."""
        base, path = server_url.split("://", 1)[1].split("/", 1)
        return f"http://127.0.0.1:{self.port}/{path}"

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="lossy-proxy")
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self._track(client)
            self._track(upstream)
            state: dict[str, Request | None] = {"awaiting": None}
            self._spawn(self._client_to_server, client, upstream, state)
            self._spawn(self._server_to_client, client, upstream, state)

    @staticmethod
    def _shut(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _client_to_server(self, client: socket.socket, upstream: socket.socket,
                          state: dict[str, Request | None]) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                end = buf.index(b"\r\n\r\n") + 4
                line, headers = _parse_head(buf[:end])
                assert "chunked" not in headers.get("transfer-encoding", ""), \
                    "the proxy only frames Content-Length requests"
                total = end + int(headers.get("content-length", "0"))
                while len(buf) < total:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                request, buf = buf[:total], buf[total:]
                seen = Request(line, headers)
                with self._lock:
                    self.requests.append(seen)
                # Set before forwarding: the response can only come after this, and the
                # client sends nothing more on this connection until it has the response.
                state["awaiting"] = seen
                upstream.sendall(request)
        except OSError:
            return
        finally:
            self._shut(client, upstream)

    def _server_to_client(self, client: socket.socket, upstream: socket.socket,
                          state: dict[str, Request | None]) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    return
                request, state["awaiting"] = state["awaiting"], None
                if request is not None:  # the first bytes of a response: "HTTP/1.1 200 OK"
                    status = int(data.split(b" ", 2)[1])
                    with self._lock:
                        drop = self.lose(request, status)
                        if drop:
                            self.lost.append(request)
                    if drop:
                        return  # the server answered (and committed); the client never hears
                client.sendall(data)
        except OSError:
            return
        finally:
            self._shut(client, upstream)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._shut(self._listener)
        with self._lock:
            socks = list(self._sockets)
            threads = list(self._threads)
        self._shut(*socks)
        for t in threads:
            t.join(5)

    def __enter__(self) -> LossyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def lose_first_response_of(seqs: set[int], *, closes: bool = False
                           ) -> Callable[[Request, int], bool]:
    """Lose the first successful response to a POST carrying each Producer-Seq in ``seqs``
    (or, with ``closes``, to the first successful close request): the server stored it."""
    pending = set(seqs)
    close_pending = [closes]

    def lose(request: Request, status: int) -> bool:
        if request.method != "POST" or status not in (200, 204):
            return False
        if request.header("Stream-Closed") == "true":
            if close_pending[0]:
                close_pending[0] = False
                return True
            return False
        seq = request.header("Producer-Seq")
        if seq is not None and int(seq) in pending:
            pending.discard(int(seq))
            return True
        return False

    return lose


# -- the proxy itself ---------------------------------------------------------------------------


def test_proxy_relays_and_loses_after_commit(server: ReferenceServer,
                                             json_stream: DurableStream) -> None:
    """Self-check of the tool: a lost response still means the server stored the append."""
    with LossyProxy(server.port, lambda r, status: r.method == "POST") as proxy:
        via = proxy.url(json_stream.url)
        assert requests.head(via, timeout=5).status_code == 200
        with pytest.raises(requests.ConnectionError):
            requests.post(via, data=b'["x"]', headers={"Content-Type": JSON}, timeout=5)
    assert read_json(json_stream.url) == ["x"]


# -- lost responses: exactly once ------------------------------------------------------------


@pytest.mark.parametrize("max_in_flight", [1, 5])
def test_lost_response_after_commit_is_not_duplicated(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer], max_in_flight: int) -> None:
    n = 60
    with LossyProxy(server.port, lose_first_response_of({0, 3, 7, 20})) as proxy:
        p = make(proxy.url(json_stream.url), content_type=JSON, max_in_flight=max_in_flight,
                 max_batch_items=2, linger_ms=0)
        for i in range(n):
            p.append(str(i))
        p.flush(timeout=30)
        assert len(proxy.lost) == 4
    assert read_json(json_stream.url) == list(range(n))
    stats = p.stats()
    assert stats.duplicates >= 4  # each lost response came back as a 204 on the retry
    assert stats.failures == 0
    assert stats.messages_acked == n


def test_lost_response_of_auto_claim_first_batch_is_not_duplicated(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    """The 204 that answers the retry of a first batch whose response was lost *is* ours:
    an auto-claim producer must believe it (no epoch bump, no resend, no duplicate)."""
    with LossyProxy(server.port, lose_first_response_of({0})) as proxy:
        p = make(proxy.url(json_stream.url), content_type=JSON, auto_claim=True,
                 linger_ms=60_000)
        p.append('"only once"')
        p.flush(timeout=20)
        p.append('"next"')
        p.flush(timeout=20)
    assert read_json(json_stream.url) == ["only once", "next"]
    assert p.stats().epoch_claims == 0
    assert p.stats().duplicates == 1


@pytest.mark.parametrize("fault", [{"status": 503}, {"status": 500},
                                   {"dropConnection": True}],
                         ids=["503", "500", "drop"])
@pytest.mark.parametrize("auto_claim", [True, False], ids=["auto_claim", "no_claim"])
def test_restarted_job_first_send_fails_transiently_no_silent_loss(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer], fault: dict[str, Any],
        auto_claim: bool) -> None:
    """The previous run of a job wrote (id, epoch 0, seq 0). The next run's first request
    hits a transient failure (the server stores nothing: injected before processing), so
    its retry gets a 204 "duplicate" -- for the previous run's batch, not ours. Believing
    it drops this run's first batch while flush() reports success.

    Expected: with auto_claim the batch is delivered (claim a new epoch); without it the
    producer fails loudly. Never: flush() succeeds and the message is missing."""
    previous = make(json_stream, "nightly")
    previous.append('"run1"')
    previous.close()
    server.inject_fault(json_stream.url, method="POST", **fault)
    errs = Errors()
    current = make(json_stream, "nightly", auto_claim=auto_claim, on_error=errs)
    current.append('"run2"')
    error: DeliveryError | None = None
    try:
        current.flush(timeout=20)
    except DeliveryError as exc:
        error = exc
    got = read_json(json_stream.url)
    assert got in (["run1"], ["run1", "run2"]), got
    if "run2" not in got:
        assert error is not None and error.undelivered == (b'"run2"',), \
            f"run2 was silently dropped: flush() succeeded, stats {current.stats()}"
    if auto_claim:
        assert error is None
        assert got == ["run1", "run2"]


def test_restarted_job_not_fooled_by_identical_data_from_another_writer(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    """As above, but while the new run waits to retry its first batch, a *different*
    writer appends a message with the same content. When the retry gets the previous
    run's 204, finding equal data after the tail probe does not prove the data is ours:
    the heartbeat of this run must still be delivered (or reported)."""
    previous = make(json_stream, "nightly")
    previous.append('"heartbeat"')
    previous.close()
    server.inject_fault(json_stream.url, method="POST", status=503, retryAfter=1)
    session = RecordingSession()
    current = make(json_stream, "nightly", auto_claim=True, session=session)
    current.append('"heartbeat"')
    # once the first POST is on its way, whatever the producer looks up first is done
    assert wait_until(lambda: any(r.method == "POST" for r in list(session.sent)), timeout=10)
    json_stream.append('"heartbeat"')  # another process, another producer id (or none)
    error: DeliveryError | None = None
    try:
        current.flush(timeout=20)
    except DeliveryError as exc:
        error = exc
    got = read_json(json_stream.url)
    if error is None:
        assert got == ["heartbeat"] * 3, "this run's heartbeat was silently dropped"
    else:
        assert error.undelivered == (b'"heartbeat"',)


@pytest.mark.parametrize("auto_claim", [True, False], ids=["auto_claim", "no_claim"])
def test_lost_first_response_when_tail_probe_also_failed(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer], auto_claim: bool) -> None:
    """Two faults at start-up: every HEAD fails for a moment, then the response to the
    first (stored) POST is lost. The retry's 204 is this producer's own batch: it must be
    neither stored twice (auto_claim resending under a new epoch) nor reported as
    undelivered (a false alarm the caller would "fix" by sending it again)."""
    heads_to_fail = [20]
    first_post = [True]

    def lose(request: Request, status: int) -> bool:
        if request.method == "HEAD" and heads_to_fail[0] > 0:
            heads_to_fail[0] -= 1
            return True
        if request.method == "POST" and status == 200 and first_post[0]:
            first_post[0] = False
            return True
        return False

    with LossyProxy(server.port, lose) as proxy:
        p = make(proxy.url(json_stream.url), content_type=JSON, auto_claim=auto_claim)
        p.append('"once"')
        p.flush(timeout=20)
        assert not first_post[0], "the scenario did not happen"
    assert read_json(json_stream.url) == ["once"]


def test_close_stream_retried_after_lost_response(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    with LossyProxy(server.port, lose_first_response_of(set(), closes=True)) as proxy:
        p = make(proxy.url(json_stream.url), content_type=JSON)
        p.append('"body"')
        final = p.close_stream('"the end"')
        assert len(proxy.lost) == 1
        closes = [r for r in proxy.requests if r.header("Stream-Closed") == "true"]
        assert len(closes) == 2
        assert {(r.header("Producer-Epoch"), r.header("Producer-Seq")) for r in closes} == {
            (closes[0].header("Producer-Epoch"), closes[0].header("Producer-Seq"))}
    info = json_stream.head()
    assert info.closed
    assert final == info.offset
    assert read_json(json_stream.url) == ["body", "the end"]
    assert p.close_stream('"the end"') == final


# -- 503 / 429 / dropped connections ----------------------------------------------------------


def test_503_storm_is_ridden_out(server: ReferenceServer, json_stream: DurableStream,
                                 make: Callable[..., IdempotentProducer]) -> None:
    n = 200
    p = make(json_stream, max_in_flight=5, max_batch_items=4, linger_ms=0)
    server.inject_fault(json_stream.url, status=503, count=40, probability=0.5,
                        method="POST")
    for i in range(n):
        p.append(str(i))
    p.flush(timeout=40)
    assert read_json(json_stream.url) == list(range(n))
    assert p.stats().retries > 0
    assert p.stats().failures == 0


@pytest.mark.parametrize("status", [503, 429])
def test_retry_after_is_honoured(server: ReferenceServer, json_stream: DurableStream,
                                 make: Callable[..., IdempotentProducer], status: int) -> None:
    p = make(json_stream)
    server.inject_fault(json_stream.url, status=status, count=2, retryAfter=1, method="POST")
    start = time.monotonic()
    p.append('"patient"')
    p.flush(timeout=20)
    elapsed = time.monotonic() - start
    assert elapsed >= 1.9  # two waits of Retry-After: 1, despite a 2 ms backoff policy
    assert elapsed < 10
    assert read_json(json_stream.url) == ["patient"]
    assert p.stats().requests_sent == 3


def test_429_storm_is_ridden_out(server: ReferenceServer, json_stream: DurableStream,
                                 make: Callable[..., IdempotentProducer]) -> None:
    n = 100
    p = make(json_stream, max_in_flight=3, max_batch_items=5, linger_ms=0)
    server.inject_fault(json_stream.url, status=429, count=20, probability=0.4,
                        method="POST")
    for i in range(n):
        p.append(str(i))
    p.flush(timeout=40)
    assert read_json(json_stream.url) == list(range(n))


def test_dropped_connections_are_retried_without_duplicates(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    n = 150
    p = make(json_stream, max_in_flight=5, max_batch_items=3, linger_ms=0)
    server.inject_fault(json_stream.url, dropConnection=True, count=25, probability=0.4,
                        method="POST")
    for i in range(n):
        p.append(str(i))
    p.flush(timeout=40)
    assert read_json(json_stream.url) == list(range(n))
    assert p.stats().retries > 0
    assert p.stats().failures == 0


def test_slow_server_responses_are_waited_for(server: ReferenceServer,
                                              json_stream: DurableStream,
                                              make: Callable[..., IdempotentProducer]) -> None:
    p = make(json_stream, max_in_flight=5, max_batch_items=1, linger_ms=0)
    server.inject_fault(json_stream.url, delayMs=100, jitterMs=100, count=10, method="POST")
    for i in range(30):
        p.append(str(i))
    p.flush(timeout=30)
    assert read_json(json_stream.url) == list(range(30))


def test_request_timeout_is_retried_without_duplicate(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    """A response slower than request_timeout is a timeout: the request may have been
    stored, so the retry with the same (epoch, seq) gets a 204 that is believed."""
    p = make(json_stream, request_timeout=0.3)
    server.inject_fault(json_stream.url, delayMs=800, method="POST")
    p.append('"late"')
    p.flush(timeout=20)
    # the delayed original eventually lands too; the server deduplicates whichever is second
    time.sleep(1.0)  # let the delayed request finish on the server before reading
    assert read_json(json_stream.url) == ["late"]
    assert p.stats().requests_sent >= 2


def test_persistent_503_fails_after_delivery_timeout(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    errs = Errors()
    p = make(json_stream, delivery_timeout_ms=300, on_error=errs)
    server.inject_fault(json_stream.url, status=503, count=10_000, method="POST")
    start = time.monotonic()
    p.append('"never"')
    with pytest.raises(DeliveryError) as info:
        p.flush(timeout=10)
    elapsed = time.monotonic() - start
    assert 0.28 <= elapsed < 3
    assert info.value.undelivered == (b'"never"',)
    assert info.value.errors[0].status == 503
    server.clear_faults()
    p.append('"later"')
    p.flush(timeout=10)
    assert read_json(json_stream.url) == ["later"]


# -- the server is down -------------------------------------------------------------------------


def test_server_down_fills_buffer_then_append_raises_after_max_block(
        make: Callable[..., IdempotentProducer]) -> None:
    sock, port = closed_port()
    try:
        p = make(f"http://127.0.0.1:{port}/down", content_type=JSON, max_buffer_bytes=1000,
                 max_batch_bytes=100, max_block_ms=300, delivery_timeout_ms=30_000)
        message = json.dumps("x" * 98).encode()
        assert len(message) == 100
        for _ in range(10):
            p.append(message)  # 1000 bytes: exactly full, no blocking yet
        start = time.monotonic()
        with pytest.raises(BufferFullError) as info:
            p.append(message)
        elapsed = time.monotonic() - start
        assert 0.28 <= elapsed < 1.5
        assert "max_block_ms" in str(info.value)
        assert p.pending_bytes == 1000
        assert p.stats().messages_appended == 10
        # close(timeout) gives up on time and reports every message as undelivered
        start = time.monotonic()
        with pytest.raises((TimeoutError, DeliveryError)):
            p.close(timeout=0.5)
        assert time.monotonic() - start < 5
        assert p.stats().messages_failed == 10
    finally:
        sock.close()


def test_append_blocked_on_a_full_buffer_raises_as_soon_as_close_begins(
        make: Callable[..., IdempotentProducer]) -> None:
    """close() refuses appends first: an append() waiting for room raises
    ProducerClosedError at once, not when close() gives up on the flush."""
    sock, port = closed_port()
    try:
        p = make(f"http://127.0.0.1:{port}/down", content_type=JSON, max_buffer_bytes=100,
                 max_batch_bytes=100, max_block_ms=30_000, delivery_timeout_ms=30_000)
        p.append(json.dumps("x" * 98))  # 100 bytes: exactly full
        raised: list[tuple[BaseException, float]] = []

        def appender() -> None:
            try:
                p.append('"more"')
            except Exception as exc:
                raised.append((exc, time.monotonic()))

        thread = threading.Thread(target=appender)
        thread.start()
        # (private, on purpose) the blocked appender asks for everything to be sealed
        assert wait_until(lambda: p._acc.seal_upto == 1)
        start = time.monotonic()
        def close() -> None:
            with contextlib.suppress(TimeoutError, DeliveryError):  # nothing is delivered
                p.close(timeout=3.0)

        closer = threading.Thread(target=close)
        closer.start()
        thread.join(10)
        assert not thread.is_alive(), "the blocked append did not end"
        # (It must not be accepted either once close() has begun, e.g. when the room that
        # close() frees by giving up on the buffered message wakes it.)
        assert raised, "the blocked append was accepted after close() began"
        exc, when = raised[0]
        assert isinstance(exc, ProducerClosedError) and "is closed" in str(exc)
        assert when - start < 1.0  # close() itself runs ~3 s: its flush cannot succeed
        closer.join(10)
        assert p.stats().messages_appended == 1
    finally:
        sock.close()


def test_server_down_short_delivery_timeout_reports_undelivered(
        make: Callable[..., IdempotentProducer]) -> None:
    sock, port = closed_port()
    errs = Errors()
    try:
        p = make(f"http://127.0.0.1:{port}/down", content_type=JSON, delivery_timeout_ms=400,
                 on_error=errs, linger_ms=0)
        sent = [json.dumps(i).encode() for i in range(5)]
        start = time.monotonic()
        for m in sent:
            p.append(m)
        with pytest.raises(DeliveryError) as info:
            p.flush(timeout=10)
        elapsed = time.monotonic() - start
        assert 0.35 <= elapsed < 5
        assert list(info.value.undelivered) == sent
        assert all(isinstance(e, TransportError) for e in info.value.errors)
        assert errs.event.wait(5)
        assert sorted(errs.undelivered) == sorted(sent)
    finally:
        sock.close()


def test_server_down_then_up_delivers_exactly_once(
        server: ReferenceServer, json_stream: DurableStream,
        make: Callable[..., IdempotentProducer]) -> None:
    """Connections refused for a while (server restarting), then accepted again."""
    sock, port = closed_port()
    p = make(f"http://127.0.0.1:{port}/" + json_stream.url.rsplit("/", 1)[1],
             content_type=JSON, delivery_timeout_ms=20_000, max_batch_items=5, linger_ms=0)
    for i in range(20):
        p.append(str(i))
    with pytest.raises(TimeoutError):
        p.flush(timeout=0.4)  # nothing can get through yet
    assert p.stats().messages_acked == 0
    sock.close()
    with LossyProxy(server.port, port=port):
        p.flush(timeout=20)
    assert read_json(json_stream.url) == list(range(20))


def test_killed_server_buffer_full_and_undelivered(tmp_path: Any,
                                                   producers: list[IdempotentProducer]
                                                   ) -> None:
    """A private server (the shared one must stay up) is killed mid-run: appends fill the
    buffer and then raise after max_block_ms; pending messages are reported undelivered
    when the delivery timeout runs out."""
    errs = Errors()
    with ReferenceServer() as private:
        url = private.stream_url()
        DurableStream.create(url, content_type=JSON).close()
        p = IdempotentProducer(url, "k", content_type=JSON, retry=FAST, max_buffer_bytes=400,
                               max_batch_bytes=100, max_block_ms=200,
                               delivery_timeout_ms=1000, on_error=errs)
        producers.append(p)
        p.append('"before"')
        p.flush(timeout=10)
        private.kill()
        message = json.dumps("y" * 98)
        for _ in range(4):
            p.append(message)
        start = time.monotonic()
        with pytest.raises(BufferFullError):
            p.append(message)
        assert time.monotonic() - start < 2
        with pytest.raises(DeliveryError) as info:
            p.flush(timeout=10)
        assert len(info.value.undelivered) == 4
        assert p.stats().messages_acked == 1
        assert errs.event.wait(5)
        # the buffer has room again: appends are accepted (and will fail the same way)
        p.append(message)
        with pytest.raises(DeliveryError):
            p.close(timeout=10)
        with pytest.raises(ProducerClosedError):
            p.append(message)


# -- flush(timeout) on time ---------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [0.0, 0.2, 0.5])
def test_flush_timeout_is_on_time(server: ReferenceServer, json_stream: DurableStream,
                                  make: Callable[..., IdempotentProducer],
                                  timeout: float) -> None:
    p = make(json_stream)
    server.inject_fault(json_stream.url, delayMs=1200, method="POST")
    p.append('"x"')
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        p.flush(timeout=timeout)
    elapsed = time.monotonic() - start
    assert timeout - 0.02 <= elapsed < timeout + 0.5


def test_flush_timeout_returns_when_done_in_time(server: ReferenceServer,
                                                 json_stream: DurableStream,
                                                 make: Callable[..., IdempotentProducer]
                                                 ) -> None:
    p = make(json_stream)
    server.inject_fault(json_stream.url, delayMs=200, method="POST")
    p.append('"x"')
    start = time.monotonic()
    p.flush(timeout=5)
    elapsed = time.monotonic() - start
    assert 0.18 <= elapsed < 2
    assert read_json(json_stream.url) == ["x"]


def test_close_timeout_reports_what_is_left(make: Callable[..., IdempotentProducer]) -> None:
    sock, port = closed_port()
    errs = Errors()
    try:
        p = make(f"http://127.0.0.1:{port}/down", content_type=JSON, on_error=errs)
        p.append('"stuck"')
        start = time.monotonic()
        with pytest.raises((TimeoutError, DeliveryError)):
            p.close(timeout=0.3)
        assert time.monotonic() - start < 3
        assert p.closed
        assert errs.event.wait(5)
        assert errs.undelivered == [b'"stuck"']
    finally:
        sock.close()
