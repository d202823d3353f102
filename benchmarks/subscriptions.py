#!/usr/bin/env python3
"""Pull-wake benchmarks: append-to-processed latency and a burst through one worker.

    python3 benchmarks/subscriptions.py [--samples 50] [--burst 2000]

1. Latency: one worker follows a subscription with ``Subscription.claims()``; a message is
   appended, and the time until the worker's loop has read it (wake written by the server,
   long-poll on the wake stream, claim, catch-up read) is measured ``--samples`` times.
2. Burst: ``--burst`` messages over 4 streams, then one worker claims, reads and acks them;
   the time and the number of claims it took are reported.

It starts its own reference server (subscriptions see streams under ``/v1/stream/``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from durable_streams import DurableStream, IdempotentProducer, Subscription  # noqa: E402
from durable_streams.testing import ReferenceServer  # noqa: E402

JSON = "application/json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--burst", type=int, default=2000)
    args = parser.parse_args(argv)
    with ReferenceServer() as server:
        root = f"{server.url}/v1/stream"
        ns = "bench" + uuid.uuid4().hex[:8]
        DurableStream.create(f"{root}/{ns}/wake", content_type=JSON).close()
        sub = Subscription.create(root, ns, pattern=f"{ns}/orders/*", wake_stream=f"{ns}/wake",
                                  lease_ttl_ms=5000)
        handle = DurableStream.create(f"{root}/{ns}/orders/a", content_type=JSON)
        sent: dict[int, float] = {}
        latencies: list[float] = []
        loop = sub.claims("bench", stop_after=120)
        following = threading.Event()

        def worker() -> None:
            following.set()
            for claim in loop:
                with claim:
                    for linked in claim.pending:
                        with claim.read(linked.path) as r:
                            for item in r.iter_json():
                                latencies.append(time.perf_counter() - sent[item])
                        claim.ack({linked.path: r.offset})

        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        following.wait()
        for i in range(args.samples):
            before = len(latencies)
            sent[i] = time.perf_counter()
            handle.append(i)
            deadline = time.monotonic() + 10
            while len(latencies) == before and time.monotonic() < deadline:
                time.sleep(0.0005)
        loop.stop()
        thread.join(10)
        ms = sorted(x * 1000 for x in latencies)
        print(f"latency append->processed ({len(ms)} samples): median "
              f"{statistics.median(ms):.1f} ms, p90 {ms[int(len(ms) * 0.9)]:.1f} ms, "
              f"max {ms[-1]:.1f} ms")

        per_stream = args.burst // 4
        for j in range(4):
            url = f"{root}/{ns}/orders/burst{j}"
            DurableStream.create(url, content_type=JSON).close()
            with IdempotentProducer(url, f"bench-{j}") as producer:
                for i in range(per_stream):
                    producer.append(json.dumps({"i": i}))
        started = time.perf_counter()
        done = claims = 0
        for claim in sub.claims("burst", stop_after=60):
            claims += 1
            with claim:
                for linked in claim.pending:
                    with claim.read(linked.path) as r:
                        done += len(r.read_json())
                    claim.ack({linked.path: r.offset})
            if done >= per_stream * 4:
                break
        took = time.perf_counter() - started
        print(f"burst: {done} messages on 4 streams processed by one worker in {took:.3f} s "
              f"({done / took:,.0f} msg/s) with {claims} claim(s)")
        sub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
