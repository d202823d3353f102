#!/usr/bin/env python3
"""State Protocol benchmark: catching up and materialising a stream of change events.

    python3 benchmarks/state.py [--events 100000] [--repeat 3]

One JSON stream on the reference server holds ``--events`` State Protocol events (~110
bytes each: upserts, updates and inserts over 20,000 keys of 4 types, a delete every 10th,
a reset and a snapshot block near the start). In the same run, alternating, each reader
catches up from the beginning and materialises the whole stream:

- ours: ``follow_state(url, live=False)`` until ``wait_until_up_to_date()`` (checking every
  event, grouping chunks, applying to ``MaterializedState``), timed from the call;
- Node: the pinned TypeScript ``@durable-streams/state`` ``MaterializedState`` fed by its
  client (``@durable-streams/client`` ``stream()`` + ``subscribeJson``, a reset clearing the
  state as StreamDB does), timed inside Node from the ``stream()`` call (Node's start-up
  excluded; ``tests/state_interop/harness.mjs``);
- SQLite: ``SqliteState(path).follow(url, live=False)`` into a fresh database file each run
  (every group and its offset committed in one transaction, ``synchronous=NORMAL``, WAL).

Then the materialisation alone, without the network: the same events, already decoded, applied
to a new ``MaterializedState`` with ``apply_batch`` (ours, checking each event) and with
``apply`` in a loop (Node), best of ``--repeat``.

The best run of each is reported (events/s), with the ratios ours/Node and SQLite/ours. The
three final states are checked to be equal (entry count and a sample). It starts its own
reference server; it needs ``node`` and ``npm`` for the Node column (otherwise that column
says why it is missing).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script from a checkout
    sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from durable_streams.state import MaterializedState, SqliteState, follow_state  # noqa: E402

JSON = "application/json"


def build_events(n: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    types = ["user", "order", "item", "flag"]
    for i in range(n):
        if i == 1000:
            events.append({"headers": {"control": "snapshot-start"}})
        elif i == 2000:
            events.append({"headers": {"control": "snapshot-end"}})
        elif i == 500:
            events.append({"headers": {"control": "reset"}})
        elif i % 10 == 9:
            events.append({"type": types[i % 4], "key": f"k{(i * 7) % 20000}",
                           "headers": {"operation": "delete"}})
        else:
            op = ("upsert", "update", "insert")[i % 3]
            events.append({"type": types[i % 4], "key": f"k{(i * 7) % 20000}",
                           "value": {"n": i, "name": f"name-{i % 977}", "ok": i % 2 == 0},
                           "headers": {"operation": op, "txid": f"tx{i // 100}"}})
    return events


def populate(url: str, events: list[dict[str, Any]]) -> None:
    session = requests.Session()
    session.put(url, headers={"Content-Type": JSON}, timeout=30).raise_for_status()
    for start in range(0, len(events), 2000):
        body = json.dumps(events[start:start + 2000], separators=(",", ":")).encode()
        session.post(url, data=body, headers={"Content-Type": JSON},
                     timeout=60).raise_for_status()
    session.close()


def ours(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with follow_state(url, live=False) as view:
        if not view.wait_until_up_to_date(600):
            raise RuntimeError("our reader did not catch up")
        seconds = time.perf_counter() - t0
    return seconds, len(view.state)


def sqlite_view(url: str, directory: str) -> tuple[float, int]:
    path = Path(directory) / f"state-{uuid.uuid4().hex}.db"
    with SqliteState(path) as db:
        t0 = time.perf_counter()
        with db.follow(url, live=False) as view:
            if not view.wait_until_up_to_date(600):
                raise RuntimeError("the SQLite view did not catch up")
            seconds = time.perf_counter() - t0
        return seconds, len(db)


def _pure_ours(events: list[dict[str, Any]]) -> float:
    state = MaterializedState()
    t0 = time.perf_counter()
    state.apply_batch(events)
    return time.perf_counter() - t0


def run(base_url: str, events: int, repeat: int) -> dict[str, Any]:
    from state_interop.node_state import NodeState, NodeUnavailable

    url = f"{base_url}/bench-state-{uuid.uuid4().hex[:12]}"
    stream_events = build_events(events)
    populate(url, stream_events)
    node: NodeState | None = NodeState()
    node_missing = ""
    try:
        assert node is not None
        node.ensure()
    except NodeUnavailable as exc:
        node, node_missing = None, str(exc)
    times: dict[str, list[float]] = {"ours": [], "node": [], "sqlite": []}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            seconds, sizes["ours"] = ours(url)
            times["ours"].append(seconds)
            if node is not None:
                result = node.read(url, summary=True)
                if result["count"] != events:
                    raise RuntimeError(f"Node read {result['count']} events, not {events}")
                times["node"].append(result["seconds"])
                sizes["node"] = result["size"]
            seconds, sizes["sqlite"] = sqlite_view(url, tmp)
            times["sqlite"].append(seconds)
        pure: dict[str, float] = {}
        best = min(_pure_ours(stream_events) for _ in range(repeat))
        pure["ours"] = events / best
        if node is not None:
            path = Path(tmp) / "events.json"
            path.write_text(json.dumps(stream_events))
            result = node.apply_file(str(path), repeat)
            if result["size"] != sizes["ours"]:
                raise RuntimeError(f"Node's pure apply gave {result['size']} entries")
            pure["node"] = events / result["seconds"]
    if len(set(sizes.values())) != 1:
        raise RuntimeError(f"the readers disagree on the state's size: {sizes}")
    rates = {k: events / min(v) for k, v in times.items() if v}
    out: dict[str, Any] = {"events": events, "entries": sizes["ours"], "repeat": repeat,
                           "rates": rates, "pure": pure, "node_missing": node_missing}
    if "node" in pure:
        out["pure_ours_over_node"] = pure["ours"] / pure["node"]
    if "node" in rates:
        out["ours_over_node"] = rates["ours"] / rates["node"]
    out["sqlite_over_ours"] = rates["sqlite"] / rates["ours"]
    return out


def report(result: dict[str, Any]) -> None:
    rates = result["rates"]
    print(f"State Protocol catch-up + materialise: {result['events']:,} events -> "
          f"{result['entries']:,} entries (best of {result['repeat']})")
    print(f"  ours (follow_state -> MaterializedState) {rates['ours']:>12,.0f} events/s")
    if "node" in rates:
        print(f"  Node (@durable-streams/state)            {rates['node']:>12,.0f} events/s")
        print(f"  ratio ours / Node                        {result['ours_over_node']:>12.2f}")
    else:
        print(f"  Node: not measured ({result['node_missing']})")
    print(f"  SQLite view (SqliteState)                {rates['sqlite']:>12,.0f} events/s")
    print(f"  ratio SQLite / ours                      {result['sqlite_over_ours']:>12.2f}")
    pure = result["pure"]
    print("materialisation alone (decoded events, no network):")
    print(f"  ours (MaterializedState.apply_batch)     {pure['ours']:>12,.0f} events/s")
    if "node" in pure:
        print(f"  Node (MaterializedState.apply)           {pure['node']:>12,.0f} events/s")
        print(f"  ratio ours / Node                        "
              f"{result['pure_ours_over_node']:>12.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args(argv)
    from durable_streams.testing import ReferenceServer

    with ReferenceServer() as server:
        result = run(server.url, args.events, args.repeat)
    report(result)
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
