"""Pull-wake workers sharing a subscription (PROTOCOL §7.2, §7.3) against the reference
server: thread and process workers with Subscription.claims(), each message processed once,
a worker killed with SIGKILL mid-claim and its work redone elsewhere, stopping a loop."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sub_helpers import Space, dumps, poll, root_of

from durable_streams import IdempotentProducer, Subscription
from durable_streams.testing import ReferenceServer

WORKER = Path(__file__).with_name("sub_worker.py")


@pytest.fixture
def space(server: ReferenceServer) -> Space:
    return Space(root_of(server))


class ThreadWorker:
    """Runs ``sub.claims()`` in a thread; records (path, item) it processed."""

    def __init__(self, root: str, sub_id: str, name: str, seen: list[tuple[str, Any]],
                 lock: threading.Lock) -> None:
        self.sub = Subscription(root, sub_id)
        self.name = name
        self.seen = seen
        self.lock = lock
        self.claims = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"worker-{name}", daemon=True)
        self.loop = self.sub.claims(name, stop_after=60)

    def start(self) -> ThreadWorker:
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            for claim in self.loop:
                self.claims += 1
                with claim:
                    for linked in claim.pending:
                        with claim.read(linked.path) as response:
                            got = [(linked.path, item) for item in response.iter_json()]
                        with self.lock:
                            self.seen.extend(got)
                        claim.ack({linked.path: response.offset})
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def stop(self) -> None:
        self.sub.stop()
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), f"{self.name} did not stop"
        self.sub.close()
        if self.error is not None:
            raise self.error


def spawn(space: Space, sub: Subscription, name: str, out: Path, mode: str,
          seconds: float) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, str(WORKER), space.root, sub.subscription_id, name, str(out), mode,
         str(seconds)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The next stdout line of ``proc``, or an AssertionError after ``timeout``."""
    assert proc.stdout is not None
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(proc.stdout.readline()),  # type: ignore[union-attr]
                              daemon=True)
    reader.start()
    reader.join(timeout)
    if not result or not result[0]:
        proc.kill()
        _, err = proc.communicate(timeout=10)
        raise AssertionError(f"worker process said nothing within {timeout}s: {err[-2000:]}")
    return result[0].strip()


def process_items(out: Path) -> list[tuple[str, Any]]:
    if not out.exists():
        return []
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return [(row["path"], row["item"]) for row in rows]


@pytest.fixture
def workers() -> Iterator[list[ThreadWorker]]:
    made: list[ThreadWorker] = []
    yield made
    for w in made:
        if w.thread.is_alive():
            w.sub.stop()
            w.thread.join(timeout=15)


def test_thread_and_process_workers_process_each_message_once(
        space: Space, tmp_path: Path, workers: list[ThreadWorker]) -> None:
    sub = space.subscription(lease_ttl_ms=5000)
    seen: list[tuple[str, Any]] = []
    lock = threading.Lock()
    out = tmp_path / "process-worker.jsonl"
    proc = spawn(space, sub, "proc-1", out, "work", 60)
    try:
        assert read_line(proc, 30) == "READY"
        for n in range(3):
            workers.append(ThreadWorker(space.root, sub.subscription_id, f"t{n}", seen,
                                        lock).start())
        names = [f"orders/s{i}" for i in range(4)]
        handles = [space.create(name) for name in names]
        expected = collections.Counter()
        for round_ in range(5):  # several rounds of appends: several wakes, several claims
            for name, handle in zip(names, handles, strict=True):
                with IdempotentProducer(handle, f"gen-{name}-{round_}") as producer:
                    for i in range(4):
                        item = {"s": name, "i": round_ * 4 + i}
                        producer.append(dumps(item))
                        expected[(space.path(name), dumps(item))] += 1
        total = sum(expected.values())

        def processed() -> list[tuple[str, Any]]:
            with lock:
                rows = list(seen)
            return rows + process_items(out)

        poll(lambda: len(processed()) >= total, timeout=60,
             what=f"all {total} messages processed")
        for w in workers:
            w.stop()
        got = collections.Counter((path, dumps(item)) for path, item in processed())
        duplicates = {k: v for k, v in got.items() if v > 1}
        assert not duplicates, f"processed more than once: {duplicates}"
        assert got == expected
        # every stream is acked to its tail
        acked = sub.info().acked_offsets()
        for name, handle in zip(names, handles, strict=True):
            assert acked[space.path(name)] == handle.head().offset
        assert sum(w.claims for w in workers) + len(out.read_text().splitlines()) > 0
    finally:
        proc.kill()
        proc.communicate(timeout=10)


def test_worker_killed_mid_claim_is_redone_elsewhere(space: Space, tmp_path: Path,
                                                     workers: list[ThreadWorker]) -> None:
    sub = space.subscription(lease_ttl_ms=1000)
    handle = space.create("orders/a")
    for i in range(5):
        handle.append({"i": i})
    proc = spawn(space, sub, "doomed", tmp_path / "unused", "hang", 60)
    try:
        line = read_line(proc, 30)
        assert line.startswith("CLAIMED "), line
        generation = int(line.split()[1])
        assert sub.claim("rival") is None  # the doomed process holds the lease
        os.kill(proc.pid, signal.SIGKILL)  # no release, no final ack: the lease must expire
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    seen: list[tuple[str, Any]] = []
    worker = ThreadWorker(space.root, sub.subscription_id, "rescuer", seen, threading.Lock())
    workers.append(worker.start())
    poll(lambda: len(seen) >= 5, timeout=20, what="the killed worker's work redone")
    worker.stop()
    assert seen == [(space.path("orders/a"), {"i": i}) for i in range(5)]
    wakes = [w for w in space.wakes() if w["subscription_id"] == sub.subscription_id]
    assert max(w["generation"] for w in wakes) > generation  # a re-wake after expiry


def test_loop_keeps_its_own_wakes_and_stops_from_another_thread(space: Space) -> None:
    mine = space.subscription("mine", pattern=space.path("orders/*"), lease_ttl_ms=5000)
    # another subscription sharing the same wake stream
    theirs = space.subscription("theirs", pattern=space.path("other/*"), lease_ttl_ms=5000)
    loop = mine.claims("w")
    got: list[Any] = []
    done = threading.Event()

    def run() -> None:
        for claim in loop:
            with claim:
                for linked in claim.pending:
                    with claim.read(linked.path) as r:
                        got.extend(r.read_json())
                    claim.ack({linked.path: r.offset})
        done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    poll(lambda: loop._reader is not None, what="the loop following the wake stream")
    space.create("other/x").append({"theirs": 1})
    poll(lambda: any(w["subscription_id"] == theirs.subscription_id for w in space.wakes()),
         what="their wake")
    space.create("orders/x").append({"mine": 1})
    poll(lambda: got, what="my work processed")
    assert got == [{"mine": 1}]
    assert loop.claimed == 1
    assert theirs.claim("them") is not None  # their work was left alone
    started = time.monotonic()
    mine.stop()  # from this thread, while the loop blocks in a long-poll
    assert done.wait(10), "the claim loop did not stop"
    assert time.monotonic() - started < 5
    assert loop.stopped


def test_loop_claims_work_pending_before_it_started(space: Space) -> None:
    sub = space.subscription(lease_ttl_ms=5000)
    space.create("orders/early").append({"n": 1})
    poll(lambda: space.wakes(), what="the wake")  # the wake is in the past for the loop
    with sub.claims("late-starter", stop_after=10) as loop:
        claim = next(loop)
        with claim:
            with claim.read(space.path("orders/early")) as r:
                assert r.read_json() == [{"n": 1}]
            claim.ack({space.path("orders/early"): r.offset})
        loop.stop()
        assert list(loop) == []
