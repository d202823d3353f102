"""Reading through failures, against the real reference server (PROTOCOL.md §5.6–5.8).

Faults come from the server's own injection endpoint (status codes, Retry-After, dropped
connections, corrupted/truncated bodies, injected SSE events), from a small TCP proxy that
cuts live connections mid-stream, and from a server restart (which ends SSE connections the
way a server's periodic close does, §5.8 "Connection Lifecycle").
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from durable_streams import (
    DurableStream,
    ParseError,
    RetryPolicy,
    ServerError,
    StreamResponse,
    stream,
)
from durable_streams.reading import LiveMode
from durable_streams.testing import ReferenceServer

pytestmark = pytest.mark.timeout(30)

JSON = "application/json"
FAST = RetryPolicy(max_retries=3, initial_delay_ms=1, max_delay_ms=5)


class Reader:
    """Consumes ``iter_json()`` on a thread; ``wait_count`` blocks on a condition."""

    def __init__(self, res: StreamResponse) -> None:
        self.items: list[Any] = []
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._run, args=(res,), daemon=True)
        self._thread.start()

    def _run(self, res: StreamResponse) -> None:
        try:
            for item in res.iter_json():
                with self._cond:
                    self.items.append(item)
                    self._cond.notify_all()
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def wait_count(self, count: int, timeout: float = 10.0) -> None:
        with self._cond:
            self._cond.wait_for(lambda: len(self.items) >= count or self._done, timeout)
            if self.error is not None:
                raise self.error
            assert len(self.items) >= count, f"reader got {self.items!r}"

    def join(self, timeout: float = 15.0) -> list[Any]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the reader did not finish"
        if self.error is not None:
            raise self.error
        return self.items


# -- catch-up retries --------------------------------------------------------------------------


def test_5xx_and_dropped_connections_are_retried(json_stream: DurableStream,
                                                 server: ReferenceServer) -> None:
    json_stream.append({"a": 1})
    server.inject_fault(json_stream.url, status=503, count=2, method="GET")
    with stream(json_stream.url, retry=FAST) as res:
        assert res.read_json() == [{"a": 1}]
    server.inject_fault(json_stream.url, dropConnection=True, count=2, method="GET")
    with stream(json_stream.url, retry=FAST) as res:
        assert res.read_json() == [{"a": 1}]


def test_429_retry_after_is_honoured(json_stream: DurableStream, server: ReferenceServer) -> None:
    server.inject_fault(json_stream.url, status=429, retryAfter=1, count=1, method="GET")
    started = time.monotonic()
    with stream(json_stream.url, retry=FAST) as res:
        assert res.read_json() == []
    assert time.monotonic() - started >= 0.9


def test_persistent_5xx_ends_in_an_error(json_stream: DurableStream,
                                         server: ReferenceServer) -> None:
    server.inject_fault(json_stream.url, status=500, count=20, method="GET")
    with pytest.raises(ServerError) as info:
        stream(json_stream.url, retry=FAST)
    assert info.value.status == 500 and json_stream.url in str(info.value)


class RetryLog(logging.Handler):
    """Counts the reader's retry log records, so a test can wait until faults were used."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self.cond = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        if "retry" in record.getMessage():
            with self.cond:
                self.count += 1
                self.cond.notify_all()

    def wait_count(self, count: int, timeout: float = 10.0) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.count >= count, timeout), self.count


def test_retry_count_resets_after_each_success(json_stream: DurableStream,
                                               server: ReferenceServer) -> None:
    """Two faults per round with ``max_retries=2``: fine only if successes reset the count."""
    retries = RetryLog()
    logger = logging.getLogger("durable_streams")
    old_level = logger.level
    logger.addHandler(retries)
    logger.setLevel(logging.DEBUG)
    try:
        policy = RetryPolicy(max_retries=2, initial_delay_ms=1, max_delay_ms=5)
        res = stream(json_stream.url, live="long-poll", retry=policy)
        reader = Reader(res)
        expected: list[Any] = []
        for round_ in range(3):
            server.inject_fault(json_stream.url, status=503, count=2, method="GET")
            json_stream.append({"round": round_})
            retries.wait_count(2 * (round_ + 1))  # both faults were met...
            json_stream.append({"ok": round_})  # ...and a later request succeeded
            expected += [{"round": round_}, {"ok": round_}]
            reader.wait_count(len(expected))
        json_stream.close_stream()
        assert reader.join() == expected
    finally:
        logger.removeHandler(retries)
        logger.setLevel(old_level)


# -- parse errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [{"corruptBody": True}, {"truncateBodyBytes": 7}])
def test_malformed_json_body_is_a_parse_error(json_stream: DurableStream,
                                              server: ReferenceServer,
                                              fault: dict[str, Any]) -> None:
    """§9.1.5: a JSON-mode body must be one JSON array; garbage raises, is not yielded."""
    for i in range(5):
        json_stream.append({"message": "hello", "i": i})
    server.inject_fault(json_stream.url, method="GET", **fault)
    with stream(json_stream.url) as res, pytest.raises(ParseError) as info:
        list(res.iter_events())
    assert info.value.code == "PARSE_ERROR" and json_stream.url in str(info.value)


def test_malformed_long_poll_body_is_a_parse_error(json_stream: DurableStream,
                                                   server: ReferenceServer) -> None:
    res = json_stream.stream(live="long-poll")
    server.inject_fault(json_stream.url, method="GET", corruptBody=True)
    json_stream.append({"a": 1})
    with res, pytest.raises(ParseError):
        list(res.iter_json())


@pytest.mark.parametrize("event", [
    {"eventType": "control", "data": ""},
    {"eventType": "control", "data": "not json"},
    {"eventType": "control", "data": "[1]"},
    {"eventType": "data", "data": "{not json"},
])
def test_bad_sse_events_are_parse_errors(json_stream: DurableStream, server: ReferenceServer,
                                         event: dict[str, str]) -> None:
    """§5.8: control data must be a JSON object; JSON-mode data events JSON arrays."""
    json_stream.append({"a": 1})
    server.inject_fault(json_stream.url, injectSseEvent=event)
    with pytest.raises(ParseError) as info, json_stream.stream(live="sse") as res:
        list(res.iter_json())
    assert info.value.code == "PARSE_ERROR"


def test_unknown_sse_events_are_ignored(json_stream: DurableStream,
                                        server: ReferenceServer) -> None:
    json_stream.append({"a": 1})
    server.inject_fault(json_stream.url,
                        injectSseEvent={"eventType": "mystery", "data": "{whatever"})
    res = json_stream.stream(live="sse")
    json_stream.append({"b": 2})
    json_stream.close_stream()
    with res:
        assert list(res.iter_json()) == [{"a": 1}, {"b": 2}]
        assert res.closed


# -- live connections cut mid-stream -----------------------------------------------------------


class CuttingProxy:
    """A loopback TCP proxy whose open connections can be cut at any moment."""

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        self._upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [client, upstream]
                self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self._listener.close()
        self.cut()


@pytest.fixture
def proxy(server: ReferenceServer) -> Iterator[CuttingProxy]:
    p = CuttingProxy(server.url)
    yield p
    p.close()


@pytest.mark.parametrize("live", ["long-poll", "sse", "auto"])
def test_cut_connections_resume_without_loss_or_repeat(json_stream: DurableStream,
                                                       proxy: CuttingProxy, live: LiveMode) -> None:
    """A live read whose connection is cut resumes from the last offset: exactly once."""
    path = urlparse(json_stream.url).path
    res = stream(proxy.url + path, live=live, retry=FAST)
    reader = Reader(res)
    n = 9
    for i in range(n):
        json_stream.append({"i": i})
        reader.wait_count(i + 1)
        if i % 2 == 0:
            proxy.cut()
    json_stream.close_stream()
    assert reader.join() == [{"i": i} for i in range(n)]
    assert proxy.connections > n // 2  # the reader really reconnected


def test_server_restart_ends_sse_and_long_poll_and_readers_resume(tmp_path: Path) -> None:
    """§5.8: when the server ends the SSE connection, the client reconnects from the last
    ``streamNextOffset``; long-poll readers retry too. Nothing is lost or repeated."""
    # A graceful stop may take a couple of seconds on a busy machine: ~20 s of retries.
    patient = RetryPolicy(max_retries=100, initial_delay_ms=20, max_delay_ms=200)
    with ReferenceServer(data_dir=tmp_path / "data", long_poll_timeout_ms=500) as srv:
        url = srv.stream_url()
        with DurableStream.create(url, content_type=JSON) as handle:
            handle.append({"i": 0})
        readers = [Reader(stream(url, live=mode, retry=patient))
                   for mode in ("sse", "long-poll")]
        for reader in readers:
            reader.wait_count(1)
        srv.restart()
        with DurableStream(url, content_type=JSON) as handle:  # a fresh connection pool
            for i in range(1, 5):
                handle.append({"i": i})
            handle.close_stream()
        for reader in readers:
            assert reader.join(timeout=25) == [{"i": i} for i in range(5)]
