"""Our write path, measured: IdempotentProducer throughput, caller cost, latency.

The functions here measure *our* client only; ``benchmarks/run.py`` puts them side by side
with the baselines. Run alone for the figures of the producer issue (ours vs the raw
ceiling, append() caller cost, low-rate append-to-ack latency)::

    python3 benchmarks/producer.py            # 100,000 x 100-byte JSON messages
    python3 benchmarks/producer.py --quick    # smaller, for a smoke test
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
import time
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``benchmarks`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (  # noqa: E402
    BYTES_TYPE,
    JSON_TYPE,
    MiB,
    Row,
    batch_bodies,
    fmt_latency,
    fmt_rate,
    json_messages,
    latency_summary,
    markdown_table,
    percentile,
    progress,
    ratio_row,
    raw_ceiling,
    timer_overhead_ns,
    unique_name,
)
from benchmarks._stored import check as check_stored  # noqa: E402
from benchmarks._stored import expected_bytes  # noqa: E402
from durable_streams import DurableStream, IdempotentProducer  # noqa: E402


def _stats_dict(producer: IdempotentProducer) -> dict[str, int]:
    # Public API only, read defensively: the before/after harness (benchmarks/compare.py)
    # runs this module against other revisions of the library too.
    stats = getattr(producer, "stats", None)
    s = stats() if callable(stats) else None
    return {key: int(getattr(s, attr, -1)) for key, attr in (
        ("batches", "batches_sent"), ("requests", "requests_sent"), ("retries", "retries"),
        ("acked", "messages_acked"), ("failed", "messages_failed"))}


def _new_stream(base_url: str, content_type: str, prefix: str) -> DurableStream:
    return DurableStream.create(f"{base_url}/{unique_name(prefix)}", content_type=content_type)


def _dispose(handle: DurableStream) -> None:
    try:
        handle.delete()  # keep the in-memory server small across repeats
    finally:
        handle.close()


def throughput(base_url: str, messages: list[Any], *, json_mode: bool, threads: int = 1,
               count_records: int | None = -1, **producer_options: Any) -> dict[str, Any]:
    """End to end: first ``append`` -> ``flush`` returns, from ``threads`` threads.

    The stream is created and the producer constructed before the clock starts (neither
    touches the producer path); sender threads start lazily inside the timed region.
    Afterwards the stream is read back (:func:`benchmarks._stored.check`): ``stored_ok``
    says whether exactly the messages sent are stored. ``count_records``: the expected
    message count (default ``len(messages)``; None: check bytes only, for messages that
    are not newline-terminated records).
    """
    if count_records == -1:
        count_records = len(messages)
    handle = _new_stream(base_url, JSON_TYPE if json_mode else BYTES_TYPE, "ours")
    producer = IdempotentProducer(handle, unique_name("p"), **producer_options)
    try:
        if threads == 1:
            append = producer.append
            t0 = time.perf_counter()
            for m in messages:
                append(m)
            producer.flush(timeout=300)
            elapsed = time.perf_counter() - t0
        else:
            slices = [messages[k::threads] for k in range(threads)]
            start = threading.Barrier(threads + 1)

            def worker(part: list[Any]) -> None:
                append = producer.append
                start.wait()
                for m in part:
                    append(m)

            workers = [threading.Thread(target=worker, args=(s,)) for s in slices]
            for w in workers:
                w.start()
            start.wait()
            t0 = time.perf_counter()
            for w in workers:
                w.join()
            producer.flush(timeout=300)
            elapsed = time.perf_counter() - t0
        stats = _stats_dict(producer)
        stored = check_stored(handle.url, messages=count_records,
                              nbytes=expected_bytes(messages, json_mode=json_mode))
    finally:
        producer.close(timeout=60)
        _dispose(handle)
    if stats["acked"] not in (-1, len(messages)) and stored["stored_ok"]:
        stored = {**stored, "stored_ok": False,
                  "stored": f"producer acknowledged {stats['acked']} of {len(messages)}"}
    nbytes = sum(len(m) for m in messages)
    return {"rate": len(messages) / elapsed, "bytes_per_s": nbytes / elapsed,
            "seconds": elapsed, **stats, **stored}


def ceiling(base_url: str, messages: list[Any], *, json_mode: bool,
            count_records: bool = True) -> dict[str, Any]:
    """The raw ceiling: the same messages as pre-built ~1 MiB bodies, POSTed by bare
    urllib3 over 1 and over 2 connections; the better of the two is the ceiling."""
    raw = [m.encode() if isinstance(m, str) else m for m in messages]
    bodies = batch_bodies(raw, json_mode=json_mode)
    ct = JSON_TYPE if json_mode else BYTES_TYPE
    nbytes = sum(len(m) for m in raw)
    out: dict[str, Any] = {"bodies": len(bodies)}
    checks = []
    for conns in (1, 2):
        expect: dict[str, Any] = {"messages": len(raw) if count_records else None,
                                  "nbytes": expected_bytes(raw, json_mode=json_mode)}
        elapsed = raw_ceiling(base_url, bodies, ct, connections=conns, expect=expect)
        checks.append(expect)
        out[f"rate_{conns}"] = len(raw) / elapsed
        out[f"bytes_per_s_{conns}"] = nbytes / elapsed
    best = 1 if out["rate_1"] >= out["rate_2"] else 2
    out.update(rate=out[f"rate_{best}"], bytes_per_s=out[f"bytes_per_s_{best}"],
               connections=best)
    bad = [c for c in checks if not c.get("stored_ok")]
    out.update(stored_ok=not bad, stored=bad[0]["stored"] if bad else "count verified")
    return out


class _MinimalBuffer:
    """The least a thread-safe ``append()`` method can do: a lock, a list, a byte count."""

    __slots__ = ("_lock", "_buf", "_bytes")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buf: list[Any] = []
        self._bytes = 0

    def append(self, data: Any) -> None:
        with self._lock:
            self._buf.append(data)
            self._bytes += len(data)


def python_floor(messages: list[Any]) -> dict[str, Any]:
    """The same messages through :class:`_MinimalBuffer` from one thread: no encoding, no
    batching, no I/O. It bounds what any thread-safe Python append API can reach end to end
    from one thread, whatever it does with the messages afterwards."""
    buffer = _MinimalBuffer()
    append = buffer.append
    t0 = time.perf_counter()
    for m in messages:
        append(m)
    elapsed = time.perf_counter() - t0
    return {"rate": len(messages) / elapsed, "seconds": elapsed}


def caller_cost(base_url: str, n: int, *, warmup: int = 5_000, chunk: int = 1_000
                ) -> dict[str, float]:
    """Microseconds per ``append()`` on the calling thread while the senders are busy.

    Every call is timed with ``perf_counter_ns`` (the median cost of an empty timer pair is
    reported and is included in the figures). The calls run back to back, so the sender
    threads are sending earlier batches the whole time. ``chunk_mean_us`` is the median over
    chunks of ``chunk`` untimed-per-call appends (total / count): the amortised cost with no
    timer in the loop.
    """
    messages = json_messages(n + warmup)
    handle = _new_stream(base_url, JSON_TYPE, "ours-cost")
    producer = IdempotentProducer(handle, unique_name("p"))
    pc = time.perf_counter_ns
    per_call = [0] * n
    chunk_means: list[float] = []
    try:
        append = producer.append
        for m in messages[:warmup]:  # starts the sender threads; they are now busy
            append(m)
        timed = messages[warmup:]
        half = n // 2
        for i in range(half):
            m = timed[i]
            t = pc()
            append(m)
            per_call[i] = pc() - t
        for start in range(half, n, chunk):
            part = timed[start:start + chunk]
            t = pc()
            for m in part:
                append(m)
            chunk_means.append((pc() - t) / len(part))
        producer.flush(timeout=300)
    finally:
        producer.close(timeout=60)
        _dispose(handle)
    calls = per_call[:half]
    return {
        "median_us": percentile(calls, 50) / 1e3,
        "p99_us": percentile(calls, 99) / 1e3,
        "max_us": max(calls) / 1e3,
        "chunk_mean_us": statistics.median(chunk_means) / 1e3 if chunk_means else float("nan"),
        "timer_us": timer_overhead_ns() / 1e3,
        "n": float(half),
    }


def low_rate_latency(base_url: str, n: int, *, gap_ms: tuple[float, float] = (5.0, 15.0),
                     warmup: int = 3) -> dict[str, dict[str, float]]:
    """Append -> acknowledged, one message at a time, with the default ``linger_ms``.

    ``linger``: the message is appended and the caller polls ``producer.last_offset``
    (a plain attribute read) every ~0.1 ms until it moves: the latency a background
    writer sees, linger included. ``flush``: ``append()`` then ``flush()`` (which seals at
    once, skipping the linger): what a caller that needs the ack waits. Between messages
    the caller idles a random 5-15 ms, so each message travels alone.
    """
    rng = random.Random(7)
    messages = json_messages(n + warmup)
    handle = _new_stream(base_url, JSON_TYPE, "ours-lat")
    producer = IdempotentProducer(handle, unique_name("p"))
    linger: list[float] = []
    flushed: list[float] = []
    pc = time.perf_counter
    try:
        for i, m in enumerate(messages):
            before = producer.last_offset
            t = pc()
            producer.append(m)
            deadline = t + 30
            while producer.last_offset == before:
                if pc() > deadline:
                    raise RuntimeError("no acknowledgement within 30 s")
                time.sleep(0.0001)
            if i >= warmup:
                linger.append(pc() - t)
            time.sleep(rng.uniform(*gap_ms) / 1e3)
        for i, m in enumerate(messages):
            t = pc()
            producer.append(m)
            producer.flush(timeout=30)
            if i >= warmup:
                flushed.append(pc() - t)
            time.sleep(rng.uniform(*gap_ms) / 1e3)
    finally:
        producer.close(timeout=60)
        _dispose(handle)
    return {"linger": latency_summary(linger), "flush": latency_summary(flushed)}


def blocking_append(base_url: str, n: int) -> dict[str, float]:
    """``DurableStream.append`` round trips, one 100-byte JSON message each."""
    messages = json_messages(n)
    handle = _new_stream(base_url, JSON_TYPE, "ours-rt")
    lat = []
    pc = time.perf_counter
    try:
        for m in messages:
            t = pc()
            handle.append(m)
            lat.append(pc() - t)
    finally:
        _dispose(handle)
    return latency_summary(lat)


def create_latency(base_url: str, n: int) -> dict[str, float]:
    """``DurableStream.create`` as users call it (no session passed: a new connection)."""
    lat = []
    pc = time.perf_counter
    for _ in range(n):
        url = f"{base_url}/{unique_name('ours-create')}"
        t = pc()
        handle = DurableStream.create(url, content_type=JSON_TYPE)
        lat.append(pc() - t)
        _dispose(handle)
    return latency_summary(lat)


def large_messages(base_url: str, n: int, size: int = MiB) -> dict[str, Any]:
    """``n`` messages of ``size`` bytes (bytes mode), end to end."""
    messages = [b"%08d" % i + b"z" * (size - 8) for i in range(n)]
    return throughput(base_url, messages, json_mode=False, count_records=None)


# -- standalone: the producer issue's figures ---------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("-n", type=int, default=None, help="messages (default 100,000)")
    parser.add_argument("--repeat", type=int, default=None, help="best of N (default 3)")
    args = parser.parse_args(argv)
    n = args.n or (10_000 if args.quick else 100_000)
    repeat = args.repeat or (1 if args.quick else 3)
    from durable_streams.testing import ReferenceServer

    scenario = f"Producer, JSON, {n:,} × 100 B"
    rows: list[Row] = []
    with ReferenceServer() as server:
        base = server.url
        messages = json_messages(n)
        best_ceiling: dict[str, Any] = {}
        best_ours: dict[str, Any] = {}
        for _ in range(repeat):  # interleaved, so both see the same background noise
            c = ceiling(base, messages, json_mode=True)
            if c["rate"] > best_ceiling.get("rate", 0):
                best_ceiling = c
            o = throughput(base, messages, json_mode=True)
            if o["rate"] > best_ours.get("rate", 0):
                best_ours = o
        progress(f"  ceiling {best_ceiling['rate']:,.0f} msg/s, ours {best_ours['rate']:,.0f}")
        rows.append(Row(scenario, f"raw ceiling (urllib3, {best_ceiling['bodies']} pre-built "
                        f"1 MiB bodies, {best_ceiling['connections']} conn)",
                        fmt_rate(best_ceiling["rate"], best_ceiling["bytes_per_s"])))
        rows.append(Row(scenario, "ours, 1 thread", fmt_rate(best_ours["rate"],
                        best_ours["bytes_per_s"]) + f"; {best_ours['requests']} requests"))
        rows.append(ratio_row(scenario, "ours ÷ raw ceiling",
                              best_ours["rate"] / best_ceiling["rate"], target=0.6))
        cost = caller_cost(base, min(n, 100_000))
        rows.append(Row("Caller cost of append()", "ours, µs per call (sender busy)",
                        f"median {cost['median_us']:.2f} µs · p99 {cost['p99_us']:.2f} µs "
                        f"(timer {cost['timer_us']:.2f} µs incl.; amortised "
                        f"{cost['chunk_mean_us']:.2f} µs)", "median ≤ 1 µs",
                        cost["median_us"] <= 1.0))
        lat = low_rate_latency(base, 20 if args.quick else 200)
        rows.append(Row("Latency, low rate", "ours, append → ack (default linger 5 ms)",
                        fmt_latency(lat["linger"])))
        rows.append(Row("Latency, low rate", "ours, append + flush()",
                        fmt_latency(lat["flush"])))
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
