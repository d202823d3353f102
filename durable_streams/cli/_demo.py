"""``demo``: write and read back N messages (live and catch-up) and verify them."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from .. import errors
from ..producer import IdempotentProducer
from ..stream import DurableStream
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    Commands,
    err,
    fmt_count,
    headers_of,
    join_url,
    note,
    positive_int,
    shown,
)


def cmd_demo(args: argparse.Namespace) -> int:
    from ..reading import stream

    n = args.messages
    server = None
    base = args.server
    if base is None:
        from ..testing import ReferenceServer, ServerUnavailableError

        note("starting the reference server (the first run installs it with npm)...")
        server = ReferenceServer()
        try:
            server.start()
        except ServerUnavailableError as exc:
            err(f"cannot start the reference server: {exc}")
            return EXIT_FAILED
        base = server.url
    try:
        return _demo(args, base, n, stream, server is not None)
    finally:
        if server is not None:
            server.stop()


def _demo(args: argparse.Namespace, base: str, n: int,
          stream: Callable[..., Any], local: bool) -> int:
    run = uuid.uuid4().hex[:12]
    url = join_url(base, f"durable-streams-demo-{run}")
    headers = headers_of(args)
    pad = "x" * max(args.size - 40, 0)
    out = sys.stdout
    DurableStream.create(url, content_type="application/json", headers=headers,
                         timeout=args.timeout).close()

    # A live reader follows the stream (SSE) while it is written, until EOF.
    live_items: list[Any] = []
    live_error: list[BaseException] = []
    live = stream(url, live=True, headers=headers, stop_after=60.0 + n / 1000.0)

    def follow() -> None:
        try:
            for item in live.iter_json():
                live_items.append(item)
        except BaseException as exc:  # reported by the main thread
            live_error.append(exc)

    follower = threading.Thread(target=follow, name="durable-streams-demo-reader", daemon=True)
    follower.start()

    t0 = time.perf_counter()
    with _FaultCounter() as faults, IdempotentProducer(
            url, f"demo-{run}", headers=headers, content_type="application/json") as producer:
        for i in range(n):
            producer.append(json.dumps({"run": run, "i": i, "pad": pad}))
        producer.flush()
        t_written = time.perf_counter()
        final_offset = producer.close_stream()
        stats = producer.stats()
    follower.join(timeout=60.0 + n / 1000.0)
    live.close()

    t1 = time.perf_counter()
    with stream(url, headers=headers, timeout=args.timeout) as catchup:
        chunks = 0
        items: list[Any] = []
        first_chunk_offset = None
        for batch in catchup.iter_json_batches():
            if batch.items:
                chunks += 1
                if first_chunk_offset is None:
                    first_chunk_offset = batch.offset
                items.extend(batch.items)
        eof = catchup.closed
        end_offset = catchup.offset
    t_read = time.perf_counter() - t1

    problems = []
    for name, got in (("catch-up read", items), ("live read", live_items)):
        problem = _verify(got, run, n)
        if problem:
            problems.append(f"{name}: {problem}")
    if live_error:
        problems.append(f"live read failed: {live_error[0]}")
    if not eof:
        problems.append("the catch-up read did not see EOF after close_stream()")
    if end_offset != final_offset:
        problems.append(f"read ended at offset {end_offset}, close_stream() said {final_offset}")

    write_s = max(t_written - t0, 1e-9)
    rows = [
        ("server", shown(base) + (" (local reference server)" if local else "")),
        ("stream", f"{shown(url)} (application/json)"),
        ("written", f"{fmt_count(n)} messages of ~{args.size} B in {write_s:.3f} s "
                    f"({fmt_count(n / write_s)} msg/s) by an IdempotentProducer, "
                    f"{fmt_count(stats.batches_sent)} batches in "
                    f"{fmt_count(stats.requests_sent)} requests"),
        ("resends", _resends(stats.retries, faults.count)),
        ("read back", f"{fmt_count(len(items))} messages in {t_read:.3f} s "
                      f"({fmt_count(len(items) / max(t_read, 1e-9))} msg/s), "
                      f"{fmt_count(chunks)} chunk(s); live (SSE) reader got "
                      f"{fmt_count(len(live_items))}"),
        ("offsets", f"after first chunk {first_chunk_offset or '-'}, final {final_offset}"),
    ]
    for key, value in rows:
        out.write(f"{key + ':':<11}{value}\n")
    if problems:
        for problem in problems:
            out.write(f"{'FAILED:':<11}{problem}\n")
        out.flush()
        err(f"demo verification failed: {problems[0]}")
        return EXIT_FAILED
    out.write(f"{'verified:':<11}every message exactly once, in order, by both readers\n")
    out.flush()
    return EXIT_OK


def _resends(retries: int, faults: int) -> str:
    """Say which resends were ordinary pipelining and which answered a fault."""
    faults = min(faults, retries)
    pipelined = retries - faults
    parts = []
    if pipelined:
        parts.append(f"{fmt_count(pipelined)} ordinary: batches sent in parallel reached the "
                     "server out of order, were answered 409 and were sent again in order "
                     "(expected with several requests in flight; not a fault)")
    if faults:
        parts.append(f"{fmt_count(faults)} after faults (connection errors, timeouts, 5xx "
                     "or 429), retried with the same producer headers so nothing is stored "
                     "twice")
    return "; ".join(parts) if parts else "none"


class _FaultCounter(logging.Handler):
    """Counts the producer's retries after transient faults while the demo writes.

    The producer logs each such retry at DEBUG on ``durable_streams.producer`` with the
    error among the record's arguments; resends for any other reason (a pipelined batch
    answered 409 because an earlier one had not arrived yet) carry no such error.
    """

    FAULTS = (errors.TransportError, errors.ServerError, errors.RateLimitedError)

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self._logger = logging.getLogger("durable_streams.producer")
        self._level = self._logger.level

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if any(isinstance(arg, self.FAULTS) for arg in args) and "retry" in record.msg:
            self.count += 1

    def __enter__(self) -> _FaultCounter:
        self._logger.addHandler(self)
        if not self._logger.isEnabledFor(logging.DEBUG):
            self._logger.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)
        self._logger.setLevel(self._level)


def _verify(items: list[Any], run: str, n: int) -> str | None:
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("run") != run or item.get("i") != i:
            return f"message {i} is {str(item)[:80]}, expected i={i}"
    if len(items) != n:
        return f"{len(items)} messages instead of {n}"
    return None


def register(commands: Commands) -> None:
    """Add ``demo``."""
    p = commands.add(
        "demo", "write and read back N messages on a local reference server",
        "Start a local reference server (installed with npm on first use), create a JSON "
        "stream, write N messages through an IdempotentProducer while a live reader "
        "follows it, close it, read everything back, and verify that every message "
        "arrived exactly once and in order. Exit 0 only if verified.")
    p.add_argument("--messages", "-n", type=positive_int, default=10_000, metavar="N",
                   help="how many messages (default: 10000)")
    p.add_argument("--size", type=positive_int, default=100, metavar="BYTES",
                   help="approximate size of each message (default: 100)")
    p.add_argument("--server", metavar="BASE_URL",
                   help="use this running server instead of starting one")
    p.set_defaults(func=cmd_demo)
