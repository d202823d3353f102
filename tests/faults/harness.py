"""Shared helpers of the fault scenarios: ground truth, accounting, fake servers, probes.

Nothing here uses the library's reader: the ground truth of every scenario is read with plain
``requests`` catch-up GETs straight from the origin server, so a bug in ``reading.py`` can
never hide a bug in the producer (or the reverse).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import socketserver
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import requests

__all__ = [
    "FakeServer",
    "Tally",
    "count_sockets",
    "free_port",
    "read_json_stream",
    "rss_bytes",
    "tally",
]


# -- ground truth --------------------------------------------------------------------------
def read_json_stream(url: str, *, timeout: float = 30.0) -> tuple[list[Any], str]:
    """Every message of a JSON-mode stream (catch-up GETs from ``-1``) and the tail offset."""
    items: list[Any] = []
    offset = "-1"
    deadline = time.monotonic() + timeout
    with requests.Session() as session:
        session.headers["Accept-Encoding"] = "identity"
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {url} took more than {timeout}s")
            response = session.get(url, params={"offset": offset}, timeout=10)
            response.raise_for_status()
            if response.content:
                chunk = json.loads(response.content)
                assert isinstance(chunk, list), f"JSON-mode read is not an array: {chunk!r}"
                items.extend(chunk)
            offset = response.headers["Stream-Next-Offset"]
            if response.headers.get("Stream-Up-To-Date", "").lower() == "true":
                return items, offset


def head_offset(url: str) -> str:
    response = requests.head(url, timeout=10)
    response.raise_for_status()
    return response.headers["Stream-Next-Offset"]


# -- accounting ----------------------------------------------------------------------------
@dataclass
class Tally:
    """One line of the reliability table.

    ``sent``: messages ``append()`` accepted. ``acked``: the producer's count of messages the
    server acknowledged. ``found``: distinct expected messages present in the stream.
    ``duplicates``: extra copies of expected messages. ``lost``: accepted messages that are
    neither in the stream nor reported to the application (``DeliveryError``/``on_error``).
    ``reported``: accepted messages reported undelivered (expected in some scenarios).
    ``foreign``: messages in the stream that nobody sent (must be 0).
    """

    scenario: str
    sent: int = 0
    acked: int = 0
    found: int = 0
    duplicates: int = 0
    lost: int = 0
    reported: int = 0
    foreign: int = 0
    wall: float = 0.0
    order_ok: bool = True
    notes: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    #: what else went wrong (a hung child, a leak, a missing error...): the line is not ok
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.lost == 0 and self.duplicates == 0 and self.foreign == 0
                and self.order_ok and not self.problems)

    def line(self) -> str:
        extra = " ".join(f"{k}={v}" for k, v in self.notes.items())
        if self.problems:
            extra += " PROBLEMS: " + "; ".join(self.problems)
        return (f"{self.scenario:<28} {self.sent:>8} {self.acked:>8} {self.found:>8} "
                f"{self.duplicates:>5} {self.lost:>5} {self.reported:>8} {self.wall:>8.1f}s  "
                f"{'OK ' if self.ok else 'BAD'} {extra}")

    @staticmethod
    def header() -> str:
        return (f"{'scenario':<28} {'sent':>8} {'acked':>8} {'found':>8} {'dups':>5} "
                f"{'lost':>5} {'reported':>8} {'wall':>9}  ok  notes")

    def explain(self) -> str:
        fields = {k: v for k, v in self.__dict__.items() if k != "details"}
        return f"{self.scenario}: {fields}"


def tally(
    scenario: str,
    sent: Sequence[str],
    stream_items: Iterable[Any],
    *,
    acked: int,
    reported: Iterable[str] = (),
    ordered_by: Callable[[str], tuple[Any, int]] | None = None,
    wall: float = 0.0,
    ignore: Callable[[Any], bool] | None = None,
) -> Tally:
    """Compare what was accepted (``sent``) with what the stream holds.

    ``ordered_by`` maps a message to ``(group, index)``; within a group the stream must hold
    the messages in increasing index order (per-thread order).
    """
    items = list(stream_items)
    expected = Counter(sent)
    assert all(n == 1 for n in expected.values()), "test bug: sent messages must be unique"
    present: Counter[Any] = Counter()
    foreign = 0
    for item in items:
        if ignore is not None and ignore(item):
            continue
        if isinstance(item, str) and item in expected:
            present[item] += 1
        else:
            foreign += 1
    reported_set = set(reported)
    found = len(present)
    duplicates = sum(n - 1 for n in present.values())
    lost = sum(1 for m in expected if m not in present and m not in reported_set)
    result = Tally(scenario, sent=len(sent), acked=acked, found=found, duplicates=duplicates,
                   lost=lost, reported=len(reported_set & set(expected)), foreign=foreign,
                   wall=wall)
    if ordered_by is not None:
        result.order_ok = _in_group_order(
            (m for m in items if isinstance(m, str) and m in expected), ordered_by)
    return result


def _in_group_order(items: Iterable[str], key: Callable[[str], tuple[Any, int]]) -> bool:
    last: dict[Any, int] = {}
    for item in items:
        group, index = key(item)
        if index <= last.get(group, -1):
            return False
        last[group] = index
    return True


def thread_key(message: str) -> tuple[str, int]:
    """``"<group>:<index>"`` -> (group, index)."""
    group, _, index = message.rpartition(":")
    return group, int(index)


# -- process probes ------------------------------------------------------------------------
def rss_bytes() -> int:
    """Resident set size of this process, from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def count_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def count_sockets() -> int:
    n = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                n += 1
    return n


def free_port() -> int:
    """An ephemeral loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- a tiny programmable HTTP server -------------------------------------------------------
Reply = tuple[int, Mapping[str, str], bytes]
Handler = Callable[[str, str, Mapping[str, str], bytes], "Reply | None"]


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _ThreadingServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class FakeServer:
    """A hostile stand-in for a Durable Streams server, on 127.0.0.1:<ephemeral>.

    ``handler(method, path, headers, body)`` returns ``(status, headers, body)``, or None to
    hang: the connection is then held open without an answer until :meth:`close`. Every
    request is recorded in :attr:`requests`. HTTP/1.1 with keep-alive.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        owner = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()}
                with owner._lock:
                    owner.requests.append(Request(self.command, self.path, headers, body))
                reply = owner.handler(self.command, self.path, headers, body)
                if reply is None:
                    owner._stop.wait(60)
                    self.close_connection = True
                    return
                status, out_headers, out_body = reply
                self.send_response_only(status)
                for key, value in out_headers.items():
                    self.send_header(key, value)
                if status not in (204, 304) and self.command != "HEAD":
                    self.send_header("Content-Length", str(len(out_body)))
                self.end_headers()
                if status not in (204, 304) and self.command != "HEAD":
                    self.wfile.write(out_body)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _any  # noqa: N815

        self._server = _ThreadingServer(("127.0.0.1", 0), _H)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="fake-server")
        self._thread.start()

    def count(self, method: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests if method is None or r.method == method)

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def __enter__(self) -> FakeServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
