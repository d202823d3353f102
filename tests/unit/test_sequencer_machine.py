"""A hypothesis state machine: the real Sequencer and Accumulator, driven by simulated
senders against a simulated server (PROTOCOL §5.2.1), with lost answers, dropped requests,
503/429, proxy 502s after a commit, zombie requests, server restarts, reordering on the
wire, a fake clock (delivery deadlines, retries) and a second writer with the same producer
id (fencing, with and without auto_claim).

Invariants (see ``SimProducer``): every accepted message is acknowledged or reported failed,
exactly once; acknowledged messages are in the stream; no message is stored twice; a failure
that does not say "may have been stored" is not in the stream; per-thread order holds among
stored messages; every phase change is in ALLOWED; every batch settles exactly once.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from durable_streams._producer.sequencer import ALLOWED

from .sim_producer import PID, SimProducer
from .sim_server import Fault, OtherWriter, SimServer, previous_run

#: mostly clean deliveries (hypothesis shrinks towards the first element)
FAULTS = [Fault.NONE] * 6 + [Fault.DROP, Fault.LOSE, Fault.UNAVAILABLE, Fault.RATE_LIMITED,
                             Fault.PROXY_502, Fault.ZOMBIE]

STEPS = {"n": 0, "runs": 0}
STATS: Counter[str] = Counter()


class ProducerMachine(RuleBasedStateMachine):
    p: SimProducer

    @initialize(
        auto_claim=st.booleans(),
        fresh=st.booleans(),
        max_in_flight=st.integers(1, 4),
        json_mode=st.booleans(),
        earlier_run=st.sampled_from([0, 0, 1, 3]),
        max_batch_bytes=st.sampled_from([8, 16, 40, 1000]),
        linger=st.sampled_from([0.0, 0.01, 0.2]),
        second_writer=st.booleans(),
    )
    def setup(self, auto_claim: bool, fresh: bool, max_in_flight: int, json_mode: bool,
              earlier_run: int, max_batch_bytes: int, linger: float,
              second_writer: bool) -> None:
        server = SimServer(json_mode=json_mode)
        fresh = fresh and auto_claim  # an epoch from the clock exists only with auto_claim
        if earlier_run:
            previous_run(server, PID, 0, earlier_run)
        self.p = SimProducer(server, epoch=1000 if fresh else 0, auto_claim=auto_claim,
                             fresh_epoch=fresh, max_in_flight=max_in_flight,
                             delivery_timeout=8.0, linger=linger,
                             max_batch_bytes=max_batch_bytes)
        self.other = OtherWriter(server, PID) if second_writer else None
        self.counters = [0, 0, 0]
        STEPS["runs"] += 1

    @rule(thread=st.integers(0, 2), count=st.integers(1, 3))
    def append(self, thread: int, count: int) -> None:
        for _ in range(count):
            self.p.append(thread, self.counters[thread])
            self.counters[thread] += 1

    @precondition(lambda self: self.p.server.json_mode)
    @rule(thread=st.integers(0, 2))
    def append_invalid_json(self, thread: int) -> None:
        self.p.append(thread, self.counters[thread], valid=False)
        self.counters[thread] += 1

    @rule(k=st.integers(0, 7))
    def run_sender(self, k: int) -> None:
        runnable = self.p.runnable()
        if runnable:
            self.p.resume(runnable[k % len(runnable)])

    @rule(k=st.integers(0, 7), times=st.integers(1, 6))
    def run_senders(self, k: int, times: int) -> None:
        for i in range(times):
            runnable = self.p.runnable()
            if runnable:
                self.p.resume(runnable[(k + i) % len(runnable)])

    @precondition(lambda self: bool(self.p.wire))
    @rule(k=st.integers(0, 7), fault=st.sampled_from(FAULTS))
    def server_handles(self, k: int, fault: Fault) -> None:
        self.p.handle(k, fault)

    @precondition(lambda self: bool(self.p.wire))
    @rule(k=st.integers(0, 7))
    def body_written(self, k: int) -> None:
        self.p.write(k)

    @precondition(lambda self: bool(self.p.zombies))
    @rule(k=st.integers(0, 7))
    def zombie_arrives(self, k: int) -> None:
        self.p.zombie_arrives(k)

    @rule(dt=st.sampled_from([0.005, 0.05, 0.3, 1.0, 3.0, 9.0]))
    def tick(self, dt: float) -> None:
        self.p.advance(dt)

    @precondition(lambda self: bool(self.p.wire))
    @rule(committed=st.lists(st.booleans(), min_size=1, max_size=4))
    def server_restarts(self, committed: list[bool]) -> None:
        self.p.restart_server(committed)

    @precondition(lambda self: self.other is not None)
    @rule()
    def second_writer_claims(self) -> None:
        assert self.other is not None
        self.other.claim()

    @precondition(lambda self: self.other is not None and not self.other.fenced)
    @rule()
    def second_writer_writes(self) -> None:
        assert self.other is not None
        self.other.write()

    @invariant()
    def cheap_invariants(self) -> None:
        STEPS["n"] += 1
        p = self.p
        for a, b in p.seq.transitions:
            assert b in ALLOWED[a]
        assert p.seq.in_flight >= 0
        assert p.seq.in_flight <= len(p.senders)

    def teardown(self) -> None:
        if not hasattr(self, "p"):
            return
        self.p.drain()
        self.p.check_final()
        STATS.update(self.p.stats)
        STATS.update(f"{a.name}->{b.name}" for a, b in self.p.seq.transitions)
        STATS["B1 (undisclosed doubt)"] += len(self.p.undisclosed)


ProducerMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_producer_machine = ProducerMachine.TestCase


@pytest.fixture(autouse=True, scope="module")
def _report_speed() -> Iterator[None]:
    # The producer logs a warning per fatal stop: thousands of runs would flood the capture.
    logger = logging.getLogger("durable_streams.producer")
    level = logger.level
    logger.setLevel(logging.ERROR)
    start = time.perf_counter()
    yield None
    logger.setLevel(level)
    took = time.perf_counter() - start
    if STEPS["n"]:
        print(f"\nsequencer machine: {STEPS['n']} steps in {STEPS['runs']} runs, "
              f"{took:.1f}s, {STEPS['n'] / took:.0f} steps/s")
        for key, n in sorted(STATS.items()):
            print(f"  {key}: {n}")
