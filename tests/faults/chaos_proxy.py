"""A fault-injecting HTTP/1.1 proxy for loopback tests (threads and blocking sockets).

``ChaosProxy`` listens on ``127.0.0.1:<ephemeral>`` and relays each client connection to one
upstream connection of its own. It understands just enough HTTP/1.1 to find where every
request and response ends (``Content-Length``, ``Transfer-Encoding: chunked``, bodiless
statuses and ``HEAD``, read-until-close), so keep-alive connections carry many exchanges and
streaming responses (long-poll, SSE) are relayed as they arrive.

For each request whose method is in ``methods`` it draws one fault from a seeded random
generator:

``drop_before``
    The request is read in full and the client connection is reset; nothing is forwarded,
    so the server never sees it.
``drop_after``
    The request is forwarded and the server's whole response read, then the client
    connection is reset: the server committed the request, the client never hears of it.
``reset_mid``
    The response head and a random part of what follows are relayed, then both connections
    are reset (for the reference server's producer answers, whose chunked body is empty,
    this cuts inside the terminating chunk).
    An endless response (``text/event-stream``) is also cut after each piece it relays
    with the same probability, so an SSE reader sees connections die mid-event.
``delay``
    The response is held for a random time in ``[delay_min, delay_max]`` seconds before
    being relayed (longer than the client's read timeout, this makes the client give up on
    a request that the server did commit).

Counters of every fault injected and every exchange relayed are in :meth:`stats`; the
producer headers and statuses of relayed requests can be recorded (``record=True``).
Everything stops with :meth:`close`.
"""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, cast

__all__ = ["ChaosProxy", "Exchange", "FaultRates"]

_BODYLESS = frozenset({204, 304})
_MAX_LINE = 64 * 1024
FAULTS = ("drop_before", "drop_after", "reset_mid", "delay")


@dataclass(frozen=True)
class FaultRates:
    """Probabilities (0..1, summing to at most 1) of each fault per request."""

    drop_before: float = 0.0
    drop_after: float = 0.0
    reset_mid: float = 0.0
    delay: float = 0.0
    delay_min: float = 0.0
    delay_max: float = 0.05

    def __post_init__(self) -> None:
        total = self.drop_before + self.drop_after + self.reset_mid + self.delay
        if min(self.drop_before, self.drop_after, self.reset_mid, self.delay) < 0 or total > 1:
            raise ValueError(f"fault rates must be >= 0 and sum to <= 1, got {self}")
        if not 0 <= self.delay_min <= self.delay_max:
            raise ValueError("need 0 <= delay_min <= delay_max")


@dataclass
class Exchange:
    """One relayed request (recorded when the proxy was made with ``record=True``)."""

    method: str
    target: str
    headers: dict[str, str]
    fault: str | None
    status: int | None = None


@dataclass
class _Message:
    start_line: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    def head_bytes(self) -> bytes:
        lines = [self.start_line]
        lines.extend(f"{k}: {v}".encode("latin-1") for k, v in self.headers)
        return b"\r\n".join(lines) + b"\r\n\r\n"


class _Closed(Exception):
    """The peer closed the connection (cleanly, between messages or not)."""


def _read_head(rfile: BinaryIO) -> _Message | None:
    """Read a request/status line and headers; None on a clean EOF before any byte."""
    line = rfile.readline(_MAX_LINE)
    while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between messages (RFC 9112 §2.2)
        line = rfile.readline(_MAX_LINE)
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise _Closed("truncated start line")
    message = _Message(line.rstrip(b"\r\n"))
    while True:
        line = rfile.readline(_MAX_LINE)
        if not line.endswith(b"\n"):
            raise _Closed("truncated header block")
        if line in (b"\r\n", b"\n"):
            return message
        text = line.decode("latin-1").rstrip("\r\n")
        key, _, value = text.partition(":")
        message.headers.append((key.strip(), value.strip()))


def _body_pieces(rfile: BinaryIO, message: _Message, *, until_close: bool
                 ) -> Iterable[bytes]:
    """Yield the raw bytes of a message body as they arrive (framing kept as on the wire)."""
    encoding = (message.header("Transfer-Encoding") or "").lower()
    if "chunked" in encoding:
        while True:
            size_line = rfile.readline(_MAX_LINE)
            if not size_line.endswith(b"\n"):
                raise _Closed("truncated chunk size")
            yield size_line
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the empty line
                    trailer = rfile.readline(_MAX_LINE)
                    if not trailer.endswith(b"\n"):
                        raise _Closed("truncated trailer")
                    yield trailer
                    if trailer in (b"\r\n", b"\n"):
                        return
            remaining = size + 2  # data + CRLF
            while remaining:
                piece = rfile.read1(min(remaining, 65536))  # type: ignore[attr-defined]
                if not piece:
                    raise _Closed("truncated chunk")
                remaining -= len(piece)
                yield piece
        return
    length = message.header("Content-Length")
    if length is not None:
        remaining = int(length)
        while remaining:
            piece = rfile.read1(min(remaining, 65536))  # type: ignore[attr-defined]
            if not piece:
                raise _Closed("truncated body")
            remaining -= len(piece)
            yield piece
        return
    if until_close:
        while True:
            piece = rfile.read1(65536)  # type: ignore[attr-defined]
            if not piece:
                return
            yield piece


def _reset(sock: socket.socket) -> None:
    """Close with an RST (SO_LINGER 0) rather than an orderly FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


class ChaosProxy:
    """See the module docstring. Use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        upstream: str,
        rates: FaultRates | None = None,
        *,
        seed: int = 0,
        methods: Iterable[str] = ("POST",),
        record: bool = False,
    ) -> None:
        host_port = upstream.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":")
        self.upstream = (host or "127.0.0.1", int(port))
        self.rates = rates or FaultRates()
        self.methods = frozenset(m.upper() for m in methods)
        self.record = record
        self.exchanges: list[Exchange] = []
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # notified on every exchange step
        self._counts = dict.fromkeys((*FAULTS, "relayed", "connections", "upstream_errors"), 0)
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._acceptor = threading.Thread(target=self._accept_loop, name="chaos-accept",
                                          daemon=True)
        self._acceptor.start()

    # -- public ------------------------------------------------------------------------
    def set_rates(self, rates: FaultRates) -> None:
        with self._lock:
            self.rates = rates

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def wait_for(self, predicate: Callable[[ChaosProxy], bool], timeout: float) -> bool:
        """Block until ``predicate(self)`` is true (re-checked at every exchange step)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def faults_injected(self) -> int:
        with self._lock:
            return sum(self._counts[name] for name in FAULTS)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
            threads = list(self._threads)
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept() (Linux)
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
            _reset(sock)
        self._acceptor.join(5)
        for thread in threads:
            thread.join(5)

    def __enter__(self) -> ChaosProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    _reset(client)
                    return
                self._counts["connections"] += 1
                self._sockets.add(client)
                thread = threading.Thread(target=self._serve, args=(client,),
                                          name="chaos-conn", daemon=True)
                self._threads.add(thread)
            thread.start()

    def _track(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._sockets.add(sock)
            return True

    def _forget(self, *socks: socket.socket | None) -> None:
        with self._lock:
            for sock in socks:
                if sock is not None:
                    self._sockets.discard(sock)
            self._threads.discard(threading.current_thread())

    def _draw(self, method: str) -> tuple[str | None, float]:
        with self._lock:
            if method not in self.methods:
                return None, 0.0
            r = self._rng.random()
            rates = self.rates
            delay = self._rng.uniform(rates.delay_min, rates.delay_max)
            edge = 0.0
            for name in FAULTS:
                edge += getattr(rates, name)
                if r < edge:
                    self._counts[name] += 1
                    return name, delay
            return None, 0.0

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        crfile = cast(BinaryIO, client.makefile("rb", buffering=65536))
        urfile: BinaryIO | None = None
        try:
            while True:
                request = _read_head(crfile)
                if request is None:
                    return
                method = request.start_line.split(b" ", 1)[0].decode("latin-1").upper()
                target = request.start_line.split(b" ")[1].decode("latin-1")
                body = b"".join(_body_pieces(crfile, request, until_close=False))
                fault, delay = self._draw(method)
                exchange = Exchange(method, target, {k: v for k, v in request.headers}, fault)
                if self.record:
                    with self._lock:
                        self.exchanges.append(exchange)
                self._notify()
                if fault == "drop_before":
                    return
                if upstream is None:
                    try:
                        upstream = socket.create_connection(self.upstream, timeout=10)
                    except OSError:
                        with self._lock:
                            self._counts["upstream_errors"] += 1
                        return  # like a gateway whose origin is down: the client sees a reset
                    upstream.settimeout(None)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    if not self._track(upstream):
                        return
                    urfile = cast(BinaryIO, upstream.makefile("rb", buffering=65536))
                assert urfile is not None
                try:
                    upstream.sendall(request.head_bytes() + body)
                    response = _read_head(urfile)
                except (OSError, _Closed):
                    response = None
                if response is None:
                    with self._lock:
                        self._counts["upstream_errors"] += 1
                    return
                status = int(response.start_line.split(b" ")[1])
                exchange.status = status
                bodyless = method == "HEAD" or status in _BODYLESS or 100 <= status < 200
                pieces: Iterable[bytes] = () if bodyless else _body_pieces(
                    urfile, response, until_close=True)
                streaming = "text/event-stream" in (response.header("Content-Type") or "")
                if fault == "drop_after":
                    if not streaming:
                        for _ in pieces:  # let the server finish; the client hears nothing
                            pass
                    self._notify()
                    return
                if fault == "delay":
                    time.sleep(delay)
                head = response.head_bytes()
                if fault == "reset_mid" and streaming:  # an endless body: cut after a piece
                    client.sendall(head + next(iter(pieces), b"")[:-1])
                    return
                if fault == "reset_mid":
                    rest = b"".join(pieces) if not bodyless else b""
                    whole = head + rest
                    cut = len(head) + (self._cut(len(rest)) if rest else 0)
                    if not rest:
                        cut = self._cut(len(head))
                    with contextlib.suppress(OSError):
                        client.sendall(whole[:cut])
                    return
                client.sendall(head)
                for piece in pieces:
                    if streaming and self._cut_stream(method):
                        client.sendall(piece[: len(piece) // 2])  # mid-event
                        return
                    client.sendall(piece)
                with self._lock:
                    self._counts["relayed"] += 1
                    self._changed.notify_all()
                keep = (response.header("Connection") or "").lower() != "close" and (
                    bodyless or response.header("Content-Length") is not None
                    or "chunked" in (response.header("Transfer-Encoding") or "").lower())
                if not keep:
                    return
        except (OSError, _Closed, ValueError, IndexError):
            return
        finally:
            for f in (crfile, urfile):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
            _reset(client)
            if upstream is not None:
                _reset(upstream)
            self._forget(client, upstream)

    def _cut_stream(self, method: str) -> bool:
        """An endless (SSE) response is cut after each piece with probability reset_mid."""
        with self._lock:
            if method not in self.methods or self._rng.random() >= self.rates.reset_mid:
                return False
            self._counts["reset_mid"] += 1
            return True

    def _cut(self, n: int) -> int:
        with self._lock:
            return self._rng.randrange(1, n) if n > 1 else 0
