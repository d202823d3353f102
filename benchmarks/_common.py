"""Shared helpers for the benchmarks: messages, timing, the raw ceiling, the table.

This module imports only the standard library at the top (urllib3 is imported inside the
functions that need it), because ``_baseline_official.py`` also imports it from inside the
official client's virtualenv, where neither this project nor urllib3 is installed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

MiB = 1024 * 1024
JSON_TYPE = "application/json"
BYTES_TYPE = "application/octet-stream"


# -- messages ---------------------------------------------------------------------------
def json_object(i: int, size: int = 100) -> dict[str, Any]:
    """A dict whose ``json.dumps`` (default separators) is exactly ``size`` bytes."""
    head = len(json.dumps({"i": i, "pad": ""}))
    return {"i": i, "pad": "x" * max(size - head, 0)}


def json_messages(n: int, size: int = 100) -> list[str]:
    """``n`` JSON texts of ``size`` bytes: what a user passes to ``producer.append``."""
    return [json.dumps(json_object(i, size)) for i in range(n)]


def bytes_messages(n: int, size: int = 100) -> list[bytes]:
    """``n`` distinct byte messages of ``size`` bytes (newline-terminated records)."""
    out = []
    for i in range(n):
        head = b"%012d " % i
        out.append((head + b"y" * (size - len(head) - 1) + b"\n")[:size])
    return out


def batch_bodies(messages: Sequence[bytes], *, json_mode: bool, limit: int = MiB
                 ) -> list[bytes]:
    """Split messages into request bodies of at most ``limit`` bytes, as a producer would.

    JSON mode: ``[m1,m2,...]`` (the server flattens one level); bytes mode: concatenation.
    """
    bodies: list[bytes] = []
    chunk: list[bytes] = []
    size = 2 if json_mode else 0
    extra = 1 if json_mode else 0
    for m in messages:
        if chunk and size + len(m) + extra > limit:
            bodies.append(_join(chunk, json_mode))
            chunk, size = [], 2 if json_mode else 0
        chunk.append(m)
        size += len(m) + extra
    if chunk:
        bodies.append(_join(chunk, json_mode))
    return bodies


def _join(chunk: list[bytes], json_mode: bool) -> bytes:
    return b"[" + b",".join(chunk) + b"]" if json_mode else b"".join(chunk)


# -- statistics -------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted ``values``."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": percentile(seconds, 50) * 1e3,
        "p99_ms": percentile(seconds, 99) * 1e3,
        "mean_ms": statistics.fmean(seconds) * 1e3 if seconds else float("nan"),
        "n": float(len(seconds)),
    }


def timer_overhead_ns(samples: int = 20_000) -> float:
    """Median cost of an empty ``perf_counter_ns()`` pair (included in per-call timings)."""
    pc = time.perf_counter_ns
    out = []
    for _ in range(samples):
        t = pc()
        out.append(pc() - t)
    return float(percentile(out, 50))


# -- results and the table ------------------------------------------------------------
@dataclass
class Row:
    """One line of the table: an absolute figure, or a ratio checked against a target."""

    scenario: str
    what: str
    result: str
    target: str = ""
    met: bool | None = None
    #: numbers behind ``result`` (for --json and for computing ratios)
    data: dict[str, Any] = field(default_factory=dict)


def fmt_rate(msgs_per_s: float, bytes_per_s: float | None = None) -> str:
    text = f"{msgs_per_s:,.0f} msg/s"
    if bytes_per_s is not None:
        text += f" ({bytes_per_s / MiB:,.1f} MiB/s)"
    return text


def fmt_latency(summary: dict[str, float]) -> str:
    return (f"p50 {summary['p50_ms']:.2f} ms · p99 {summary['p99_ms']:.2f} ms "
            f"(n={int(summary['n'])})")


def ratio_row(scenario: str, what: str, value: float | None, *, target: float | None = None,
              lower_is_better: bool = False, reason: str = "",
              spread: Sequence[float] = ()) -> Row:
    """A ratio row; ``value`` None means a side of the ratio is unavailable. ``spread``: the
    per-round ratios ``value`` is the median of (shown as their range)."""
    if value is None:
        return Row(scenario, what, f"n/a ({reason})" if reason else "n/a",
                   _target_text(target, lower_is_better), None)
    met = None
    if target is not None:
        met = value <= target if lower_is_better else value >= target
    text = _times(value)
    if len(spread) > 1:
        text += (f" (median of {len(spread)} rounds, range {_times(min(spread))}"
                 f"–{_times(max(spread))})")
    return Row(scenario, what, text, _target_text(target, lower_is_better), met,
               {"ratio": value, "rounds": list(spread)})


def paired_ratio(num: Sequence[float], den: Sequence[float]) -> tuple[float, list[float]]:
    """Median of per-round ratios: rounds are interleaved, so a burst of background load
    that slows one round slows both sides of its ratio."""
    ratios = [a / b for a, b in zip(num, den, strict=True) if b]
    return statistics.median(ratios), ratios


def _times(value: float) -> str:
    return f"{value:,.2f}×" if value < 100 else f"{value:,.0f}×"


def _target_text(target: float | None, lower_is_better: bool) -> str:
    if target is None:
        return ""
    return f"{'≤' if lower_is_better else '≥'} {target:g}×"


def markdown_table(rows: Sequence[Row]) -> str:
    header = "| Scenario | What | Result | Target | Met |\n|---|---|---|---|---|\n"
    lines = []
    last = None
    for r in rows:
        scenario = r.scenario if r.scenario != last else ""
        last = r.scenario
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        cells = [scenario, r.what, r.result, r.target, met]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return header + "\n".join(lines) + "\n"


def machine_summary() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        mem = f", {pages / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        pass
    return (f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def progress(message: str) -> None:
    """Progress goes to stderr; stdout carries only the table."""
    print(message, file=sys.stderr, flush=True)


def best_of(repeat: int, fn: Callable[[], float]) -> float:
    """Run ``fn`` (returning a rate) ``repeat`` times; the best run is the least disturbed."""
    return max(fn() for _ in range(max(repeat, 1)))


def unique_name(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:12]}"


# -- the raw ceiling: bare urllib3 ------------------------------------------------------
class RawClient:
    """Bare urllib3 requests against the reference server (no library in between)."""

    def __init__(self, base_url: str, connections: int = 1) -> None:
        import urllib3

        rest = base_url.split("://", 1)[1]
        host, _, port = rest.partition(":")
        self.base_url = base_url
        self.pool = urllib3.HTTPConnectionPool(host, int(port or 80), maxsize=connections,
                                               block=True, retries=False)

    def create(self, path: str, content_type: str) -> None:
        r = self.pool.urlopen("PUT", path, headers={"content-type": content_type})
        if r.status not in (200, 201):
            raise RuntimeError(f"PUT {path}: HTTP {r.status}")

    def delete(self, path: str) -> None:
        self.pool.urlopen("DELETE", path)

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        return int(self.pool.urlopen("POST", path, body=body, headers=headers).status)

    def close(self) -> None:
        self.pool.close()


def raw_ceiling(base_url: str, bodies: Sequence[bytes], content_type: str, *,
                connections: int, expect: dict[str, Any] | None = None) -> float:
    """Seconds to POST pre-built ``bodies`` to a fresh stream over ``connections``
    connections (bodies dealt round-robin; each connection sends sequentially).

    Each connection sends as its own idempotent producer (Producer-Id/Epoch/Seq), so the
    server does the same work per request as for our producer's batches. ``expect``:
    ``{"messages": n, "nbytes": b}`` to read the stream back before it is deleted; the
    check's result (``stored_ok``, ...) is added to that dict.
    """
    path = "/" + unique_name("raw")
    client = RawClient(base_url, connections)
    client.create(path, content_type)
    errors: list[str] = []

    def worker(k: int) -> None:
        for seq, body in enumerate(bodies[k::connections]):
            status = client.post(path, body, {
                "content-type": content_type, "producer-id": f"raw-{k}",
                "producer-epoch": "0", "producer-seq": str(seq)})
            if status not in (200, 204):
                errors.append(f"HTTP {status}")
                return

    try:
        t0 = time.perf_counter()
        if connections == 1:
            worker(0)
        else:
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        elapsed = time.perf_counter() - t0
        if expect is not None:
            from benchmarks._stored import check

            expect.update(check(base_url + path, messages=expect.get("messages"),
                                nbytes=expect.get("nbytes")))
    finally:
        client.delete(path)
        client.close()
    if errors:
        raise RuntimeError(f"raw ceiling POST failed: {errors[0]}")
    return elapsed


def raw_roundtrips(base_url: str, n: int, *, json_mode: bool, size: int = 100
                   ) -> tuple[list[float], list[float]]:
    """Blocking single-message POST round trips and PUT creates over bare urllib3."""
    ct = JSON_TYPE if json_mode else BYTES_TYPE
    client = RawClient(base_url)
    path = "/" + unique_name("raw-rt")
    client.create(path, ct)
    body = (b"[" + json_messages(1, size)[0].encode() + b"]") if json_mode \
        else bytes_messages(1, size)[0]
    appends = []
    creates = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            status = client.post(path, body, {"content-type": ct})
            appends.append(time.perf_counter() - t0)
            if status not in (200, 204):
                raise RuntimeError(f"raw POST: HTTP {status}")
        for _ in range(n):
            p = "/" + unique_name("raw-create")
            t0 = time.perf_counter()
            client.create(p, ct)
            creates.append(time.perf_counter() - t0)
            client.delete(p)
    finally:
        client.delete(path)
        client.close()
    return appends, creates


# -- the official client's virtualenv ---------------------------------------------------
OFFICIAL_PACKAGE = "durable-streams"
OFFICIAL_VERSION = "0.1.0"
HERE = os.path.dirname(os.path.abspath(__file__))
OFFICIAL_VENV = os.path.join(HERE, ".venv-official")


class BaselineUnavailable(Exception):
    """The official client could not be installed or failed; the row says why."""


class OfficialClient:
    """The released official Python client, in its own virtualenv, run in a subprocess."""

    def __init__(self, venv: str = OFFICIAL_VENV) -> None:
        self.venv = venv
        self.python = os.path.join(venv, "bin", "python")
        self._ready: bool | None = None
        self._reason = ""

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        return env

    def ensure(self) -> None:
        """Create the virtualenv and install the pinned release once; raise if impossible."""
        import subprocess

        if self._ready:
            return
        if self._ready is False:
            raise BaselineUnavailable(self._reason)
        probe = [self.python, "-c",
                 "import importlib.metadata as m; print(m.version('durable-streams'))"]
        try:
            if os.path.exists(self.python):
                out = subprocess.run(probe, capture_output=True, text=True, timeout=60,
                                     env=self._env())
                if out.returncode == 0 and out.stdout.strip() == OFFICIAL_VERSION:
                    self._ready = True
                    return
            progress(f"  installing {OFFICIAL_PACKAGE}=={OFFICIAL_VERSION} into {self.venv}")
            steps = [
                [sys.executable, "-m", "venv", "--clear", self.venv],
                [self.python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
                 f"{OFFICIAL_PACKAGE}=={OFFICIAL_VERSION}"],
            ]
            for cmd in steps:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                                      env=self._env())
                if proc.returncode != 0:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                    raise BaselineUnavailable(f"{' '.join(cmd[:4])} failed: {tail[0]}")
            out = subprocess.run(probe, capture_output=True, text=True, timeout=60,
                                 env=self._env())
            if out.stdout.strip() != OFFICIAL_VERSION:
                raise BaselineUnavailable(f"installed version is {out.stdout.strip()!r}")
        except BaselineUnavailable as exc:
            self._ready, self._reason = False, str(exc)
            raise
        except (OSError, subprocess.SubprocessError) as exc:
            self._ready, self._reason = False, f"{type(exc).__name__}: {exc}"
            raise BaselineUnavailable(self._reason) from exc
        self._ready = True

    def run(self, task: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        """Run one task of ``_baseline_official.py`` in the venv; return its result dict."""
        import subprocess

        self.ensure()
        script = os.path.join(HERE, "_baseline_official.py")
        try:
            proc = subprocess.run([self.python, script, json.dumps(task)], capture_output=True,
                                  text=True, timeout=timeout, env=self._env(), cwd=HERE)
        except subprocess.TimeoutExpired as exc:
            raise BaselineUnavailable(f"official client task timed out after {timeout:.0f}s"
                                      ) from exc
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[7:])
                if "error" in result:
                    raise BaselineUnavailable(f"official client failed: {result['error']}")
                return result
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BaselineUnavailable(f"official client exited {proc.returncode}: {tail}")
