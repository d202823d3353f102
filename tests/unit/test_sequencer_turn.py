"""The turn of a pipelined seq after a large batch: it is sent once the large batch is
answered, not merely written to its socket (README "Locks": the turn wait), so that it
cannot overtake the large body on the way to the server (a 409 and a re-upload)."""

from __future__ import annotations

import pytest

from durable_streams import errors
from durable_streams._producer import sequencer as sequencer_module
from durable_streams._producer.batch import Batch
from durable_streams._producer.outcome import Outcome, transport_failure
from durable_streams._producer.sequencer import LARGE_BODY, Act, Sequencer, Work

from .sim_world import KNOWN_BUGS, random_walk
from .test_sequencer import make, ok


def sealed(seq: Sequencer, size: int) -> Batch:
    assert seq.next_work(True, 0.0, 0.0).work is Work.SEAL
    body = b"x" * size
    batch = Batch([body], size, 0, body, 100.0)
    assert seq.admit(batch)
    return batch


def steady(seq: Sequencer) -> None:
    """Past the first acknowledgement (pipelining starts), with the window at its widest."""
    first = sealed(seq, 1)
    seq.probe_done(0, "0_0", early=False)
    seq.start_attempt(first)
    seq.written(first.gen, first.seq)
    seq.on_outcome(first, ok("0_1"), 0.0)
    seq.finish_work()
    seq.window = float(seq.max_in_flight)


def test_a_seq_after_a_large_batch_waits_for_its_answer() -> None:
    seq, _ = make(max_in_flight=5)
    steady(seq)
    large, small = sealed(seq, LARGE_BODY), sealed(seq, 10)
    assert seq.turn_ok(large) and not seq.turn_ok(small)
    seq.start_attempt(large)
    seq.written(large.gen, large.seq)
    assert not seq.turn_ok(small)  # written to the socket is not received
    seq.on_outcome(large, ok("0_2"), 0.0)
    assert seq.turn_ok(small)


def test_a_large_batch_after_small_ones_is_pipelined() -> None:
    seq, _ = make(max_in_flight=5)
    steady(seq)
    small, large, after = sealed(seq, LARGE_BODY - 1), sealed(seq, LARGE_BODY), sealed(seq, 1)
    seq.start_attempt(small)
    seq.written(small.gen, small.seq)
    assert seq.turn_ok(large)  # only an earlier large body holds a seq back
    seq.start_attempt(large)
    seq.written(large.gen, large.seq)
    assert not seq.turn_ok(after)
    seq.on_outcome(small, ok("0_2"), 0.0)
    assert not seq.turn_ok(after)


def test_a_large_batch_that_is_retried_still_holds_the_next_seq() -> None:
    seq, _ = make(max_in_flight=5)
    steady(seq)
    large, small = sealed(seq, 2 * LARGE_BODY), sealed(seq, 1)
    seq.start_attempt(large)
    lost: Outcome = transport_failure(errors.TransportError("connection reset", url="u"))
    assert seq.on_outcome(large, lost, 0.0).act is Act.RETRY
    assert not seq.turn_ok(small)
    seq.start_attempt(large)
    seq.written(large.gen, large.seq)
    assert not seq.turn_ok(small)
    seq.on_outcome(large, ok("0_2"), 0.0)
    assert seq.turn_ok(small)


@pytest.mark.parametrize("block", range(2))
def test_random_walks_with_large_batches(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """The simulated senders (lost wake-ups detected) with most bodies counting as large:
    a sender waiting for its turn behind one is woken by its answer."""
    monkeypatch.setattr(sequencer_module, "LARGE_BODY", 12)
    large = 0
    for seed in range(20_000 + block * 300, 20_000 + (block + 1) * 300):
        try:
            world = random_walk(seed, tolerate=KNOWN_BUGS)
        except AssertionError as exc:
            raise AssertionError(f"random walk seed {seed}: {exc}") from exc
        large += sum(len(b.body) >= 12 for b in world.p.batches)
    assert large > 400, large
