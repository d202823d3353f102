"""The orders worker recipe (tests/recipes/orders_worker.py) run as real worker processes
against the reference server: results are written exactly once, also when a worker is
killed with SIGKILL after writing some results and before acking (PROTOCOL §7.2, §7.3,
§5.2.1)."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sub_helpers import Space, items, poll, root_of

from durable_streams import DurableStream, IdempotentProducer, StreamNotFoundError
from durable_streams.testing import ReferenceServer

RECIPE = Path(__file__).with_name("recipes") / "orders_worker.py"


@pytest.fixture
def space(server: ReferenceServer) -> Space:
    return Space(root_of(server))


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    made: list[subprocess.Popen[str]] = []
    yield made
    for p in made:
        if p.poll() is None:
            p.kill()
        p.communicate(timeout=10)


def start_worker(space: Space, name: str, procs: list[subprocess.Popen[str]], *,
                 lease_ttl_ms: int = 5000, delay: float = 0) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    env.update(DS_ROOT=space.root, WORKER_NAME=name, ORDERS_PATTERN=space.path("orders/*"),
               RESULTS_PREFIX=space.path("results"), WAKE_STREAM=space.path("wake"),
               SUBSCRIPTION=space.prefix + "-orders", LEASE_TTL_MS=str(lease_ttl_ms),
               ORDERS_WORKER_DELAY=str(delay))
    proc = subprocess.Popen([sys.executable, str(RECIPE)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs.append(proc)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(30)
    assert line and line[0].strip().endswith("ready"), (line, proc.poll())
    return proc


def place_orders(space: Space, region: str, ids: range) -> list[tuple[str, int]]:
    url = space.url(f"orders/{region}")
    DurableStream.create(url, content_type="application/json").close()
    with IdempotentProducer(url, f"shop-{region}-{ids.start}") as producer:
        for i in ids:
            producer.append(json.dumps({"id": i, "qty": 2, "price": 1.25}))
    return [(space.path(f"orders/{region}"), i) for i in ids]


def results(space: Space, regions: tuple[str, ...] = ("eu", "us")) -> list[dict[str, Any]]:
    """Every result, from the results stream of each order stream (orders/eu -> results/...)."""
    out: list[dict[str, Any]] = []
    for region in regions:
        url = space.url(f"results/{space.path('orders/' + region)}")
        with contextlib.suppress(StreamNotFoundError):  # no result for this region yet
            out.extend(items(url))
    return out


def assert_exactly_once(got: list[dict[str, Any]], expected: list[tuple[str, int]]) -> None:
    keys = collections.Counter((r["stream"], r["order_id"]) for r in got)
    duplicates = {k: n for k, n in keys.items() if n > 1}
    assert not duplicates, f"results written more than once: {duplicates}"
    assert set(keys) == set(expected)
    assert all(r["total"] == 2.5 for r in got)


def test_worker_processes_share_orders_exactly_once(space: Space,
                                                    procs: list[subprocess.Popen[str]]) -> None:
    a = start_worker(space, "a", procs)
    b = start_worker(space, "b", procs)
    expected = place_orders(space, "eu", range(0, 15)) + place_orders(space, "us", range(15))
    expected += place_orders(space, "eu", range(15, 25))  # more orders, another wake
    poll(lambda: len(results(space)) >= len(expected), timeout=60,
         what=f"{len(expected)} results")
    for proc in (a, b):
        proc.send_signal(signal.SIGTERM)
    for proc in (a, b):
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
    assert_exactly_once(results(space), expected)


def test_redo_after_kill_writes_no_duplicates(space: Space,
                                             procs: list[subprocess.Popen[str]]) -> None:
    # A slow worker takes the claim, writes a few results, and is killed before acking.
    slow = start_worker(space, "slow", procs, lease_ttl_ms=1000, delay=0.2)
    expected = place_orders(space, "eu", range(12))
    poll(lambda: len(results(space)) >= 3, timeout=30, what="the first results")
    os.kill(slow.pid, signal.SIGKILL)
    slow.wait(timeout=10)
    # Its lease expires; another worker redoes the orders from the same acked offset.
    fast = start_worker(space, "fast", procs, lease_ttl_ms=1000)
    poll(lambda: len(results(space)) >= len(expected), timeout=30, what="all results")
    fast.send_signal(signal.SIGTERM)
    _, err = fast.communicate(timeout=20)
    assert fast.returncode == 0, err
    got = results(space)
    assert_exactly_once(got, expected)
    workers = [r["worker"] for r in got]
    by_slow = workers.count("slow")
    assert 3 <= by_slow < len(expected)
    assert workers == ["slow"] * by_slow + ["fast"] * (len(expected) - by_slow)
    assert [r["order_id"] for r in got] == list(range(12))  # in order, no gap
