"""Hostile servers on the wire, for the HTTP, reading and SSE layer (the producer's cases are
in hostile.py).

Each server is a raw socket on loopback that the reference server cannot imitate: bodies
that never end, an SSE line that never ends, a server that accepts and never answers, one
that drips its body a byte at a time, garbage instead of a status line, redirects to another
origin. :func:`run_client` runs a small client script in a fresh interpreter and returns its
result with the peak memory (``ru_maxrss``) it reached, so memory bounds are measured on the
client alone (the hostile server stays in the test process).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ClientResult", "RawServer", "drip", "endless", "read_request", "run_client"]

ROOT = Path(__file__).resolve().parents[2]
MIB = 1024 * 1024
#: Handles one accepted connection (the request is not read yet).
Handler = Callable[[socket.socket], None]


def read_request(conn: socket.socket, limit: int = 65536) -> tuple[str, dict[str, str]]:
    """Read a request head; return its request line and headers (body, if any, unread)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        piece = conn.recv(4096)
        if not piece:
            break
        data += piece
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    line, *rest = head.split("\r\n")
    headers = {}
    for item in rest:
        name, _, value = item.partition(":")
        headers[name.strip().lower()] = value.strip()
    return line, headers


class RawServer:
    """A loopback TCP server calling ``handler(conn)`` on a thread per connection; every
    connection is closed at :meth:`close` (so no handler outlives the test)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.stop = threading.Event()
        self.seen: list[tuple[str, dict[str, str]]] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="raw-server").start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.handler(conn)
        with contextlib.suppress(OSError):
            conn.close()

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(OSError):
            self._sock.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def endless(head: bytes, piece: bytes, stop: threading.Event, *, first: bytes = b"",
            total: int | None = None) -> Handler:
    """Answer every request with ``head`` then ``first`` then ``piece`` repeated until the
    client goes away (or ``total`` bytes of body were sent)."""

    def handle(conn: socket.socket) -> None:
        while not stop.is_set():
            read_request(conn)
            conn.sendall(head + first)
            sent = len(first)
            while not stop.is_set() and (total is None or sent < total):
                chunk = piece if total is None else piece[: total - sent]
                conn.sendall(chunk)
                sent += len(chunk)
            if total is None:
                return

    return handle


def drip(head: bytes, stop: threading.Event, *, every: float = 0.2) -> Handler:
    """Answer with ``head`` (a Content-Length far ahead), then one body byte every ``every``
    seconds: each read succeeds within any read timeout, the body never completes."""

    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(head)
        while not stop.wait(every):
            conn.sendall(b"x")

    return handle


@dataclass
class ClientResult:
    """What a client script returned, how long it took and its peak memory."""

    value: Any
    seconds: float
    peak_rss: int  # bytes: ru_maxrss at the end
    base_rss: int  # bytes: ru_maxrss once the library was imported

    @property
    def grew(self) -> int:
        return self.peak_rss - self.base_rss


_PRELUDE = """
import json, resource, sys, time
import durable_streams
from durable_streams import *
def _rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
BASE = _rss()
URL = sys.argv[1]
STARTED = time.monotonic()
def outcome():
{body}
try:
    value = outcome()
except Exception as exc:
    value = {{"error": type(exc).__name__, "message": str(exc)}}
print(json.dumps({{"value": value, "seconds": time.monotonic() - STARTED,
                  "peak": _rss(), "base": BASE}}))
"""


def run_client(body: str, url: str, *, timeout: float = 120.0) -> ClientResult:
    """Run ``body`` (the statements of a function returning a JSON-able value; ``URL`` is
    the server's URL) in a fresh interpreter; an exception becomes ``{"error", "message"}``."""
    script = _PRELUDE.format(body=textwrap.indent(textwrap.dedent(body), "    "))
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script, url], capture_output=True,
                          text=True, timeout=timeout, env=env, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise AssertionError(f"client failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return ClientResult(out["value"], out["seconds"], out["peak"], out["base"])


@contextlib.contextmanager
def timed() -> Iterator[Callable[[], float]]:
    started = time.monotonic()
    yield lambda: time.monotonic() - started
