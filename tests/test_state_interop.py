"""Interoperability with the TypeScript ``@durable-streams/state`` (pinned, run in Node):
events written by StateProducer materialise in Node's MaterializedState exactly as in ours,
and events built by the TypeScript schema helpers (``createStateSchema``) and appended by
the TypeScript client materialise in ours exactly as in Node's. Both sides read the same
stream on the reference server; types, keys (in order) and values are compared."""

from __future__ import annotations

import random
from typing import Any

import pytest
from state_interop.node_state import NodeState, NodeUnavailable
from unit.state_schema import schema_errors

from durable_streams import DurableStream
from durable_streams.state import MaterializedState, StateProducer, follow_state
from durable_streams.testing import ReferenceServer


@pytest.fixture(scope="module")
def node() -> NodeState:
    runner = NodeState()
    try:
        runner.ensure()
    except NodeUnavailable as exc:
        pytest.skip(f"cannot compare with the TypeScript package: {exc}")
    return runner


def ours(url: str) -> MaterializedState:
    with follow_state(url, live=False) as view:
        assert view.wait_until_up_to_date(60)
    return view.state


def as_node(state: MaterializedState) -> dict[str, Any]:
    """Our state in the harness's report format: types, and [key, value] pairs in order."""
    return {"types": state.types,
            "entries": {t: [list(kv) for kv in c.items()] for t, c in state.to_dict().items()}}


def node_view(result: dict[str, Any]) -> dict[str, Any]:
    return {"types": result["types"], "entries": result["entries"]}


def random_ops(rng: random.Random, n: int) -> list[tuple[str, str, str, Any]]:
    ops: list[tuple[str, str, str, Any]] = []
    for i in range(n):
        roll = rng.random()
        t, k = rng.choice(["user", "team", "flag"]), str(rng.randrange(12))
        if roll < 0.03:
            ops.append(("reset", "", "", None))
        elif roll < 0.06:
            ops.append(("snapshot", "", "", None))
        elif roll < 0.25:
            ops.append(("delete", t, k, None))
        else:
            value = rng.choice([{"n": i, "tags": ["a", i]}, i, f"s{i}", None, True, 1.5,
                                {"nested": {"deep": [1, {"x": None}]}}])
            ops.append((rng.choice(["insert", "update", "upsert"]), t, k, value))
    return ops


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_state_producer_events_materialise_the_same_in_node(
        node: NodeState, server: ReferenceServer, seed: int) -> None:
    url = server.stream_url()
    DurableStream.create(url, content_type="application/json").close()
    rng = random.Random(seed)
    with StateProducer(url, f"interop-{seed}") as sp:
        for op, t, k, v in random_ops(rng, 400):
            if op == "reset":
                sp.reset()
            elif op == "snapshot":
                with sp.snapshot(reset=rng.random() < 0.5):
                    for j in range(5):
                        sp.upsert("snap", str(j), {"j": j}, txid=f"s{seed}")
            elif op == "delete":
                sp.delete(t, k, old_value={"was": k})
            elif op == "update":
                sp.update(t, k, v, old_value=0, txid="tx", timestamp="2025-01-15T10:30:00Z")
            else:
                getattr(sp, op)(t, k, v)
    mine = ours(url)
    theirs = node.read(url)
    assert theirs["count"] >= 400
    assert node_view(theirs) == as_node(mine)
    assert mine.applied_count == theirs["count"]


def test_typescript_helper_events_materialise_the_same_in_python(
        node: NodeState, server: ReferenceServer) -> None:
    url = server.stream_url()
    DurableStream.create(url, content_type="application/json").close()
    ops: list[dict[str, Any]] = [
        {"type": "user", "op": "insert", "value": {"id": "u1", "name": "Ann"},
         "headers": {"txid": "t1", "timestamp": "2025-01-15T10:30:00Z"}},
        {"type": "user", "op": "insert", "value": {"id": 2, "name": "Bo"}},  # key from id
        {"type": "user", "op": "update", "value": {"id": "u1", "name": "Ann B"},
         "oldValue": {"id": "u1", "name": "Ann"}},
        {"type": "team", "op": "upsert", "key": "red", "value": {"size": 3}},
        {"type": "user", "op": "delete", "oldValue": {"id": 2, "name": "Bo"}},
        {"type": "flag", "op": "upsert", "value": {"id": "dark", "on": True}},
        {"control": "reset"},
        {"control": "snapshot-start"},
        {"type": "user", "op": "insert", "value": {"id": "u3", "name": "Cy"}},
        {"type": "team", "op": "insert", "key": "blue", "value": {"size": 1}},
        {"control": "snapshot-end"},
        {"type": "team", "op": "delete", "key": "blue"},
        {"type": "user", "op": "upsert", "value": {"id": "u3", "name": "Cy 2"}},
    ]
    events = node.write(url, ops)
    assert [e.get("key") for e in events[:5]] == ["u1", "2", "u1", "red", "2"]
    for event in events:
        assert schema_errors(event) == [], event  # the TS helpers' output fits the schema
    theirs = node.read(url)
    mine = ours(url)
    assert as_node(mine) == node_view(theirs)
    assert mine.to_dict() == {"user": {"u3": {"id": "u3", "name": "Cy 2"}}, "team": {}}
