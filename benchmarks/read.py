#!/usr/bin/env python3
"""Read benchmarks: catch-up throughput against a bare urllib3 loop, and live latency.

    python3 benchmarks/read.py [--messages 100000] [--repeat 5] [--samples 200]

1. Catch-up: a JSON stream holding ``--messages`` messages of about 100 bytes is read from
   the beginning with ``stream(url).iter_json()``, and with a bare loop (urllib3
   ``PoolManager.request`` + ``json.loads`` + iterating the items) in the same run. Runs
   alternate; the best run of each is reported (the median ratio too), with items/s and the
   ratio library/bare (target >= 0.9).
2. Live latency: a reader follows a stream with ``live="long-poll"`` and ``live="sse"``; the
   time from just before ``append()`` to the item reaching the reader's loop is measured
   ``--samples`` times, one message at a time (p50/p99, milliseconds).

It starts its own reference server. Another entry point can call :func:`run` with the URL of
a running server; it returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests
import urllib3

if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from durable_streams import DurableStream, stream  # noqa: E402
from durable_streams.reading import LiveMode  # noqa: E402

JSON = "application/json"


def _populate(url: str, messages: int) -> int:
    """Create a JSON stream with ``messages`` messages of ~100 bytes; return the body size."""
    session = requests.Session()
    session.put(url, headers={"Content-Type": JSON}, timeout=30).raise_for_status()
    batch = 2000
    for start in range(0, messages, batch):
        items = [
            {"id": i, "kind": "event", "user": f"user-{i % 97:02d}", "payload": "x" * 40,
             "ok": True}
            for i in range(start, min(start + batch, messages))
        ]
        body = json.dumps(items, separators=(",", ":")).encode()
        session.post(url, data=body, headers={"Content-Type": JSON},
                     timeout=30).raise_for_status()
    size = len(session.get(url, params={"offset": "-1"}, timeout=60).content)
    session.close()
    return size


def _bare_read(pool: urllib3.PoolManager, url: str) -> int:
    response = pool.request("GET", url + "?offset=-1")
    count = 0
    for _item in json.loads(response.data):
        count += 1
    return count


def _library_read(url: str, session: requests.Session) -> int:
    count = 0
    with stream(url, session=session) as res:
        for _item in res.iter_json():
            count += 1
    return count


def catch_up(url: str, messages: int, repeat: int) -> dict[str, Any]:
    body_bytes = _populate(url, messages)
    pool = urllib3.PoolManager()
    session = requests.Session()
    bare: list[float] = []
    library: list[float] = []
    # one warm-up each, then alternate so that drift affects both sides alike
    assert _bare_read(pool, url) == messages
    assert _library_read(url, session) == messages
    for _ in range(repeat):
        started = time.perf_counter()
        assert _bare_read(pool, url) == messages
        bare.append(time.perf_counter() - started)
        started = time.perf_counter()
        assert _library_read(url, session) == messages
        library.append(time.perf_counter() - started)
    pool.clear()
    session.close()
    # Best of N (as timeit does): the least disturbed run of each side. Medians are kept too.
    bare_s, lib_s = min(bare), min(library)
    return {
        "messages": messages,
        "body_bytes": body_bytes,
        "bare_seconds": bare_s,
        "library_seconds": lib_s,
        "bare_items_per_s": messages / bare_s,
        "library_items_per_s": messages / lib_s,
        "ratio": bare_s / lib_s,  # library throughput / bare throughput
        "median_ratio": statistics.median(bare) / statistics.median(library),
    }


def _percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def live_latency(base_url: str, live: LiveMode, samples: int) -> dict[str, Any]:
    url = f"{base_url}/bench-live-{uuid.uuid4().hex}"
    handle = DurableStream.create(url, content_type=JSON)
    delivered = threading.Condition()
    arrivals: list[float] = []
    ready = threading.Event()

    res = stream(url, offset="now", live=live)

    def at_least(count: int) -> Callable[[], bool]:
        return lambda: len(arrivals) >= count

    def follow() -> None:
        for batch in res.iter_json_batches():
            now = time.perf_counter()
            if batch.up_to_date:
                ready.set()
            if batch.items:
                with delivered:
                    arrivals.extend(now for _ in batch.items)
                    delivered.notify_all()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    if not ready.wait(10):
        raise RuntimeError(f"{live} reader did not catch up")
    latencies: list[float] = []
    for i in range(samples + 5):
        started = time.perf_counter()
        handle.append({"n": i})
        with delivered:
            if not delivered.wait_for(at_least(i + 1), 10):
                raise RuntimeError(f"{live}: message {i} was not delivered")
            latency = arrivals[i] - started
        if i >= 5:  # the first few warm up connections
            latencies.append(latency * 1000)
    handle.close_stream()
    reader.join(10)
    res.close()
    handle.close()
    return {
        "samples": len(latencies),
        "p50_ms": statistics.median(latencies),
        "p99_ms": _percentile(latencies, 99),
        "max_ms": max(latencies),
    }


def run(server_url: str, *, messages: int = 100_000, repeat: int = 5,
        samples: int = 200) -> dict[str, Any]:
    """Run every read benchmark against the server at ``server_url``; return the figures."""
    server_url = server_url.rstrip("/")
    results: dict[str, Any] = {
        "catch_up": catch_up(f"{server_url}/bench-read-{uuid.uuid4().hex}", messages, repeat),
    }
    results["latency_long_poll"] = live_latency(server_url, "long-poll", samples)
    results["latency_sse"] = live_latency(server_url, "sse", samples)
    return results


def _report(results: dict[str, Any]) -> None:
    c = results["catch_up"]
    print(f"catch-up read of {c['messages']:,} JSON messages ({c['body_bytes'] / 1e6:.1f} MB)")
    print(f"  bare urllib3 + json.loads : {c['bare_items_per_s']:>12,.0f} items/s "
          f"({c['bare_seconds'] * 1000:.1f} ms)")
    print(f"  stream().iter_json()      : {c['library_items_per_s']:>12,.0f} items/s "
          f"({c['library_seconds'] * 1000:.1f} ms)")
    print(f"  ratio library/bare        : {c['ratio']:.3f} best, {c['median_ratio']:.3f} median"
          "  (target >= 0.9)")
    for live in ("long_poll", "sse"):
        lat = results[f"latency_{live}"]
        print(f"live latency append -> delivery, {live.replace('_', '-')}: "
              f"p50 {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, "
              f"max {lat['max_ms']:.2f} ms ({lat['samples']} samples)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--server", help="URL of a running server (default: start one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.server:
        results = run(args.server, messages=args.messages, repeat=args.repeat,
                      samples=args.samples)
    else:
        from durable_streams.testing import ReferenceServer

        with ReferenceServer() as server:
            results = run(server.url, messages=args.messages, repeat=args.repeat,
                          samples=args.samples)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
