"""Side-by-side benchmarks: our client against baselines, in one run, on one server.

    python3 -m benchmarks                       # full run (about a minute on 2 cores)
    python3 -m benchmarks --quick               # small sizes, a smoke test (< 60 s)
    python3 -m benchmarks --scenario producer   # only scenarios whose name contains this
    python3 -m benchmarks --no-official         # skip the official client's rows
    python3 -m benchmarks --out results.md      # also write the table to a file
    python3 -m benchmarks --no-ts               # skip the TypeScript client's rows
    python3 -m benchmarks --against REV         # before/after against a git revision

It starts the pinned reference server (``durable_streams.testing.ReferenceServer``, in
memory, loopback), then for each scenario measures our client and its baselines:

- the raw ceiling: the same messages as pre-built ~1 MiB bodies POSTed by a bare urllib3
  loop (1 connection, and 2 connections; the better one counts);
- the released official Python client (PyPI ``durable-streams`` 0.1.0), installed by this
  runner into ``benchmarks/.venv-official`` and run there in a subprocess
  (``_baseline_official.py``). If it cannot be installed or fails, its rows say why;
- the official TypeScript client (npm ``@durable-streams/client``, pinned in
  ``benchmarks/ts_client/``, installed there by ``npm ci``), its ``IdempotentProducer``
  with default options (``_ts_baseline.py``); skipped with a note when Node/npm is absent.

Every throughput round reads its stream back and checks the stored count
(``_stored.py``); a row with a wrong count is marked INVALID instead of a figure.

Progress goes to stderr; stdout gets one markdown table of absolute figures and ratios,
with the targets the project set itself.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

if __package__ in (None, ""):  # run as ``python3 benchmarks/run.py``
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import blocking  # noqa: E402
from benchmarks import producer as ours  # noqa: E402
from benchmarks._common import (  # noqa: E402
    OFFICIAL_VERSION,
    BaselineUnavailable,
    MiB,
    OfficialClient,
    Row,
    bytes_messages,
    fmt_latency,
    fmt_rate,
    json_messages,
    load_average,
    machine_summary,
    markdown_table,
    progress,
    ratio_row,
    utc_now,
)
from benchmarks._rounds import Rounds, checks_verdict  # noqa: E402
from benchmarks._ts_baseline import TS_PACKAGE, TS_VERSION, TsClient  # noqa: E402

TARGET_JSON = 0.6
TARGET_BYTES = 0.8
TARGET_VS_SYNC = 100.0
TARGET_VS_ASYNC = 1.5
TARGET_VS_TS = 1.0
TARGET_APPEND_US = 1.0
TARGET_READS = 0.9


@dataclass
class Sizes:
    messages: int
    official_sync: int
    large: int
    caller_cost: int
    latency: int
    roundtrips: int
    creates: int
    repeat: int
    async_patterns: list[tuple[str, int]] = field(default_factory=list)
    ts_warmup: int = 10_000  # untimed messages the TypeScript client sends first (JIT)

    @classmethod
    def for_mode(cls, quick: bool, repeat: int | None) -> Sizes:
        patterns = [("gather", 200), ("window", 200)]
        if quick:
            return cls(10_000, 200, 10, 20_000, 20, 50, 10, repeat or 1, patterns, 1_000)
        return cls(100_000, 2_000, 50, 100_000, 200, 500, 100, repeat or 5, patterns)


@dataclass
class Context:
    base_url: str
    sizes: Sizes
    quick: bool
    official: OfficialClient | None
    official_reason: str = ""
    ts: TsClient | None = None
    ts_reason: str = ""

    def run_official(self, task: dict[str, Any]) -> dict[str, Any]:
        """A baseline task in the official client's venv; BaselineUnavailable with the reason
        when skipped, not installable, or failing."""
        if self.official is None:
            raise BaselineUnavailable(self.official_reason or "skipped (--no-official)")
        return self.official.run({"url": self.base_url, **task})


def _official_row(scenario: str, what: str, ctx: Context, task: dict[str, Any],
                  render: Callable[[dict[str, Any]], tuple[str, dict[str, Any]]]
                  ) -> tuple[Row, dict[str, Any] | None]:
    try:
        result = ctx.run_official(task)
    except BaselineUnavailable as exc:
        progress(f"  {what}: unavailable: {exc}")
        return Row(scenario, what, f"unavailable: {exc}"), None
    text, data = render(result)
    progress(f"  {what}: {text}")
    return Row(scenario, what, text, data=data), data


# -- scenarios ----------------------------------------------------------------------------
def scenario_producer(ctx: Context, *, json_mode: bool) -> list[Row]:
    s = ctx.sizes
    mode = "json" if json_mode else "bytes"
    target = TARGET_JSON if json_mode else TARGET_BYTES
    scenario = f"Producer, {'JSON' if json_mode else 'bytes'}, {s.messages:,} × 100 B"
    messages: list[Any] = json_messages(s.messages) if json_mode else bytes_messages(s.messages)
    rounds = Rounds()
    if ctx.ts is None:
        rounds.unavailable["ts"] = ctx.ts_reason or "skipped (--no-ts)"
    ts = ctx.ts
    for r in range(s.repeat):  # interleaved rounds: each subject sees the same noise
        rounds.keep("ceiling", ours.ceiling(ctx.base_url, messages, json_mode=json_mode))
        rounds.keep("ours1", ours.throughput(ctx.base_url, messages, json_mode=json_mode))
        rounds.keep("ours8", ours.throughput(ctx.base_url, messages, json_mode=json_mode,
                                             threads=8))
        if json_mode:
            rounds.keep("novalidate", ours.throughput(ctx.base_url, messages, json_mode=True,
                                                      validate_json=False))
        if ts is not None:
            rounds.attempt("ts", lambda: ts.throughput(
                ctx.base_url, json_mode=json_mode, n=s.messages, warmup=s.ts_warmup))
        rounds.keep("floor", {**ours.python_floor(messages), "stored_ok": True})
        progress(f"  round {r + 1}/{s.repeat}: ceiling {rounds.best_so_far('ceiling')}, "
                 f"ours 1 thread {rounds.best_so_far('ours1')}, "
                 f"8 threads {rounds.best_so_far('ours8')}, "
                 f"TypeScript {rounds.best_so_far('ts')} msg/s (best so far)")
    rows = [rounds.row(scenario, "raw ceiling: urllib3, pre-built ~1 MiB bodies",
                       "ceiling", lambda c: fmt_rate(c["rate"], c["bytes_per_s"])
                       + f" ({c['bodies']} bodies; 1 conn {c['rate_1']:,.0f}, 2 conn "
                       f"{c['rate_2']:,.0f} msg/s)")]

    def render_async(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        bad = checks_verdict(result)
        if bad is not None:
            return f"**INVALID**, not a result: {bad}", {}
        rates = result["rates"]
        name = max(rates, key=rates.get)
        others = ", ".join(f"{k} {v:,.0f}" for k, v in rates.items() if k != name)
        text = fmt_rate(rates[name]) + f" ({name}" + (f"; {others}" if others else "") + ")"
        return text, {"rate": rates[name], "pattern": name}

    def render_sync(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        bad = checks_verdict(result)
        if bad is not None:
            return f"**INVALID**, not a result: {bad}", {}
        return fmt_rate(result["rate"]), {"rate": result["rate"]}

    async_row, async_data = _official_row(
        scenario, f"official {OFFICIAL_VERSION} AsyncDurableStream.append, asyncio.gather "
        "(best pattern)", ctx,
        {"task": "async_throughput", "mode": mode, "n": s.messages, "size": 100,
         "patterns": s.async_patterns, "repeat": s.repeat}, render_async)
    sync_row, sync_data = _official_row(
        scenario, f"official {OFFICIAL_VERSION} DurableStream.append loop "
        f"({s.official_sync:,} msgs)", ctx,
        {"task": "sync_append", "mode": mode, "n": s.official_sync, "size": 100}, render_sync)
    rows += [async_row, sync_row]
    rows.append(rounds.row(
        scenario, f"official TypeScript {TS_PACKAGE} {TS_VERSION} IdempotentProducer, "
        "default options (Node; fresh stream and producer id per round)", "ts",
        lambda t: fmt_rate(t["rate"], t["bytes_per_s"]) + f"; Node {t.get('node')}"))
    rows.append(rounds.row(scenario, "Python floor: an append() method doing only `with lock: "
                           "list.append(m)`, no I/O (bounds any thread-safe API from 1 thread)",
                           "floor", lambda f: fmt_rate(f["rate"])))
    labels = [("ours1", "ours, 1 thread"), ("ours8", "ours, 8 threads")]
    if json_mode:
        labels.append(("novalidate", "ours, 1 thread, validate_json=False"))
    for key, label in labels:
        rows.append(rounds.row(scenario, label, key, lambda o: fmt_rate(o["rate"], o[
            "bytes_per_s"]) + f"; {o['requests']} requests for {o['batches']} batches"))
    for key, label, tgt in (("ours1", "ours 1 thread", target),
                            ("ours8", "ours 8 threads", target),
                            ("novalidate", "ours 1 thread, validate_json=False", None),
                            ("floor", "Python floor", None)):
        if key in rounds.results:
            rows.append(rounds.ratio(scenario, f"{label} ÷ raw ceiling", key, "ceiling",
                                     target=tgt))
    rows.append(rounds.ratio(scenario, "ours 1 thread ÷ TypeScript client", "ours1", "ts",
                             target=TARGET_VS_TS))
    o1 = rounds.best("ours1") if rounds.valid("ours1") else None
    rows.append(ratio_row(scenario, "ours 1 thread ÷ official best async",
                          o1["rate"] / async_data["rate"] if o1 and async_data else None,
                          target=TARGET_VS_ASYNC, reason="a side is unavailable or invalid"))
    rows.append(ratio_row(scenario, "ours 1 thread ÷ official sync loop",
                          o1["rate"] / sync_data["rate"] if o1 and sync_data else None,
                          target=TARGET_VS_SYNC, reason="a side is unavailable or invalid"))
    return rows


def scenario_producer_json(ctx: Context) -> list[Row]:
    return scenario_producer(ctx, json_mode=True)


def scenario_producer_bytes(ctx: Context) -> list[Row]:
    return scenario_producer(ctx, json_mode=False)


def scenario_large(ctx: Context) -> list[Row]:
    s = ctx.sizes
    scenario = f"Large messages, bytes, {s.large} × 1 MiB"
    messages = [b"%08d" % i + b"z" * (MiB - 8) for i in range(s.large)]
    rounds = Rounds()
    for _ in range(s.repeat):
        rounds.keep("ceiling", ours.ceiling(ctx.base_url, messages, json_mode=False,
                                            count_records=False))
        rounds.keep("ours", ours.large_messages(ctx.base_url, s.large))
    progress(f"  ceiling {rounds.best('ceiling')['bytes_per_s'] / MiB:,.0f} MiB/s, "
             f"ours {rounds.best('ours')['bytes_per_s'] / MiB:,.0f}")

    def mib(result: dict[str, Any]) -> str:
        return f"{result['bytes_per_s'] / MiB:,.1f} MiB/s"

    rows = [rounds.row(scenario, "raw ceiling: urllib3, one 1 MiB body per POST", "ceiling",
                       lambda c: mib(c) + f" (1 conn {c['bytes_per_s_1'] / MiB:,.0f}, 2 conn "
                       f"{c['bytes_per_s_2'] / MiB:,.0f} MiB/s)")]

    def render_async(result: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        bad = checks_verdict(result)
        if bad is not None:
            return f"**INVALID**, not a result: {bad}", {}
        rates = result["rates"]
        name = max(rates, key=rates.get)
        return f"{rates[name]:,.1f} MiB/s ({name})", {"bytes_per_s": rates[name] * MiB}

    async_row, async_data = _official_row(
        scenario, f"official {OFFICIAL_VERSION} AsyncDurableStream.append, asyncio.gather", ctx,
        {"task": "async_throughput", "mode": "bytes", "n": s.large, "size": MiB,
         "patterns": [("gather", 200)], "repeat": s.repeat}, render_async)
    rows.append(async_row)
    rows.append(rounds.row(scenario, "ours", "ours",
                           lambda o: mib(o) + f"; {o['requests']} requests"))
    rows.append(rounds.ratio(scenario, "ours ÷ raw ceiling", "ours", "ceiling",
                             target=TARGET_BYTES))
    o = rounds.best("ours") if rounds.valid("ours") else None
    rows.append(ratio_row(scenario, "ours ÷ official async",
                          o["bytes_per_s"] / async_data["bytes_per_s"]
                          if o and async_data else None,
                          reason="a side is unavailable or invalid"))
    return rows


def scenario_caller_cost(ctx: Context) -> list[Row]:
    cost = ours.caller_cost(ctx.base_url, ctx.sizes.caller_cost)
    progress(f"  median {cost['median_us']:.2f} µs, p99 {cost['p99_us']:.2f} µs")
    return [Row("Caller cost of append()",
                f"ours, one thread appending 100 B JSON back to back, senders busy "
                f"({int(cost['n']):,} calls timed one by one)",
                f"median {cost['median_us']:.2f} µs · p99 {cost['p99_us']:.2f} µs "
                f"(incl. {cost['timer_us']:.2f} µs timer; amortised "
                f"{cost['chunk_mean_us']:.2f} µs/call)",
                f"median ≤ {TARGET_APPEND_US:g} µs", cost["median_us"] <= TARGET_APPEND_US,
                data=cost)]


def scenario_latency(ctx: Context) -> list[Row]:
    s = ctx.sizes
    rows: list[Row] = []
    sc = "Latency, low rate, 100 B JSON"
    lat = ours.low_rate_latency(ctx.base_url, s.latency)
    progress(f"  producer append→ack p50 {lat['linger']['p50_ms']:.2f} ms")
    rows.append(Row(sc, "ours producer, append → ack (default linger 5 ms; polls last_offset)",
                    fmt_latency(lat["linger"]), data=lat["linger"]))
    rows.append(Row(sc, "ours producer, append() + flush()", fmt_latency(lat["flush"]),
                    data=lat["flush"]))
    raw_append, raw_create = _raw_roundtrips(ctx)
    rt = ours.blocking_append(ctx.base_url, s.roundtrips)
    rows.append(Row(sc, "raw urllib3 POST round trip (floor)", fmt_latency(raw_append),
                    data=raw_append))
    off_sync_row, off_sync = _official_row(
        sc, f"official {OFFICIAL_VERSION} DurableStream.append round trip", ctx,
        {"task": "sync_append", "mode": "json", "n": s.roundtrips, "size": 100},
        lambda res: (fmt_latency(res["latency"]), res["latency"]))
    off_async_row, _ = _official_row(
        sc, f"official {OFFICIAL_VERSION} await AsyncDurableStream.append, one at a time", ctx,
        {"task": "async_latency", "n": s.roundtrips, "size": 100},
        lambda res: (fmt_latency(res["latency"]), res["latency"]))
    rows += [off_sync_row, off_async_row]
    rows.append(Row(sc, "ours DurableStream.append round trip", fmt_latency(rt), data=rt))
    rows.append(ratio_row(sc, "ours ÷ official blocking append, p50 (lower is better)",
                          rt["p50_ms"] / off_sync["p50_ms"] if off_sync else None,
                          reason="official unavailable"))
    sc = "Create a stream"
    cr = ours.create_latency(ctx.base_url, s.creates)
    rows.append(Row(sc, "raw urllib3 PUT, kept-alive connection (floor)",
                    fmt_latency(raw_create), data=raw_create))
    off_cr_row, off_cr = _official_row(
        sc, f"official {OFFICIAL_VERSION} DurableStream.create (default: new client)", ctx,
        {"task": "create", "n": s.creates},
        lambda res: (fmt_latency(res["latency"]), res["latency"]))
    rows.append(off_cr_row)
    rows.append(Row(sc, "ours DurableStream.create (default: new session)", fmt_latency(cr),
                    data=cr))
    rows.append(ratio_row(sc, "ours ÷ official create, p50 (lower is better)",
                          cr["p50_ms"] / off_cr["p50_ms"] if off_cr else None,
                          reason="official unavailable"))
    return rows


def _raw_roundtrips(ctx: Context) -> tuple[dict[str, float], dict[str, float]]:
    from benchmarks._common import latency_summary, raw_roundtrips

    appends, creates = raw_roundtrips(ctx.base_url, max(ctx.sizes.roundtrips,
                                                        ctx.sizes.creates), json_mode=True)
    return latency_summary(appends), latency_summary(creates)


def scenario_reads(ctx: Context) -> list[Row]:
    try:
        from benchmarks import read  # type: ignore[attr-defined,unused-ignore]
    except ImportError as exc:  # owned by the reading engineer; may not exist yet
        return [Row("Reads", "benchmarks/read.py", f"not available ({exc})")]
    kwargs: dict[str, Any] = {}
    params = inspect.signature(read.run).parameters
    wanted: dict[str, Any] = {"quick": ctx.quick}
    if ctx.quick:
        wanted.update(messages=10_000, repeat=1, samples=20)
    else:
        wanted.update(repeat=max(ctx.sizes.repeat, 3))
    for key, value in wanted.items():
        if key in params:
            kwargs[key] = value
    result = read.run(ctx.base_url, **kwargs)
    rows = rows_from_read(result)
    for r in rows:
        progress(f"  {r.what}: {r.result}")
    return rows


def _rows_from_read_figures(result: dict[str, Any]) -> list[Row]:
    """The shape ``benchmarks/read.py`` returns: ``catch_up`` and ``latency_<mode>``."""
    rows: list[Row] = []
    c = result["catch_up"]
    scenario = f"Reads, catch-up, {c['messages']:,} JSON messages"
    mb = c.get("body_bytes", 0) / MiB
    rows.append(Row(scenario, f"bare urllib3 GET + json.loads + iterate ({mb:.1f} MiB body)",
                    f"{c['bare_items_per_s']:,.0f} items/s", data=c))
    rows.append(Row(scenario, "ours, stream(url).iter_json()",
                    f"{c['library_items_per_s']:,.0f} items/s", data=c))
    rows.append(ratio_row(scenario, "ours ÷ bare loop", float(c["ratio"]), target=TARGET_READS))
    for key, value in result.items():
        if not key.startswith("latency_"):
            continue
        mode = key[len("latency_"):].replace("_", "-")
        summary = {"p50_ms": value["p50_ms"], "p99_ms": value["p99_ms"],
                   "n": float(value.get("samples", 0))}
        rows.append(Row("Reads, live: append → delivered to a reader",
                        f"ours, live={mode!r} (blocking DurableStream.append, one at a time)",
                        fmt_latency(summary), data=value))
    return rows


def rows_from_read(result: Any) -> list[Row]:
    """Turn what ``benchmarks.read.run`` returns into table rows.

    Accepted shapes: a list of :class:`Row` (or of dicts with Row's fields), ``{"rows":
    [...]}``, or a flat ``{name: value}`` mapping whose values are numbers, strings, or
    dicts holding a latency summary (``p50_ms``/``p99_ms``), a ``rate`` (msg/s,
    optionally ``bytes_per_s``), or a ``ratio`` (optionally with ``target``).
    """
    if isinstance(result, dict) and isinstance(result.get("catch_up"), dict):
        try:
            return _rows_from_read_figures(result)
        except (KeyError, TypeError, ValueError):
            pass  # an unexpected shape: fall through to the generic rendering
    if isinstance(result, dict) and isinstance(result.get("rows"), list):
        result = result["rows"]
    if isinstance(result, list):
        out = []
        for item in result:
            if isinstance(item, Row):
                out.append(item)
            elif isinstance(item, dict):
                out.append(Row(str(item.get("scenario", "Reads")), str(item.get("what", "")),
                               str(item.get("result", "")), str(item.get("target", "")),
                               item.get("met"), dict(item.get("data") or {})))
        return out
    rows: list[Row] = []
    if not isinstance(result, dict):
        return [Row("Reads", "benchmarks.read.run()", repr(result)[:200])]
    for name, value in result.items():
        scenario = "Reads"
        if isinstance(value, dict):
            scenario = str(value.get("scenario", scenario))
            if "ratio" in value and value["ratio"] is not None:
                target = value.get("target", TARGET_READS if "read" in name.lower() else None)
                rows.append(ratio_row(scenario, name, float(value["ratio"]),
                                      target=float(target) if target is not None else None))
            elif "p50_ms" in value:
                summary = {"n": 0.0, **value}
                rows.append(Row(scenario, name, fmt_latency(summary), data=value))
            elif "rate" in value:
                rows.append(Row(scenario, name, fmt_rate(float(value["rate"]),
                                                         value.get("bytes_per_s")), data=value))
            elif "error" in value or "unavailable" in value:
                rows.append(Row(scenario, name,
                                f"unavailable: {value.get('error') or value.get('unavailable')}"))
            else:
                rows.append(Row(scenario, name, ", ".join(f"{k} {v}" for k, v in value.items()),
                                data=value))
        elif isinstance(value, float):
            rows.append(Row(scenario, name, f"{value:,.3g}"))
        else:
            rows.append(Row(scenario, name, str(value)))
    return rows


SCENARIOS: dict[str, Callable[[Context], list[Row]]] = {
    "producer-json": scenario_producer_json,
    "producer-bytes": scenario_producer_bytes,
    "large": scenario_large,
    "caller-cost": scenario_caller_cost,
    "latency": scenario_latency,
    "reads": scenario_reads,
    "blocking": lambda ctx: blocking.measure(ctx.base_url, n=40 if ctx.quick else 400,
                                             official=ctx.official),
}


def select(names: list[str] | None) -> list[str]:
    if not names:
        return list(SCENARIOS)
    wanted = [w.strip() for n in names for w in n.split(",") if w.strip()]
    chosen = [s for s in SCENARIOS if any(w in s for w in wanted)]
    if not chosen:
        raise SystemExit(f"no scenario matches {wanted}; choose from {', '.join(SCENARIOS)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks",
        description="Our client against the raw ceiling and the official client, one table.")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes: a smoke test that finishes in under a minute")
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help=f"run scenarios whose name contains NAME (repeatable, or "
                             f"comma-separated): {', '.join(SCENARIOS)}")
    parser.add_argument("--no-official", action="store_true",
                        help="skip the official client (no virtualenv, no install)")
    parser.add_argument("--no-ts", action="store_true",
                        help="skip the official TypeScript client (no npm ci, no node)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="throughput runs per subject, best counts (default 5, quick 1)")
    parser.add_argument("--out", metavar="FILE", help="also write the markdown to FILE")
    parser.add_argument("--against", metavar="REV",
                        help="before/after instead: the producer rows of this tree against "
                             "git revision REV (see benchmarks/compare.py)")
    args = parser.parse_args(argv)
    if args.against:
        from benchmarks import compare

        return compare.main([args.against] + (["--quick"] if args.quick else [])
                            + (["--repeat", str(args.repeat)] if args.repeat else [])
                            + (["--out", args.out] if args.out else []))
    names = select(args.scenario)
    sizes = Sizes.for_mode(args.quick, args.repeat)

    from durable_streams.testing import ReferenceServer

    official: OfficialClient | None = None
    reason = "skipped (--no-official)"
    if not args.no_official:
        official = OfficialClient()
        try:
            official.ensure()
        except BaselineUnavailable as exc:
            reason, official = f"could not install: {exc}", None
    ts, ts_reason = _ts_client(args.no_ts, names)
    started = time.monotonic()
    load_before = load_average()
    rows: list[Row] = []
    with ReferenceServer() as server:
        ctx = Context(server.url, sizes, args.quick, official, reason, ts, ts_reason)
        for name in names:
            progress(f"[{name}]")
            t0 = time.monotonic()
            try:
                rows += SCENARIOS[name](ctx)
            except Exception as exc:  # one broken scenario must not hide the others
                traceback.print_exc()
                rows.append(Row(name, "scenario failed", f"{type(exc).__name__}: {exc}"))
            progress(f"  ({time.monotonic() - t0:.1f} s)")
    elapsed = time.monotonic() - started
    command = "python3 -m benchmarks" + (f" {' '.join(argv)}" if argv else
                                         (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else ""))
    text = render(rows, command=command, sizes=sizes, elapsed=elapsed,
                  load=(load_before, load_average()), official=official is not None)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


def _ts_client(skip: bool, names: list[str]) -> tuple[TsClient | None, str]:
    """The TypeScript baseline, installed (npm ci) if a producer scenario runs."""
    if skip:
        return None, "skipped (--no-ts)"
    if not any(n.startswith("producer") for n in names):
        return None, "not needed"
    ts = TsClient()
    try:
        ts.ensure()
    except BaselineUnavailable as exc:
        progress(f"note: TypeScript client rows skipped: {exc}")
        return None, f"not available: {exc}"
    return ts, ""


def render(rows: list[Row], *, command: str, sizes: Sizes, elapsed: float,
           load: tuple[str, str], official: bool) -> str:
    from durable_streams.testing import SERVER_VERSION

    head = [
        f"Benchmarks, {utc_now()}: `{command}` ({elapsed:.0f} s)",
        "",
        f"- Machine: {machine_summary()}; load average {load[0]} at start, {load[1]} at end.",
        f"- Server: `@durable-streams/server` {SERVER_VERSION}, in memory, on loopback; "
        "every request goes through it.",
        f"- Throughput: {sizes.repeat} interleaved round(s); a figure is the best round of its "
        "subject, a ratio to the raw ceiling is the median of the per-round ratios; end to end "
        "= first append → flush returns. Ratios to the official client: best ÷ best.",
        f"- Baseline: {'official client `durable-streams` ' + OFFICIAL_VERSION + ' from PyPI, in its own virtualenv' if official else 'official client not run'}.",  # noqa: E501
        f"- TypeScript baseline: `{TS_PACKAGE}` {TS_VERSION} from npm (pinned in "
        "`benchmarks/ts_client/`), its IdempotentProducer with default options in Node, a "
        "fresh stream and producer id per round; ours ÷ TypeScript = median of per-round "
        "ratios.",
        "- Stored counts: every throughput round (ours, raw, official, TypeScript) reads its "
        "stream back and checks that exactly the messages sent are stored; a row with a "
        "wrong count in any round is marked INVALID instead of a figure.",
        "",
        "",
    ]
    return "\n".join(head) + markdown_table(rows)


if __name__ == "__main__":
    sys.exit(main())
