"""The crash-safe journal's cost: journal off / on / on with fsync, bytes and JSON mode.

``python -m benchmarks.journal [N] [ROUNDS]`` (default 100,000 messages of 100 B, 3 rounds)
against a local reference server. Journal off and on run interleaved, ROUNDS times per mode
(which goes first alternates), each on a fresh stream: throughput (append all + flush) and
the caller cost of ``append()`` (median and p99). A figure is the median of its rounds; "x
off" is the median of the per-round ratios on ÷ off, with their range (the machine may be
shared: only ratios measured side by side mean anything). The fsync runs use N/10 messages
(one device flush per message), once per mode. Then the replay of N pending messages left
by a killed (``kill -9``) producer, checked delivered exactly once and in order.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import requests

from durable_streams import DurableStream, IdempotentProducer
from durable_streams.testing import ReferenceServer

from ._common import BYTES_TYPE, JSON_TYPE, bytes_messages, json_messages


def _run(url: str, msgs: list[str] | list[bytes], journal: str | None, fsync: bool
         ) -> tuple[float, float, float]:
    kw: dict[str, object] = {}
    if journal is not None:
        kw = {"journal": journal, "journal_fsync": fsync}
    p = IdempotentProducer(url, "bench", **kw)  # type: ignore[arg-type]
    costs = []
    clock = time.perf_counter_ns
    start = time.perf_counter()
    for m in msgs:
        t0 = clock()
        p.append(m)
        costs.append(clock() - t0)
    p.flush()
    elapsed = time.perf_counter() - start
    p.close()
    costs.sort()
    return (len(msgs) / elapsed, statistics.median(costs) / 1000,
            costs[int(len(costs) * 0.99)] / 1000)


_CHILD = """
import os, sys
from durable_streams import IdempotentProducer
p = IdempotentProducer(sys.argv[1], "bench", journal=sys.argv[2],
                       max_buffer_bytes=256 * 1024 ** 2)
for i in range(int(sys.argv[3])):
    p.append(b"%0100d" % i)
os.write(1, b"APPENDED\\n")
sys.stdin.readline()
"""


def _replay(server: ReferenceServer, n: int, root: str) -> float:
    """A child appends n messages while every POST gets a 503, and is killed (-9)."""
    url = server.stream_url()
    DurableStream.create(url, content_type=BYTES_TYPE).close()
    journal = os.path.join(root, "replay")
    server.inject_fault(url[len(server.url):], status=503, count=10**9, method="POST")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, url, journal, str(n)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    assert child.stdout is not None and child.stdout.readline() == b"APPENDED\n"
    child.kill()
    child.wait()
    server.clear_faults()
    start = time.perf_counter()
    with IdempotentProducer(url, "bench", journal=journal) as q:
        q.flush()
    elapsed = time.perf_counter() - start
    data = requests.get(url, params={"offset": "-1"}, timeout=60).content
    # every message exactly once, in order
    assert data == b"".join(b"%0100d" % i for i in range(n)), "replay lost or doubled"
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    root = tempfile.mkdtemp(prefix="ds-bench-journal-")
    rows = []
    try:
        with ReferenceServer() as server:
            def one(ctype: str, msgs: list[str] | list[bytes], journal: bool, fsync: bool
                    ) -> tuple[float, float, float]:
                url = server.stream_url()
                DurableStream.create(url, content_type=ctype).close()
                jdir = os.path.join(root, uuid.uuid4().hex) if journal else None
                return _run(url, msgs, jdir, fsync)

            for mode, ctype, msgs in (("bytes", BYTES_TYPE, bytes_messages(n)),
                                      ("json", JSON_TYPE, json_messages(n))):
                one(ctype, msgs[:n // 10], True, False)  # warm-up (not counted)
                off: list[tuple[float, float, float]] = []
                on: list[tuple[float, float, float]] = []
                for k in range(rounds):
                    for journal in ((False, True) if k % 2 == 0 else (True, False)):
                        (on if journal else off).append(one(ctype, msgs, journal, False))
                ratios = [b[0] / a[0] for a, b in zip(off, on, strict=True)]
                fs = one(ctype, msgs[:n // 10], True, True)
                for label, count, runs, rs in (
                        ("off", n, off, [1.0]), ("on", n, on, ratios),
                        ("on+fsync", n // 10, [fs], [fs[0] / _median(off, 0)])):
                    rows.append((mode, label, count, _median(runs, 0), rs, _median(runs, 1),
                                 _median(runs, 2)))
            replay = _replay(server, n, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{rounds} interleaved rounds of off/on per mode (figures: medians of rounds)")
    print(f"{'mode':6} {'journal':9} {'msgs':>7} {'msg/s':>9} {'x off':>6} {'(range)':>11} "
          f"{'median us':>9} {'p99 us':>7}")
    for mode, label, count, tput, rs, med, p99 in rows:
        span = f"{min(rs):.2f}-{max(rs):.2f}" if len(rs) > 1 else ""
        print(f"{mode:6} {label:9} {count:7d} {tput:9.0f} {statistics.median(rs):6.2f} "
              f"{span:>11} {med:9.2f} {p99:7.2f}")
    print(f"replay of {n} pending messages after a kill: {replay:.2f} s "
          f"({n / replay:.0f} msg/s)")


def _median(runs: list[tuple[float, float, float]], k: int) -> float:
    return statistics.median(r[k] for r in runs)


if __name__ == "__main__":
    main()
