"""Blocking calls: ours against a bare kept-alive urllib3 request and the official client.

    python3 -m benchmarks.blocking               # own server, 400 calls each, official too
    python3 -m benchmarks.blocking --n 200 --no-official
    python3 -m benchmarks --scenario blocking    # the same rows inside the full table

For each call (create, append 100 B, head, small catch-up read) ours and bare urllib3 run
interleaved, one call each in turn, in one process against one server; the figures are
p50 wall time and mean client CPU per call (``time.thread_time`` around the call: the
server is another process). Then append → delivered to a waiting long-poll reader and to an
SSE reader (each side with its own reader on its own stream, deliveries interleaved; wall
p50, process CPU per message for both threads, the ratio as the median over blocks of 20
pairs), and the producer's
append → acknowledged latency at a low rate (one message, then ``flush()``, every 20 ms;
the first message of a fresh producer is reported on its own). The official client runs
the four basic calls in its own virtualenv (``_blocking_official.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):  # run as ``python3 benchmarks/blocking.py``
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (  # noqa: E402
    BaselineUnavailable,
    OfficialClient,
    Row,
    percentile,
    progress,
    ratio_row,
    unique_name,
)

TARGET = 1.3
CT = "application/octet-stream"
BODY = b"x" * 100
SCENARIO = "Blocking calls"


class _Raw:
    """Bare urllib3 on one kept-alive connection."""

    def __init__(self, base_url: str) -> None:
        import urllib3

        host, _, port = base_url.split("://", 1)[1].partition(":")
        self.pool = urllib3.HTTPConnectionPool(host, int(port or 80), maxsize=2,
                                               retries=False)

    def call(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Any:
        r = self.pool.urlopen(method, path, body=body, headers=headers)
        if r.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {r.status}")
        return r


def _measure(fn: Callable[[], object]) -> tuple[float, float]:
    c0, t0 = time.thread_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.thread_time() - c0


def _stats(samples: list[tuple[float, float]]) -> dict[str, float]:
    walls = [w for w, _ in samples]
    return {"p50_ms": percentile(walls, 50) * 1e3,
            "cpu_ms": sum(c for _, c in samples) / max(len(samples), 1) * 1e3,
            "n": float(len(samples))}


def basic_calls(base_url: str, n: int) -> dict[str, dict[str, dict[str, float]]]:
    """create / append / head / small read, ours and urllib3 interleaved."""
    from durable_streams import DurableStream

    raw = _Raw(base_url)
    path = "/" + unique_name("blk")
    url = base_url + path
    raw.call("PUT", path, headers={"content-type": CT})
    small = "/" + unique_name("blk-small")
    raw.call("PUT", small, headers={"content-type": CT})
    for _ in range(5):
        raw.call("POST", small, BODY, {"content-type": CT})
    handle = DurableStream(url, content_type=CT)
    reader = DurableStream(base_url + small, content_type=CT)
    results: dict[str, dict[str, list[tuple[float, float]]]] = {}

    def add(name: str, who: str, sample: tuple[float, float]) -> None:
        results.setdefault(name, {}).setdefault(who, []).append(sample)

    def ours_create() -> None:
        DurableStream.create(f"{base_url}/{unique_name('blk-c')}", content_type=CT).close()

    def raw_create() -> None:
        raw.call("PUT", f"/{unique_name('blk-c')}", headers={"content-type": CT})

    calls: list[tuple[str, Callable[[], object], Callable[[], object]]] = [
        ("create", ours_create, raw_create),
        ("append 100 B", lambda: handle.append(BODY),
         lambda: raw.call("POST", path, BODY, {"content-type": CT})),
        ("head", handle.head, lambda: raw.call("HEAD", path)),
        ("small catch-up read", lambda: reader.stream().read_bytes(),
         lambda: raw.call("GET", small + "?offset=-1").data),
    ]
    for _ in range(max(n // 20, 5)):  # warm-up
        for _name, ours, bare in calls:
            ours()
            bare()
    for i in range(n):
        for name, ours, bare in calls:
            first, second = (ours, bare) if i % 2 else (bare, ours)
            s1, s2 = _measure(first), _measure(second)
            add(name, "ours", s1 if first is ours else s2)
            add(name, "urllib3", s2 if first is ours else s1)
    handle.close()
    reader.close()
    return {name: {who: _stats(s) for who, s in by.items()} for name, by in results.items()}


class _Reader:
    """A reader waiting on its own stream in ``live`` mode: ours or bare urllib3."""

    def __init__(self, base_url: str, live: str, who: str) -> None:
        from durable_streams import DurableStream

        self.raw = _Raw(base_url)
        self.path = "/" + unique_name(f"blk-{live}")
        self.raw.call("PUT", self.path, headers={"content-type": CT})
        self.live, self.who = live, who
        self.got = threading.Event()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.handle = DurableStream(base_url + self.path, content_type=CT)
        target = self._ours if who == "ours" else self._bare
        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _ours(self) -> None:
        with self.handle.stream(offset="now", live=self.live) as res:  # type: ignore[arg-type]
            self.ready.set()
            for _chunk in res.iter_bytes():
                if self.stop.is_set():
                    break
                self.got.set()

    def _bare(self) -> None:
        path = self.path
        offset = self.raw.call("HEAD", path).headers["Stream-Next-Offset"]
        self.ready.set()
        if self.live == "sse":
            r = self.raw.pool.urlopen("GET", f"{path}?offset={offset}&live=sse",
                                      preload_content=False)
            pending = b""
            while not self.stop.is_set():
                data = r.read1(65536)
                if not data:
                    break
                pending += data
                # A client knows where to resume only with the control event after the data.
                at = pending.find(b"event: data")
                if at >= 0 and pending.find(b"event: control", at) >= 0:
                    pending = b""
                    self.got.set()
            r.release_conn()
            return
        while not self.stop.is_set():
            r = self.raw.call("GET", f"{path}?offset={offset}&live=long-poll")
            offset = r.headers.get("Stream-Next-Offset", offset)
            if r.status == 200 and r.data:
                self.got.set()

    def deliver(self) -> float:
        self.got.clear()
        t0 = time.perf_counter()
        if self.who == "ours":
            self.handle.append(BODY)
        else:
            self.raw.call("POST", self.path, BODY, {"content-type": CT})
        if not self.got.wait(10):
            raise RuntimeError(f"{self.who} {self.live} reader got nothing within 10 s")
        return time.perf_counter() - t0

    def close(self) -> None:
        self.stop.set()
        self.raw.call("POST", self.path, BODY, {"content-type": CT})  # wake it
        self.thread.join(10)
        self.handle.close()


def deliveries(base_url: str, n: int, live: str) -> dict[str, dict[str, float]]:
    """append → delivered to a reader waiting in ``live`` mode, ours and bare urllib3
    interleaved (each reader waits on its own stream; one delivery at a time)."""
    readers = {who: _Reader(base_url, live, who) for who in ("ours", "urllib3")}
    time.sleep(0.05)  # let the readers' first requests reach the server
    walls: dict[str, list[float]] = {who: [] for who in readers}
    cpu: dict[str, float] = dict.fromkeys(readers, 0.0)
    try:
        for i in range(n):
            for who in (("ours", "urllib3") if i % 2 else ("urllib3", "ours")):
                c0 = time.process_time()
                walls[who].append(readers[who].deliver())
                cpu[who] += time.process_time() - c0
                time.sleep(0.002)  # the reader is waiting again
    finally:
        for reader in readers.values():
            reader.close()
    out = {who: {"p50_ms": percentile(w, 50) * 1e3, "cpu_ms": cpu[who] / n * 1e3,
                 "n": float(n)} for who, w in walls.items()}
    # The ratio is the median of per-block ratios (blocks of 20 pairs): a burst of load
    # from other processes slows both sides of a block alike.
    blocks = [(percentile(walls["ours"][i:i + 20], 50), percentile(walls["urllib3"][i:i + 20], 50))
              for i in range(0, n - 19, 20)] or [(out["ours"]["p50_ms"], out["urllib3"]["p50_ms"])]
    out["ours"]["ratio"] = statistics.median(a / b for a, b in blocks)
    return out


def producer_latency(base_url: str, n: int, who: str) -> dict[str, float]:
    """Producer append → acknowledged (``flush()`` returns), one message every 20 ms."""
    from durable_streams import IdempotentProducer

    raw = _Raw(base_url)
    path = "/" + unique_name("blk-prod")
    raw.call("PUT", path, headers={"content-type": CT})
    walls: list[float] = []
    first = 0.0
    c0 = time.process_time()
    if who == "ours":
        t0 = time.perf_counter()
        with IdempotentProducer(base_url + path, unique_name("p"), content_type=CT) as p:
            p.append(BODY)
            p.flush()
            first = time.perf_counter() - t0
            for _ in range(n):
                time.sleep(0.02)
                t0 = time.perf_counter()
                p.append(BODY)
                p.flush()
                walls.append(time.perf_counter() - t0)
    else:
        pid = unique_name("raw")
        for seq in range(n + 1):
            if seq:
                time.sleep(0.02)
            t0 = time.perf_counter()
            raw.call("POST", path, BODY, {"content-type": CT, "producer-id": pid,
                                          "producer-epoch": "0", "producer-seq": str(seq)})
            (walls.append(time.perf_counter() - t0) if seq else None)
            if not seq:
                first = time.perf_counter() - t0
    cpu = (time.process_time() - c0) / (n + 1)
    return {"p50_ms": percentile(walls, 50) * 1e3, "cpu_ms": cpu * 1e3, "n": float(n),
            "first_ms": first * 1e3}


def official_calls(official: OfficialClient, base_url: str, n: int) -> dict[str, Any]:
    official.ensure()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_blocking_official.py")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([official.python, script, json.dumps({"url": base_url, "n": n})],
                          capture_output=True, text=True, timeout=600, env=env,
                          cwd=os.path.dirname(script))
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            if "error" in result:
                raise BaselineUnavailable(result["error"])
            return result
    raise BaselineUnavailable((proc.stderr.strip().splitlines() or ["no output"])[-1])


def _fmt(s: dict[str, float] | None) -> str:
    if s is None:
        return "—"
    return f"{s['p50_ms']:.2f} ms, CPU {s['cpu_ms']:.2f} ms"


def measure(base_url: str, *, n: int = 400, official: OfficialClient | None = None
            ) -> list[Row]:
    rows: list[Row] = []
    progress(f"  basic calls × {n}")
    basic = basic_calls(base_url, n)
    off: dict[str, Any] = {}
    off_reason = "official client not run"
    if official is not None:
        try:
            off = official_calls(official, base_url, n)
        except (BaselineUnavailable, OSError, subprocess.SubprocessError) as exc:
            off_reason = f"official client unavailable: {exc}"
    for name, by in basic.items():
        ours, bare = by["ours"], by["urllib3"]
        o = off.get(name)
        text = (f"ours {_fmt(ours)} · urllib3 {_fmt(bare)} · official "
                f"{_fmt(o) if o else off_reason}")
        rows.append(Row(SCENARIO, f"{name}: p50, client CPU/call", text,
                        data={"ours": ours, "urllib3": bare, "official": o}))
        rows.append(ratio_row(SCENARIO, f"{name}: p50 ours ÷ urllib3",
                              ours["p50_ms"] / bare["p50_ms"], target=TARGET,
                              lower_is_better=True))
        rows[-1].result += f"; CPU {ours['cpu_ms'] / bare['cpu_ms']:.2f}×"
    count_live = max(n // 2, 20)
    for live in ("long-poll", "sse"):
        progress(f"  append → delivered ({live}) × {count_live}")
        both = deliveries(base_url, count_live, live)
        ours, bare = both["ours"], both["urllib3"]
        rows.append(Row(SCENARIO, f"append → delivered to a {live} reader: p50, process CPU",
                        f"ours {_fmt(ours)} · urllib3 {_fmt(bare)}",
                        data={"ours": ours, "urllib3": bare}))
        rows.append(ratio_row(SCENARIO, f"append → {live} delivery: p50 ours ÷ urllib3 "
                              "(median of 20-pair blocks)", ours["ratio"], target=TARGET,
                              lower_is_better=True))
    count = max(n // 8, 20)
    progress(f"  producer at a low rate × {count}")
    ours = producer_latency(base_url, count, "ours")
    bare = producer_latency(base_url, count, "urllib3")
    rows.append(Row(SCENARIO, "producer, 1 msg per 20 ms: append → acked p50, CPU/msg",
                    f"ours {_fmt(ours)} (first message {ours['first_ms']:.2f} ms) · urllib3 "
                    f"POST {_fmt(bare)} (first {bare['first_ms']:.2f} ms)",
                    data={"ours": ours, "urllib3": bare}))
    rows.append(ratio_row(SCENARIO, "producer append → acked: p50 ours ÷ urllib3",
                          ours["p50_ms"] / bare["p50_ms"]))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.blocking",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=400, help="calls per subject (default 400)")
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--url", help="an already running server's base URL")
    args = parser.parse_args(argv)
    from benchmarks._common import markdown_table
    from durable_streams.testing import ReferenceServer

    official = None if args.no_official else OfficialClient()
    if args.url:
        rows = measure(args.url, n=args.n, official=official)
    else:
        with ReferenceServer() as server:
            rows = measure(server.url, n=args.n, official=official)
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
