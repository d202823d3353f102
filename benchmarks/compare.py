"""Before/after: the producer rows of this tree against another git revision, in one run.

    python3 benchmarks/compare.py REV            # e.g. REV = cc7b36c
    python3 -m benchmarks --against REV          # the same
    python3 benchmarks/compare.py REV --quick    # small sizes, a smoke test

REV is exported with ``git archive`` into a temporary directory and installed (``pip
install``; its dependencies requests and urllib3 pinned to the versions this interpreter
has, so only the library differs) into its own virtualenv,
``benchmarks/.venv-rev-<short>``, kept for the next run. Each side runs in its own worker
process (``_compare_worker.py``): "before" = REV from that virtualenv, "after" = this tree
(``PYTHONPATH``). Both run the current benchmark code, which uses only the public API
(``IdempotentProducer``, ``DurableStream``), so the producer's internals may differ freely.

Both talk to one reference server; rounds are interleaved (before, after, then after,
before, ...) so background load hits both sides alike. Rows: producer throughput (JSON and
bytes, 1 and 8 threads, 100,000 × 100 B), 50 × 1 MiB messages, ``append()`` caller cost,
and low-rate latency. Every throughput round reads its stream back: a side whose stored
count is wrong in any round is INVALID, and its ratio is not computed. Ratios are
"after ÷ before", the median of the per-round ratios; for speeds higher is better, for
times lower is better. Targets: no speed below 0.95× of before, no time above 1/0.95.

On a shared, loaded machine single rounds vary by ±50 %; an A/A run (``compare.py HEAD``
with a clean tree: the same library on both sides) shows how far apart identical code
lands, i.e. how much of a before/after difference is noise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

if __package__ in (None, ""):  # run as ``python3 benchmarks/compare.py``
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._common import (  # noqa: E402
    MiB,
    load_average,
    machine_summary,
    progress,
    utc_now,
)
from benchmarks._stored import verdict  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "_compare_worker.py")
SPEED_TARGET = 0.95
TIME_TARGET = 1 / SPEED_TARGET


class CompareError(Exception):
    """REV cannot be exported, installed or run; the message says which step failed."""


# -- the other revision's virtualenv -----------------------------------------------------
def _git(*args: str) -> str:
    proc = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CompareError(f"git {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
    return proc.stdout.strip()


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _dependency_pins() -> list[str]:
    """The HTTP stack this interpreter has (requests, urllib3), so both sides run on the
    same versions and only the library differs."""
    import importlib.metadata

    pins = []
    for name in ("requests", "urllib3"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            pins.append(f"{name}=={importlib.metadata.version(name)}")
    return pins


def ensure_rev_venv(rev: str) -> tuple[str, str, str]:
    """Export and install ``rev`` once; (python, full sha, short sha)."""
    sha = _git("rev-parse", "--verify", f"{rev}^{{commit}}")
    short = _git("rev-parse", "--short", sha)
    venv = os.path.join(HERE, f".venv-rev-{short}")
    python = os.path.join(venv, "bin", "python")
    marker = os.path.join(venv, ".installed-revision")
    pins = _dependency_pins()
    stamp = " ".join([sha, *pins])
    try:
        with open(marker) as f:
            if f.read().strip() == stamp and os.path.exists(python):
                return python, sha, short
    except OSError:
        pass
    progress(f"installing revision {short} into {venv} (git archive + pip install)")
    with tempfile.TemporaryDirectory(prefix=f"ds-rev-{short}-") as tmp:
        tar_path = os.path.join(tmp, "rev.tar")
        _git("archive", "--format=tar", "-o", tar_path, sha)
        src = os.path.join(tmp, "src")
        with tarfile.open(tar_path) as tar:
            try:
                tar.extractall(src, filter="data")
            except TypeError:  # Python < 3.11.4: no extraction filters (our own archive)
                tar.extractall(src)
        steps = [
            [sys.executable, "-m", "venv", "--clear", venv],
            [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", src, *pins],
        ]
        for cmd in steps:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                                  env=_clean_env(), cwd=tmp)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
                raise CompareError(f"{' '.join(cmd[:4])} failed: {' | '.join(tail)}")
    with open(marker, "w") as f:
        f.write(stamp + "\n")
    return python, sha, short


# -- a worker process per side -------------------------------------------------------------
class Side:
    """A long-lived worker process importing one revision of ``durable_streams``."""

    def __init__(self, name: str, label: str, python: str, env: dict[str, str]) -> None:
        self.name, self.label = name, label
        self.proc = subprocess.Popen([python, WORKER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env,
                                     cwd=tempfile.gettempdir())
        self.info: dict[str, Any] = {}

    def call(self, task: dict[str, Any]) -> dict[str, Any]:
        stdin: IO[str] | None = self.proc.stdin
        stdout: IO[str] | None = self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(json.dumps(task) + "\n")
        stdin.flush()
        for line in stdout:
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[7:])
                return result
        raise CompareError(f"{self.name} worker exited ({self.proc.wait()})")

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- rows ----------------------------------------------------------------------------------
@dataclass
class Metric:
    """One compared figure: where it comes from in a task's result and how to show it."""

    label: str
    task: dict[str, Any]
    pick: Callable[[dict[str, Any]], float]
    fmt: Callable[[float], str]
    higher_is_better: bool
    target: bool = True      # checked against SPEED_TARGET / TIME_TARGET
    verified: bool = False   # a throughput row: stored counts must be right


def _rate(r: dict[str, Any]) -> float:
    return float(r["rate"])


def _latency(key: str, field: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(r[key][field])


def metrics(quick: bool) -> list[Metric]:
    n = 10_000 if quick else 100_000
    large = 10 if quick else 50
    cost_n = 20_000 if quick else 100_000
    lat_n = 20 if quick else 200
    out: list[Metric] = []
    for mode, name in (("json", "JSON"), ("bytes", "bytes")):
        for threads in (1, 8):
            out.append(Metric(f"Producer, {name}, {n:,} × 100 B, {threads} thread"
                              f"{'s' if threads > 1 else ''} (msg/s)",
                              {"task": "throughput", "mode": mode, "n": n, "threads": threads},
                              _rate, lambda v: f"{v:,.0f} msg/s", True, verified=True))
    out.append(Metric(f"Large messages, bytes, {large} × 1 MiB (MiB/s)",
                      {"task": "large", "n": large}, lambda r: float(r["bytes_per_s"]) / MiB,
                      lambda v: f"{v:,.1f} MiB/s", True, verified=True))
    cost = {"task": "caller_cost", "n": cost_n}
    out.append(Metric("Caller cost of append(), median per call (µs, timer incl.)", cost,
                      lambda r: float(r["median_us"]), lambda v: f"{v:.3f} µs", False))
    out.append(Metric("Caller cost of append(), amortised per call (µs)", cost,
                      lambda r: float(r["chunk_mean_us"]), lambda v: f"{v:.3f} µs", False))
    lat = {"task": "latency", "n": lat_n}
    for key, what in (("linger", "append → ack (default linger)"),
                      ("flush", "append() + flush()")):
        out.append(Metric(f"Latency, low rate, {what}, p50 (ms)", lat,
                          _latency(key, "p50_ms"), lambda v: f"{v:.2f} ms",
                          False))
        out.append(Metric(f"Latency, low rate, {what}, p99 (ms)", lat,
                          _latency(key, "p99_ms"), lambda v: f"{v:.2f} ms",
                          False, target=False))
    return out


def _task_key(task: dict[str, Any]) -> str:
    return json.dumps(task, sort_keys=True)


def measure(sides: list[Side], url: str, tasks: list[tuple[dict[str, Any], int]]
            ) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Run each task ``rounds`` times per side, alternating which side goes first."""
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for task, rounds in tasks:
        key = _task_key(task)
        per_side = results.setdefault(key, {s.name: [] for s in sides})
        for r in range(rounds):
            order = sides if r % 2 == 0 else list(reversed(sides))
            for side in order:
                t0 = time.monotonic()
                result = side.call({**task, "url": url})
                per_side[side.name].append(result)
                status = result.get("error") or result.get("stored", "")
                progress(f"  {task['task']} {task.get('mode', '')} "
                         f"{task.get('threads', '')} round {r + 1}/{rounds} {side.name}: "
                         f"{time.monotonic() - t0:.1f} s {status}")
    return results


def _cell(m: Metric, results: list[dict[str, Any]]) -> tuple[str, list[float] | None]:
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        return f"failed: {errors[0]}", None
    if m.verified:
        bad = verdict(results)
        if bad is not None:
            return f"**INVALID**, not a result: {bad}", None
    values = [m.pick(r) for r in results]
    best = max(values) if m.higher_is_better else min(values)
    text = m.fmt(best) + (f" (best of {len(values)})" if len(values) > 1 else "")
    return text, values


def table(ms: list[Metric], results: dict[str, dict[str, list[dict[str, Any]]]],
          before: Side, after: Side) -> str:
    lines = [f"| Row | before: {before.label} | after: {after.label} | after ÷ before "
             "| Target | Met |", "|---|---|---|---|---|---|"]
    for m in ms:
        per_side = results[_task_key(m.task)]
        b_text, b_vals = _cell(m, per_side[before.name])
        a_text, a_vals = _cell(m, per_side[after.name])
        ratio_text, met_text = "n/a", ""
        target = (f"≥ {SPEED_TARGET:g}×" if m.higher_is_better else f"≤ {TIME_TARGET:.2f}×") \
            if m.target else ""
        if b_vals and a_vals:
            ratios = [a / b for a, b in zip(a_vals, b_vals, strict=True) if b]
            med = statistics.median(ratios)
            best = (max(a_vals) / max(b_vals)) if m.higher_is_better \
                else (min(a_vals) / min(b_vals))
            ratio_text = f"{med:.2f}×"
            if len(ratios) > 1:
                ratio_text += (f" (median of {len(ratios)} rounds, range {min(ratios):.2f}×–"
                               f"{max(ratios):.2f}×; best ÷ best {best:.2f}×)")
            if m.target:
                ok = med >= SPEED_TARGET if m.higher_is_better else med <= TIME_TARGET
                met_text = "yes" if ok else "**no**"
        lines.append(f"| {m.label} | {b_text} | {a_text} | {ratio_text} | {target} | "
                     f"{met_text} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 benchmarks/compare.py",
        description="Producer rows of this tree against git revision REV, in one run.")
    parser.add_argument("rev", metavar="REV", help="git revision to compare against (before)")
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="throughput rounds per side (default 7, quick 1)")
    parser.add_argument("--out", metavar="FILE", help="also write the markdown to FILE")
    args = parser.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 7)
    try:
        rev_python, sha, short = ensure_rev_venv(args.rev)
    except CompareError as exc:
        print(f"error: cannot prepare revision {args.rev!r}: {exc}", file=sys.stderr)
        return 2
    head = _git("rev-parse", "--short", "HEAD")
    dirty = " + uncommitted changes" if _git("status", "--porcelain", "--", ".") else ""
    after_env = {**_clean_env(), "PYTHONPATH": ROOT}
    ms = metrics(args.quick)
    tasks: list[tuple[dict[str, Any], int]] = []
    for m in ms:
        if all(_task_key(t) != _task_key(m.task) for t, _ in tasks):
            rounds = repeat if m.verified else max(1, min(repeat, 3))
            tasks.append((m.task, rounds))

    from durable_streams.testing import ReferenceServer

    started = time.monotonic()
    load_before = load_average()
    before = Side("before", f"`{short}` (.venv-rev-{short})", rev_python, _clean_env())
    after = Side("after", f"this tree (`{head}`{dirty})", sys.executable, after_env)
    try:
        for side in (before, after):
            side.info = side.call({"task": "hello"})
            progress(f"{side.name}: durable_streams from {side.info.get('file')}")
        with ReferenceServer() as server:
            results = measure([before, after], server.url, tasks)
    finally:
        before.close()
        after.close()
    elapsed = time.monotonic() - started
    command = "python3 benchmarks/compare.py " + " ".join(argv if argv is not None
                                                         else sys.argv[1:])
    text = "\n".join([
        f"Before/after, {utc_now()}: `{command}` ({elapsed:.0f} s)",
        "",
        f"- Machine: {machine_summary()}; load average {load_before} at start, "
        f"{load_average()} at end.",
        f"- before: revision `{sha}` installed in `benchmarks/.venv-rev-{short}` "
        f"(imports {before.info.get('file')}); after: this tree (imports "
        f"{after.info.get('file')}).",
        f"- Interleaved: {repeat} round(s) per throughput row, alternating which side goes "
        "first; figures are each side's best round (lowest for times); after ÷ before is the "
        "median of per-round ratios. Every throughput round's stored count is verified. "
        "Noise floor: an A/A run (REV = HEAD, clean tree) compares identical code.",
        "",
        "",
    ]) + table(ms, results, before, after)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
