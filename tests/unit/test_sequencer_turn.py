"""The turn of pipelined seqs behind a large batch: the window is two there (README
"Locks": the turn wait). The seq right after a large batch goes once it is written; the
later ones wait for its answer, since a large body written to its socket may still be on
its way, and a later seq that overtook it would be refused (409) and uploaded again."""

from __future__ import annotations

import dataclasses
import random

import pytest

from durable_streams import _protocol as P
from durable_streams import errors
from durable_streams._producer import sequencer as sequencer_module
from durable_streams._producer.batch import Batch
from durable_streams._producer.outcome import Outcome, transport_failure
from durable_streams._producer.sequencer import LARGE_BODY, Act, Sequencer, Work

from .sim_world import FAULTS, KNOWN_BUGS, Config, World
from .test_sequencer import answer, make, ok


def sealed(seq: Sequencer, size: int) -> Batch:
    assert seq.next_work(True, 0.0, 0.0).work is Work.SEAL
    body = b"x" * size
    batch = Batch([body], size, 0, body, 100.0)
    assert seq.admit(batch)
    return batch


def steady(seq: Sequencer, *, overtaken: bool = True) -> None:
    """Past the first acknowledgement (pipelining starts), with the window at its widest;
    ``overtaken``: a seq of the generation was overtaken already."""
    first = sealed(seq, 1)
    seq.probe_done(0, "0_0", early=False)
    seq.start_attempt(first)
    seq.written(first.gen, first.seq)
    seq.on_outcome(first, ok("0_1"), 0.0)
    seq.finish_work()
    seq.window = float(seq.max_in_flight)
    if overtaken:
        seq.overtaken(first)


def written(seq: Sequencer, batch: Batch) -> None:
    assert seq.turn_ok(batch)
    seq.start_attempt(batch)
    seq.written(batch.gen, batch.seq)


def test_behind_a_large_batch_the_window_is_two() -> None:
    seq, _ = make(max_in_flight=5)
    steady(seq)
    large, nxt, after = sealed(seq, LARGE_BODY), sealed(seq, 10), sealed(seq, 10)
    assert not seq.turn_ok(nxt)  # lower seqs are written first, as ever
    written(seq, large)
    written(seq, nxt)  # the seq right after it goes once it is written
    assert not seq.turn_ok(after)  # written to the socket is not received: wait
    seq.on_outcome(large, ok("0_2"), 0.0)
    assert seq.turn_ok(after)


def test_the_whole_window_is_used_until_a_seq_is_overtaken() -> None:
    seq, _ = make(max_in_flight=5)
    steady(seq, overtaken=False)
    large, nxt, after = sealed(seq, LARGE_BODY), sealed(seq, 10), sealed(seq, 10)
    written(seq, large)
    written(seq, nxt)
    written(seq, after)  # most servers never reorder: nothing waits behind large bodies
    # ``after`` reached the server first: 409, expecting ``large``'s seq
    gap = answer(409, {P.PRODUCER_EXPECTED_SEQ: str(large.seq),
                       P.PRODUCER_RECEIVED_SEQ: str(after.seq)}, seq=after.seq)
    assert seq.on_outcome(after, gap, 0.0).act is Act.WAIT_EARLIER
    assert seq.overtaken_gen == after.gen and seq.window == 2.5
    assert seq.turn_ok(nxt) and not seq.turn_ok(after)  # from now on: two behind it
    seq.on_outcome(large, ok("0_2"), 0.0)
    seq.on_outcome(nxt, ok("0_3"), 0.0)
    assert seq.turn_ok(after)


def test_small_batches_keep_the_whole_window() -> None:
    seq, _ = make(max_in_flight=5)
    steady(seq)
    a, b, c, d = (sealed(seq, n) for n in (LARGE_BODY - 1, LARGE_BODY, 1, 1))
    written(seq, a)
    written(seq, b)  # only a large body two or more seqs below holds a seq back
    written(seq, c)
    assert not seq.turn_ok(d)  # b is large and unanswered
    seq.on_outcome(a, ok("0_2"), 0.0)
    assert not seq.turn_ok(d)
    seq.on_outcome(b, ok("0_3"), 0.0)
    assert seq.turn_ok(d)


def test_a_large_batch_that_is_retried_still_holds_the_seqs_behind_it() -> None:
    seq, _ = make(max_in_flight=5)
    steady(seq)
    large, nxt, after = sealed(seq, 2 * LARGE_BODY), sealed(seq, 1), sealed(seq, 1)
    written(seq, large)
    written(seq, nxt)
    lost: Outcome = transport_failure(errors.TransportError("connection reset", url="u"))
    assert seq.on_outcome(large, lost, 0.0).act is Act.RETRY
    assert not seq.turn_ok(after)
    written(seq, large)
    assert not seq.turn_ok(after)
    seq.on_outcome(large, ok("0_2"), 0.0)
    assert seq.turn_ok(after)


def large_walk(seed: int) -> World:
    """``sim_world.random_walk`` with four senders, so that a window of two binds."""
    rnd = random.Random(seed)
    world = World(dataclasses.replace(Config.draw(rnd), max_in_flight=4))
    world.p.tolerate = set(KNOWN_BUGS)
    world.random_steps(rnd, 150)
    world.finish([rnd.choice(FAULTS) for _ in range(3)])
    return world


@pytest.mark.parametrize("block", range(2))
def test_random_walks_with_large_batches(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """The simulated senders (lost wake-ups detected) with most bodies counting as large:
    a sender waiting for its turn behind one is woken by its answer (or its failure, a
    new epoch, a stop)."""
    monkeypatch.setattr(sequencer_module, "LARGE_BODY", 12)
    # as if a seq of every generation had been overtaken already (the walks seldom do)
    monkeypatch.setattr(Sequencer, "overtaken_gen", property(lambda self: self.gen,
                                                             lambda self, gen: None))
    held = [0]
    large_ahead = Sequencer.large_ahead

    def counting(self: Sequencer, batch: Batch) -> bool:
        ahead = large_ahead(self, batch)
        held[0] += ahead
        return ahead

    monkeypatch.setattr(Sequencer, "large_ahead", counting)
    for seed in range(20_000 + block * 300, 20_000 + (block + 1) * 300):
        try:
            large_walk(seed)
        except AssertionError as exc:
            raise AssertionError(f"random walk seed {seed}: {exc}") from exc
    assert held[0] > 50, held  # the walks do wait behind large batches
