"""The simulation with the crash-safe journal (README "Crash-safe journal"): the real
Sequencer, Accumulator and Journal (real files in a temporary directory), killed at any step
of a random walk (``kill -9``: maybe inside an append, with requests in flight stored, lost
or arriving later), reopened on the same journal and server, several times, then drained.
The invariants are in ``sim_journal.py``'s docstring: the replay holds exactly what is
pending, every accepted message is reported once over all generations, nothing reported is
sent again, no (epoch, seq) is reused, and the stream holds each message at most once, in
order.

The walks found two library bugs, J1 and J2 (fixed: ``test_j1_*`` and ``test_j2_*``
below, and against the reference server tests/test_journal_replay_bugs.py).
``DS_SIM_ROUNDS=N`` runs N times as many walks (default 1); ``DS_SEQ_STRICT=1`` tolerates
only the limits (``sim_world.LIMITS``).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from durable_streams import errors
from durable_streams._producer.journal import Journal

from .sim_journal import JConfig, JournalWorld, journal_walk
from .sim_producer import InvariantError, SimProducer
from .sim_server import URL, Fault
from .sim_world import FAULTS, KNOWN_BUGS, LIMITS, Config
from .test_sequencer_machine import ProducerMachine

STRICT = bool(os.environ.get("DS_SEQ_STRICT"))
TOLERATE: tuple[str, ...] = LIMITS if STRICT else KNOWN_BUGS
ROUNDS = max(1, int(os.environ.get("DS_SIM_ROUNDS", "1")))

STATS: Counter[str] = Counter()
STEPS = {"n": 0, "runs": 0, "kills": 0}


def _collect(world: JournalWorld) -> None:
    STEPS["n"] += world.steps
    STEPS["runs"] += 1
    STEPS["kills"] += len(world.generations) - 1
    STATS.update(world.stats)
    for g in world.generations:
        STATS.update({f"bug {k}": v for k, v in g.seq.bugs.items() if v})


@pytest.fixture(autouse=True, scope="module")
def _report_speed() -> Iterator[None]:
    logger = logging.getLogger("durable_streams.producer")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # thousands of fatal stops and journal warnings
    start = time.perf_counter()
    yield None
    logger.setLevel(level)
    took = time.perf_counter() - start
    if STEPS["n"]:
        print(f"\njournal simulation: {STEPS['n']} steps, {STEPS['runs']} runs, "
              f"{STEPS['kills']} kills, {took:.1f}s, {STEPS['n'] / took:.0f} steps/s")
        for key, n in sorted(STATS.items()):
            print(f"  {key}: {n}")


# -- seeded random walks -------------------------------------------------------------------

@pytest.mark.parametrize("block", range(4))
def test_journal_walks(block: int, tmp_path: Path) -> None:
    """4 x 120 walks of 150 steps (x DS_SIM_ROUNDS), each killing the producer up to 8
    times. A failure names its seed: replay it with ``journal_walk(seed, DIR, trace=[])``."""
    per = 120 * ROUNDS
    for seed in range(block * per, (block + 1) * per):
        try:
            world = journal_walk(seed, str(tmp_path), tolerate=TOLERATE)
        except AssertionError as exc:
            raise AssertionError(f"journal walk seed {seed}: {exc}") from exc
        finally:
            shutil.rmtree(tmp_path / f"j{seed}", ignore_errors=True)
        _collect(world)


#: what the walks must reach: kills in every situation, and every kind of replay
MUST_REACH = {
    "kill with requests in flight", "kill while draining", "torn record", "torn record whole",
    "torn seal", "torn renumbering",
    "replayed sealed batches", "replayed unsealed messages",
    "reopened on several segments", "reopened after compaction", "orphan 200", "orphan 204",
    "orphan 403", "orphan 409", "abandoned close",
}


def test_journal_walks_reach_every_situation(tmp_path: Path) -> None:
    """The walks are not shallow: 300 of them (other seeds) reach every situation above,
    and the generations after a kill reach the sequencer's decisions too."""
    seen: Counter[str] = Counter()
    for seed in range(50_000, 50_300):
        world = journal_walk(seed, str(tmp_path), tolerate=TOLERATE)
        shutil.rmtree(tmp_path / f"j{seed}", ignore_errors=True)
        seen.update(world.stats)
        for g in world.generations[1:]:
            seen.update(g.stats)
    assert MUST_REACH - set(seen) == set()
    assert {"DUPLICATE->DONE", "OK->DONE", "checked:True", "FENCED->DONE"} <= set(seen)


@pytest.mark.parametrize("mutation", ["no_done", "drop_unsealed", "restart_seq"])
def test_the_walks_catch_a_broken_journal(mutation: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The invariants bite: a journal that forgets acknowledgements (replays them), loses
    an unsealed message, or restarts the seqs of its epoch fails the walks (or is refused
    at the reopen by the library's own checks)."""
    from durable_streams._producer import journal as J
    from durable_streams._producer import journal_replay as JR

    if mutation == "no_done":
        monkeypatch.setattr(J.Journal, "resolved", lambda self, batch, acked: None)
    else:
        result = JR.ReplayBuilder.result

        def broken(self: JR.ReplayBuilder, next_index: int) -> JR.Replay:
            r = result(self, next_index)
            if mutation == "drop_unsealed":
                r.unsealed = r.unsealed[1:]
            else:
                r.next_seq = 0
            return r

        monkeypatch.setattr(JR.ReplayBuilder, "result", broken)
    caught = 0
    for seed in range(60):
        try:
            journal_walk(seed, str(tmp_path), tolerate=TOLERATE)
        except (InvariantError, errors.JournalError, ValueError):
            # an invariant, or the library's own consistency checks refusing the broken
            # journal at the reopen (the replay, ``Sequencer.take_over``)
            caught += 1
        shutil.rmtree(tmp_path / f"j{seed}", ignore_errors=True)
    assert caught >= 3


# -- the hypothesis machine ------------------------------------------------------------------

class JournalMachine(ProducerMachine):
    """The producer machine's rules (``test_sequencer_machine.py``), on a producer with a
    journal, plus kills (maybe inside an append) and requests of killed generations that
    arrive late."""

    w: JournalWorld

    @initialize(
        auto_claim=st.booleans(),
        fresh=st.booleans(),
        max_in_flight=st.integers(1, 4),
        json_mode=st.booleans(),
        earlier_run=st.sampled_from([0, 0, 0, 1]),
        max_batch_bytes=st.sampled_from([12, 16, 40, 1000]),
        linger=st.sampled_from([0.0, 0.01, 0.2]),
        second_writer=st.booleans(),
        close=st.booleans(),
        validate_json=st.booleans(),
        close_faults=st.lists(st.sampled_from(FAULTS), max_size=3),
        pad=st.sampled_from([0, 8, 30]),
        crash_p=st.sampled_from([0.0, 0.02, 0.08]),
    )
    def setup(self, auto_claim: bool, fresh: bool, max_in_flight: int, json_mode: bool,
              earlier_run: int, max_batch_bytes: int, linger: float,
              second_writer: bool, close: bool, validate_json: bool,
              close_faults: list[Fault], pad: int = 0, crash_p: float = 0.0) -> None:
        cfg = Config(auto_claim=auto_claim, fresh=fresh and auto_claim,
                     max_in_flight=max_in_flight, json_mode=json_mode,
                     earlier_run=earlier_run, max_batch_bytes=max_batch_bytes, linger=linger,
                     second_writer=second_writer, close=close,
                     validate_json=validate_json)
        self.dir = tempfile.mkdtemp(prefix="ds-sim-journal-")
        self.w = JournalWorld(cfg, JConfig(crash_p=crash_p, pad=pad, max_generations=12),
                              os.path.join(self.dir, "j"))
        self.w.tolerate = set(TOLERATE)
        self.w.p.tolerate = set(TOLERATE)
        self.close_faults = close_faults

    @precondition(lambda self: len(self.w.generations) < 12)
    @rule(seed=st.integers(0, 2**16), torn=st.booleans(),
          fate=st.sampled_from([None, "stored", "later", "lost"]))
    def kill(self, seed: int, torn: bool, fate: str | None) -> None:
        self.w.crash(random.Random(seed), torn=torn, fate=fate)
        self.w.steps += 1

    @precondition(lambda self: bool(self.w.orphans))
    @rule(k=st.integers(0, 7))
    def orphan_arrives(self, k: int) -> None:
        self.w.orphan_arrives(k)
        self.w.steps += 1

    def teardown(self) -> None:
        if not hasattr(self, "w"):
            return
        try:
            self.w.finish(self.close_faults)
            _collect(self.w)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


JournalMachine.TestCase.settings = settings(
    max_examples=80 * ROUNDS, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_journal_machine = JournalMachine.TestCase


# -- scripted: the bugs the walks found, and the same without the kill ---------------------

def settle(p: SimProducer, rounds: int = 20) -> None:
    """Run every sender until it waits, answering HEADs and reads; POSTs stay on the
    wire for the test to answer."""
    for _ in range(rounds):
        while any(r.kind != "post" for r in p.wire):
            p.handle(next(i for i, r in enumerate(p.wire) if r.kind != "post"))
        for i in p.runnable():
            p.resume(i)


def answer(p: SimProducer, seq: int, fault: Fault = Fault.NONE) -> None:
    p.handle(next(i for i, r in enumerate(p.wire) if r.kind == "post" and r.seq == seq),
             fault)
    settle(p)


def world(tmp_path: Path, **kw: object) -> JournalWorld:
    cfg = Config(max_batch_bytes=5, linger=0.0, **kw)  # type: ignore[arg-type]
    w = JournalWorld(cfg, JConfig(crash_p=0.0), str(tmp_path / "j"))
    w.tolerate = set(LIMITS)  # no journal bug tolerated
    w.p.tolerate = set(LIMITS)
    return w


def j1_scenario(tmp_path: Path, *, kill: bool) -> JournalWorld:
    """An earlier run of the job, without this journal, stored (id, epoch 0, seq 0). The
    first journaled producer (auto_claim) seals its first batch at (0, 0), reads the tail
    (the probe) and sends it; the request is lost and (``kill``) the process is killed."""
    w = world(tmp_path, earlier_run=1, auto_claim=True)
    w.append(0)
    settle(w.p)
    assert [(r.epoch, r.seq) for r in w.p.wire if r.kind == "post"] == [(0, 0)]
    if kill:
        w.crash(random.Random(0), fate="lost")
        settle(w.p)  # the next producer resends (0, 0) from the journal
    answer(w.p, 0)  # 204: the earlier run's (0, 0)
    return w


def test_j1_control_without_a_kill(tmp_path: Path) -> None:
    """Without the kill, the 204 is checked in the stream after the probe (not found:
    not ours) and the message is delivered under a new epoch."""
    w = j1_scenario(tmp_path, kill=False)
    w.finish()
    assert w.stored() == [b"<0.0>"]
    assert w.ledger.reported[b"<0.0>"][1] == "acked"


def test_j1_a_replayed_batch_is_not_acknowledged_by_another_writers_204(
        tmp_path: Path) -> None:
    """J1 (fixed): after the kill, the 204 for the journaled batch is not taken as ours
    (no 200 ever proved epoch 0 this journal's: ``Replay.owned``); it is checked in the
    stream after the journaled probe as without the kill, and delivered under a new
    epoch."""
    w = j1_scenario(tmp_path, kill=True)
    assert not w.jp.replay.owned
    w.finish()
    assert w.stored() == [b"<0.0>"]
    assert w.ledger.reported[b"<0.0>"][:2] == (1, "acked")


def test_a_204_after_the_kill_is_ours_at_once_where_a_200_proved_the_epoch(
        tmp_path: Path) -> None:
    """The common case (J1's other side): seq 0 was acknowledged by a 200 (the journal
    records the epoch as ours), seq 1 is stored but its answer is lost in the kill; the
    next producer's 204 for seq 1 acknowledges it without reading the stream."""
    w = world(tmp_path)
    w.append(0)
    settle(w.p)
    answer(w.p, 0)
    w.append(0)
    settle(w.p)
    w.crash(random.Random(0), fate="stored")
    assert w.jp.replay.owned and w.jp.replayed == 1
    settle(w.p)
    answer(w.p, 1)
    assert w.p.stats["DUPLICATE->DONE"] == 1 and w.p.stats["READ"] == 0
    w.finish()
    assert w.stored() == [b"<0.0>", b"<0.1>"]
    assert w.ledger.reported[b"<0.1>"][:2] == (1, "acked")


def _time_out_in_doubt(w: JournalWorld, seq: int, message: bytes, *, wait: float) -> None:
    """``seq`` gets no answer, again after ``wait`` seconds, past the delivery timeout: it
    is reported failed, maybe stored (a hole the sequencer remembers)."""
    answer(w.p, seq, Fault.DROP)
    w.p.advance(wait)
    settle(w.p)
    answer(w.p, seq, Fault.DROP)
    assert w.ledger.reported[message][1] == "failed"


def j2_scenario(tmp_path: Path, *, kill: bool) -> JournalWorld:
    """The producer's epoch (1000) is above the server's (0): seq 0 is sent, gets no
    answer and times out (reported in doubt: a hole the sequencer remembers); seq 1 is
    sealed and sent; the process is killed (``kill``) before its answer."""
    w = world(tmp_path, earlier_run=1, auto_claim=True, fresh=True)
    w.append(0)
    settle(w.p)
    _time_out_in_doubt(w, 0, b"<0.0>", wait=10.0)
    w.append(0)
    settle(w.p)
    assert [(r.epoch, r.seq) for r in w.p.wire if r.kind == "post"] == [(1000, 1)]
    if kill:
        w.crash(random.Random(0), fate="lost")
        settle(w.p)  # the next producer resends (1000, 1) from the journal
    answer(w.p, 1)  # 400: a new epoch must start with seq 0
    return w


def test_j2_control_without_a_kill(tmp_path: Path) -> None:
    """Without the kill, the 400 confirms the hole: seq 1 moves to a new epoch and is
    delivered."""
    w = j2_scenario(tmp_path, kill=False)
    w.finish()
    assert w.ledger.reported[b"<0.1>"][1] == "acked"
    assert w.stored() == [b"<0.1>"]


def test_j2_a_replayed_batch_moves_to_a_new_epoch_after_the_new_epoch_400(
        tmp_path: Path) -> None:
    """J2 (fixed): the hole at seq 0 (failed in doubt before the kill) is journaled
    (``Replay.holes``); after the reopen the 400 "new epoch must start with sequence 0"
    for the replayed seq 1 confirms it, as without the kill: seq 1 moves to a new epoch
    and is delivered."""
    w = j2_scenario(tmp_path, kill=True)
    assert w.jp.replay.holes == [0]
    w.finish()
    assert w.ledger.reported[b"<0.1>"][:2] == (1, "acked")
    assert w.stored() == [b"<0.1>"]


def test_a_hole_above_seq_0_confirmed_by_a_409_after_the_kill(tmp_path: Path) -> None:
    """J2's other shape: seq 0 stored, seq 1 timed out in doubt (a hole), seq 2 pending
    when the process is killed. After the reopen the 409 naming seq 1 confirms the hole
    (journaled) and seq 2 moves to a new epoch, instead of failing with a sequence gap."""
    w = world(tmp_path)
    w.append(0)
    settle(w.p)
    answer(w.p, 0)
    w.append(0)
    settle(w.p)
    _time_out_in_doubt(w, 1, b"<0.1>", wait=30.0)
    w.append(0)
    settle(w.p)
    assert [(r.epoch, r.seq) for r in w.p.wire if r.kind == "post"] == [(0, 2)]
    w.crash(random.Random(0), fate="lost")
    assert w.jp.replay.holes == [1]
    settle(w.p)
    answer(w.p, 2)  # 409: the server expects seq 1
    w.finish()
    assert w.ledger.reported[b"<0.2>"][:2] == (1, "acked")
    assert w.stored() == [b"<0.0>", b"<0.2>"]


# -- scripted: what a kill leaves, and what the next producer makes of it ---------------------

def test_a_batch_stored_before_the_kill_is_acknowledged_once(tmp_path: Path) -> None:
    """Stored, answer lost, killed: the next producer resends it with its journaled
    (epoch, seq), the server deduplicates, and it is acknowledged (by the second
    generation), stored once; the message appended after the reopen follows it."""
    w = world(tmp_path)
    w.append(0)
    settle(w.p)
    w.crash(random.Random(0), fate="stored")
    assert w.jp.replayed == 1
    w.append(0)
    w.finish()
    assert w.stored() == [b"<0.0>", b"<0.1>"]
    assert w.ledger.reported[b"<0.0>"] == (1, "acked", None)


def test_what_an_abandoned_close_left_is_delivered_by_the_next_producer(
        tmp_path: Path) -> None:
    """close(timeout) gave up: the messages are reported failed and stay journaled; the
    next producer delivers them (once), and nothing is reported twice."""
    w = world(tmp_path)
    for _ in range(3):
        w.append(0)
    settle(w.p)
    answer(w.p, 0)
    w.jp.abandon()
    while w.p.wire:  # the requests of seqs 1 and 2 get no answer before the exit
        w.p.handle(0, Fault.DROP)
    settle(w.p)
    failed = set(w.p.book.failed)
    assert failed == {b"<0.1>", b"<0.2>"}
    w.crash(random.Random(0), fate="lost")
    assert w.jp.replayed == 2
    w.finish()
    assert w.stored() == [b"<0.0>", b"<0.1>", b"<0.2>"]
    assert {m: r[:2] for m, r in w.ledger.reported.items()} == {
        b"<0.0>": (0, "acked"), b"<0.1>": (1, "acked"), b"<0.2>": (1, "acked")}


def test_a_torn_append_is_not_replayed(tmp_path: Path) -> None:
    """Killed inside append() (its record torn at every possible byte, one per run): the
    message is never delivered; the one accepted before it is, once."""
    for cut in range(40):
        path = tmp_path / str(cut)
        path.mkdir()
        w = world(path)
        w.append(1)
        w.crash(random.Random(cut), torn=True)
        assert w.ledger.torn or w.stats["torn record whole"]
        w.finish()
        assert w.stored()[:1] == [b"<1.0>"]
        assert not set(w.stored()) & w.ledger.torn


def test_the_kill_lets_the_journal_lock_go(tmp_path: Path) -> None:
    """While a generation lives, a second producer on its journal is refused; the kill
    releases the lock as the death of the process does (the next generation opens it)."""
    w = world(tmp_path)
    with pytest.raises(errors.JournalError) as info:
        Journal.open(w.directory, stream=URL, producer_id=w.p.producer_id, max_bytes=1 << 30)
    assert info.value.code == "JOURNAL_LOCKED"
    w.crash(random.Random(0))
    assert len(w.generations) == 2
    w.finish()
