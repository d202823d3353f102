"""Reliability report: the fault scenarios of issue 6, one table line each.

    python3 benchmarks/reliability.py            # default sizes (about a minute on 2 cores)
    python3 benchmarks/reliability.py --full     # the issue's sizes: 200,000 through chaos
    python3 benchmarks/reliability.py --only chaos,restart

Runs the scenarios of ``tests/faults/`` (the same code the test suite asserts on) against the
pinned reference server on loopback and prints, per scenario: messages sent (accepted by
``append``), acknowledged (the producer's count), found in the stream, duplicates, lost
(accepted, neither in the stream nor reported to the application), reported (handed back to
the application as undelivered, as the scenario expects), wall time, and notes. The target
for every line: lost 0, duplicates 0. Where a duplicate or repeat comes from the reference
server rather than the client, the notes say so with the evidence.

Progress goes to stderr; stdout gets the markdown table.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from faults import hostile, scenarios  # noqa: E402
from faults.chaos_proxy import FaultRates  # noqa: E402
from faults.harness import Tally  # noqa: E402

from durable_streams.testing import ReferenceServer  # noqa: E402


def _progress(msg: str) -> None:
    print(f"[reliability] {msg}", file=sys.stderr, flush=True)


def _hostile_row(server: ReferenceServer) -> Tally:
    start = time.monotonic()
    row = Tally("6 bad input, hostile servers")
    clean, failing = 0, []
    slowest = 0.0
    for name, fn in hostile.CASES.items():
        case = fn(server)
        row.sent += case.sent
        row.acked += case.acked
        row.reported += case.reported
        row.found += case.found if case.found is not None else case.acked
        if name == "bare_200_producer":
            row.lost += int(case.detail.get("acked_by_a_non_stream", 0))
        else:
            row.lost += max(case.silent_drops, 0)
        slowest = max(slowest, case.elapsed)
        if case.ok:
            clean += 1
        else:
            failing.append(name)
    row.wall = time.monotonic() - start
    row.notes = {"cases": len(hostile.CASES), "clear_error_in_time": clean,
                 "slowest_case_s": round(slowest, 1),
                 "failing": ",".join(failing) or "none"}
    row.details = {"failing": failing}
    if failing:
        row.problems.append("cases without a clear error in time: " + ",".join(failing))
    return row


def _restart_notes(row: Tally) -> Tally:
    by_server = row.notes.get("dups_by_server", 0)
    if row.duplicates and by_server == row.duplicates:
        row.notes["dups"] = "all by the server (killed between file write and metadata)"
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true",
                        help="the issue's sizes (200,000 messages through the chaos proxy)")
    parser.add_argument("--only", default="",
                        help="comma-separated scenario keys: chaos,restart,buffer,kill,"
                             "exit,fork,cycles,hostile")
    args = parser.parse_args(argv)
    if args.full:
        os.environ["DS_FULL_FAULTS"] = "1"
    chaos_n = 200_000 if args.full else 20_000
    restart_n = 40_000 if args.full else 10_000
    only = {k.strip() for k in args.only.split(",") if k.strip()}

    rows: list[Tally] = []
    with ReferenceServer() as server, tempfile.TemporaryDirectory() as tmp:
        base = server.url
        plan: list[tuple[str, str, Callable[[], Tally]]] = [
            ("chaos", f"1 chaos proxy, {chaos_n} msgs",
             lambda: scenarios.run_chaos(base, chaos_n)),
            ("restart", f"2 server kill -9 x2, {restart_n} msgs",
             lambda: _restart_notes(scenarios.run_restart(Path(tmp) / "restart", restart_n))),
            ("buffer", "3 server down > buffer",
             lambda: scenarios.run_buffer_full(Path(tmp) / "buffer")),
            ("kill", "4 producer kill -9", lambda: scenarios.run_producer_kill(base)),
            ("kill", "4b two live writers, one id, auto_claim, 5% answers lost",
             lambda: scenarios.run_two_writers(base, FaultRates(drop_after=0.05), seed=2)),
            ("kill", "4c in-doubt batch when an earlier one times out",
             lambda: scenarios.run_in_doubt_hole(base)),
            ("exit", "5a exit without flush",
             lambda: scenarios.run_child_exit(base, "exit_no_flush")),
            ("exit", "5b exit from a thread",
             lambda: scenarios.run_child_exit(base, "thread_exit")),
            ("exit", "5c sys.exit in with",
             lambda: scenarios.run_child_exit(base, "sysexit_in_with")),
            ("fork", "5d fork x4", lambda: scenarios.run_fork(base, warm=True)),
            ("fork", "5d' fork x4, cold parent",
             lambda: scenarios.run_fork(base, warm=False)),
            ("cycles", "5e 1000 create/close", lambda: scenarios.run_cycles(base, 1000)),
            ("hostile", "6 hostile", lambda: _hostile_row(server)),
        ]
        for key, label, run in plan:
            if only and key not in only:
                continue
            _progress(f"{label} ...")
            try:
                row = run()
                row.scenario = label
            except Exception:  # noqa: BLE001 - one broken scenario must not hide the rest
                traceback.print_exc()
                row = Tally(label, notes={"error": "scenario crashed (see stderr)"})
                row.lost = -1
            _progress(row.line())
            rows.append(row)

    print(f"Reliability ({'full' if args.full else 'default'} sizes; reference server "
          f"{ReferenceServer.__module__} on loopback; {os.cpu_count()} CPUs)\n")
    print("| scenario | sent | acked | found | dups | lost | reported | wall | ok | notes |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        notes = "; ".join(f"{k}={v}" for k, v in r.notes.items() if k != "failing")
        if r.problems:
            notes += "; **" + "; ".join(r.problems) + "**"
        print(f"| {r.scenario} | {r.sent} | {r.acked} | {r.found} | {r.duplicates} | "
              f"{r.lost} | {r.reported} | {r.wall:.1f}s | {'yes' if r.ok else 'NO'} | "
              f"{notes} |")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
