"""Scripted scenarios of the producer's decisions (PROTOCOL §5.2.1) against the simulated
server: the real Sequencer and Accumulator, simulated senders, one fault at a time.

Each test ends with ``drain()`` (stop; deliver everything without faults) and
``check_final()`` (exactly once, per-thread order, every batch settled), with no known bug
tolerated. The test_b* scenarios pin down the bugs found by the state machine
(B1-B7), each fixed; every scenario below says what went wrong and what it checks.
"""

from __future__ import annotations

import pytest

from durable_streams import errors
from durable_streams._producer.outcome import Kind
from durable_streams._producer.sequencer import Phase, Sequencer

from .sim_producer import PID, SimProducer, in_doubt
from .sim_server import RETRY, URL, Fault, OtherWriter, SimServer, previous_run


def make(*, json_mode: bool = False, earlier_run: int = 0, **kw: object) -> SimProducer:
    server = SimServer(json_mode=json_mode)
    if earlier_run:
        previous_run(server, PID, 0, earlier_run)
    kw.setdefault("linger", 0.0)
    kw.setdefault("max_batch_bytes", 8 if json_mode else 5)  # one message per batch
    return SimProducer(server, **kw)  # type: ignore[arg-type]


def settle(p: SimProducer, *, heads: bool = True, rounds: int = 20) -> None:
    """Run every sender until it waits (answering HEADs and reads unless ``heads`` is
    False); POSTs stay on the wire for the test to answer."""
    for _ in range(rounds):
        if heads:
            while any(r.kind != "post" for r in p.wire):
                p.handle(next(i for i, r in enumerate(p.wire) if r.kind != "post"))
        for i in p.runnable():
            p.resume(i)


def answer(p: SimProducer, seq: int, fault: Fault = Fault.NONE, *, epoch: int | None = None,
           then_settle: bool = True) -> Kind:
    """The server handles the POST with this seq (and epoch) that is on the wire."""
    k = next(i for i, r in enumerate(p.wire) if r.kind == "post" and r.seq == seq
             and (epoch is None or r.epoch == epoch))
    req = p.handle(k, fault)
    if then_settle:
        settle(p)
    assert req.outcome is not None
    return req.outcome.kind


def finish(p: SimProducer) -> None:
    p.drain()
    p.check_final()


def stored(p: SimProducer) -> list[bytes]:
    return p.stored_ours()


# -- deliveries that must work -------------------------------------------------------------

def test_plain_pipeline_stores_in_order() -> None:
    p = make(max_in_flight=3)
    for n in range(5):
        p.append(0, n)
    for _ in range(5):
        settle(p)
        while p.wire:
            answer(p, p.wire[0].seq)
    finish(p)
    assert stored(p) == [f"<0.{n}>".encode() for n in range(5)]
    assert p.seq.phase is Phase.STEADY and p.counters.duplicates == 0


def test_lost_first_answer_then_204_is_checked_against_the_stream() -> None:
    """Seq 0 stored but its answer lost; the retry gets 204. Nothing else of ours is stored
    in this epoch yet, so the producer reads the stream after its tail probe, finds its data
    and acknowledges it as a duplicate (§5.2.1: 204 = already stored)."""
    p = make()
    p.append(0, 0)
    settle(p)
    assert answer(p, 0, Fault.LOSE) is Kind.TRANSPORT
    p.advance(1.0)
    settle(p)
    assert answer(p, 0) is Kind.DUPLICATE
    assert p.book.acked == {b"<0.0>"}
    assert p.stats["checked:True"] == 1 and p.counters.duplicates == 1
    finish(p)
    assert stored(p) == [b"<0.0>"]


def test_lost_first_answer_with_a_fresh_epoch_believes_the_204() -> None:
    """With an epoch from the clock (auto_claim, no epoch given) nobody else can have used
    (id, epoch): the 204 is believed without reading the stream."""
    p = make(auto_claim=True, fresh_epoch=True, epoch=1_700_000_000_000)
    p.append(0, 0)
    settle(p)
    answer(p, 0, Fault.LOSE)
    p.advance(1.0)
    settle(p)
    assert answer(p, 0) is Kind.DUPLICATE
    assert p.book.acked == {b"<0.0>"} and not any(k.startswith("checked") for k in p.stats)
    finish(p)


def test_409_hole_then_fill() -> None:
    """Seq 1 overtakes seq 0 on the wire: 409 (expected 0). The producer waits for seq 0,
    then sends seq 1 again: both stored once, in order."""
    p = make(max_in_flight=2)
    p.append(0, 0)
    p.append(0, 1)
    settle(p)
    p.write(0)  # seq 0's body is on its socket: seq 1 may start
    settle(p)
    assert answer(p, 1) is Kind.SEQ_GAP
    assert p.stats["SEQ_GAP->WAIT_EARLIER"] == 1
    assert answer(p, 0) is Kind.OK
    assert answer(p, 1) is Kind.OK
    finish(p)
    assert stored(p) == [b"<0.0>", b"<0.1>"]


def test_zombie_request_arriving_late_is_a_harmless_duplicate() -> None:
    p = make()
    p.append(0, 0)
    settle(p)
    answer(p, 0, Fault.ZOMBIE)
    p.advance(1.0)
    settle(p)
    assert answer(p, 0) is Kind.OK
    p.zombie_arrives(0)  # the first attempt reaches the server after all: 204, ignored
    finish(p)
    assert stored(p) == [b"<0.0>"]


def test_server_restart_with_one_committed_request() -> None:
    p = make(max_in_flight=2)
    p.append(0, 0)
    p.append(1, 0)
    settle(p)
    p.write(0)
    settle(p)
    assert len([r for r in p.wire if r.kind == "post"]) == 2
    p.restart_server([True, False])  # seq 0 committed, seq 1 not; neither answered
    finish(p)
    assert sorted(stored(p)) == [b"<0.0>", b"<1.0>"]


def test_fenced_without_auto_claim_fails_everything_and_refuses_appends() -> None:
    p = make()
    p.append(0, 0)
    settle(p)
    answer(p, 0)
    other = OtherWriter(p.server, PID)
    other.claim()
    p.append(0, 1)
    settle(p)
    assert answer(p, 1) is Kind.FENCED
    assert isinstance(p.stopped_with, errors.StaleEpochError)
    assert p.stopped_with.current_epoch == 1
    assert p.seq.phase is Phase.FAILED
    assert b"<0.1>" in p.book.failed
    assert not p.append(0, 2)  # refused: the producer is stopped
    finish(p)
    assert stored(p) == [b"<0.0>"]


def test_fenced_with_auto_claim_verifies_in_doubt_batches() -> None:
    """Seq 1 is stored but its answer is lost; then a second writer claims the id. The
    producer is fenced (403), claims a higher epoch, looks for seq 1 in the stream after
    its tail probe (VERIFY: found, acknowledged) and re-sequences the rest."""
    p = make(auto_claim=True, max_in_flight=2)
    p.append(0, 0)
    settle(p)
    answer(p, 0)
    assert p.seq.phase is Phase.STEADY
    p.append(0, 1)
    p.append(0, 2)
    settle(p)
    answer(p, 1, Fault.LOSE)  # stored, answer lost: seq 2 waits for the retry
    OtherWriter(p.server, PID).claim()
    p.advance(1.0)
    settle(p)
    p.write(0)  # seq 1's retry is written: seq 2 follows
    settle(p)
    assert answer(p, 2) is Kind.FENCED
    assert answer(p, 1, epoch=0) is Kind.FENCED
    assert p.stats["verified:True"] == 1
    assert (Phase.DRAINING, Phase.VERIFYING) in p.seq.transitions
    finish(p)
    assert stored(p) == [b"<0.0>", b"<0.1>", b"<0.2>"]
    assert p.seq.epoch >= 2


def test_earlier_run_with_the_same_epoch_is_detected() -> None:
    """An earlier run of the job left (id, epoch 0, seq 0..1). Our seq 0 gets a 204 that is
    not about our data: without auto_claim the producer stops with a StaleEpochError
    instead of believing it (which would drop the message)."""
    p = make(earlier_run=2)
    p.append(0, 0)
    settle(p)
    assert answer(p, 0) is Kind.DUPLICATE
    assert isinstance(p.stopped_with, errors.StaleEpochError)
    assert "already used by another writer" in str(p.stopped_with)
    assert p.book.failed.keys() == {b"<0.0>"}
    finish(p)


def test_earlier_run_with_auto_claim_moves_to_a_new_epoch() -> None:
    p = make(earlier_run=2, auto_claim=True)
    p.append(0, 0)
    settle(p)
    assert answer(p, 0) is Kind.DUPLICATE
    finish(p)
    assert stored(p) == [b"<0.0>"]
    assert p.server.producers[PID].epoch == 1


def test_delivery_deadline_fails_the_batch_and_the_next_one_gets_a_new_epoch() -> None:
    """429 until the delivery deadline: the batch fails with a timeout error (nothing was
    stored, so no doubt). Its seq is now a hole: the next batch moves to epoch 1."""
    p = make(delivery_timeout=5.0)
    p.append(0, 0)
    settle(p)
    answer(p, 0, Fault.RATE_LIMITED)
    p.advance(6.0)
    settle(p)
    answer(p, 0, Fault.RATE_LIMITED)
    err = p.book.failed[b"<0.0>"]
    assert isinstance(err, errors.RateLimitedError) and "timed out" in str(err)
    assert not in_doubt(err)
    p.append(0, 1)
    finish(p)
    assert stored(p) == [b"<0.1>"]
    assert p.server.log[-1].epoch == 1 and p.server.log[-1].seq == 0


def test_json_400_splits_the_batch_and_keeps_the_seq() -> None:
    """JSON mode: one invalid message in a batch of three gets the request a 400 (the seq is
    not consumed); the producer reports the invalid one and resends the others with the
    same (epoch, seq)."""
    p = make(json_mode=True, max_batch_bytes=1000)
    p.append(0, 0)
    p.append(0, 1, valid=False)
    p.append(0, 2)
    settle(p)
    assert answer(p, 0) is Kind.BAD_REQUEST
    assert p.book.failed.keys() == {b"{bad 0.1"}
    assert p.book.failed[b"{bad 0.1"].code == "INVALID_JSON"
    assert answer(p, 0) is Kind.OK
    assert p.server.log[-1].seq == 0
    finish(p)
    assert stored(p) == [b'"0.0"', b'"0.2"']


def test_probe_answered_after_an_epoch_change_does_not_spin() -> None:
    """(B5, fixed in wt-producer ebb2ed0) Seq 0 waits for its tail probe while seq 1
    overtakes (after the 2 s turn wait), times out and opens a hole: a new epoch. The late
    HEAD answer for the old generation must not send the sender into a HEAD loop."""
    p = make(max_in_flight=2, delivery_timeout=5.0)
    p.append(0, 0)
    p.append(0, 1)
    settle(p, heads=False)
    p.advance(2.5)
    settle(p, heads=False)
    answer(p, 1, Fault.RATE_LIMITED, then_settle=False)
    p.advance(6.0)  # the 429 is handled past the deadline: failed, a hole, a new epoch
    settle(p, heads=False)
    assert p.seq.gen == 1 and b"<0.1>" in p.book.failed
    heads = sum(r.kind == "head" for r in p.wire)
    settle(p)  # the old HEAD is answered now
    assert p.stats["HEAD"] <= 3  # no HEAD loop for the old generation
    finish(p)
    assert stored(p) == [b"<0.0>"]
    assert heads >= 1


def test_close_stream_retried_after_a_lost_answer_is_deduplicated() -> None:
    p = make()
    p.append(0, 0)
    settle(p)
    answer(p, 0)
    offset = p.close_stream([Fault.LOSE, Fault.UNAVAILABLE])
    p.check_closed(offset)
    assert p.server.closed_by == (PID, 0, 1)


def test_close_stream_fenced_with_auto_claim_claims_and_closes() -> None:
    p = make(auto_claim=True)
    p.append(0, 0)
    settle(p)
    answer(p, 0)
    OtherWriter(p.server, PID).claim()
    offset = p.close_stream([])
    p.check_closed(offset)
    assert p.server.closed_by == (PID, 2, 0)


def test_close_stream_fenced_without_auto_claim_raises() -> None:
    p = make()
    p.append(0, 0)
    settle(p)
    answer(p, 0)
    OtherWriter(p.server, PID).claim()
    with pytest.raises(errors.StaleEpochError):
        p.close_stream([])
    assert p.server.closed_by is None


# -- known bugs (B1-B7) -----------------------------------------------------------------------

def test_b1_timeout_after_proxy_502_says_it_may_be_stored() -> None:
    p = make(delivery_timeout=5.0)
    p.append(0, 0)
    settle(p)
    answer(p, 0, Fault.PROXY_502)  # the origin stored it; a proxy answered 502
    p.advance(6.0)
    settle(p)
    answer(p, 0, Fault.RATE_LIMITED)
    err = p.book.failed[b"<0.0>"]
    assert stored(p) == [b"<0.0>"]
    assert in_doubt(err) and err.maybe_stored, str(err)


def test_b1_fenced_after_a_lost_answer_acknowledges_the_batch_found_stored() -> None:
    """Stored, its answer lost, then fenced: the stream after the tail probe shows it,
    so it is acknowledged (stored once; flush() does not report it), not failed."""
    p = make()
    p.append(0, 0)
    settle(p)
    answer(p, 0)
    p.append(0, 1)
    settle(p)
    answer(p, 1, Fault.LOSE)  # stored, answer lost
    OtherWriter(p.server, PID).claim()
    p.advance(1.0)
    settle(p)
    assert answer(p, 1) is Kind.FENCED
    assert isinstance(p.stopped_with, errors.StaleEpochError)
    assert b"<0.1>" in p.book.acked and b"<0.1>" not in p.book.failed
    assert stored(p) == [b"<0.0>", b"<0.1>"]


def test_b2_batch_after_doubtful_seq0_of_a_new_epoch_is_not_failed() -> None:
    p = make(auto_claim=True, fresh_epoch=True, epoch=1_700_000_000_000, delivery_timeout=5.0,
             earlier_run=1)  # the server knows the id at a lower epoch
    p.append(0, 0)
    settle(p)
    answer(p, 0, Fault.DROP)  # no answer: seq 0 may be stored (it is not)
    p.advance(6.0)
    settle(p)
    answer(p, 0, Fault.DROP)  # deadline: failed, in doubt
    assert in_doubt(p.book.failed[b"<0.0>"])
    p.append(0, 1)
    settle(p)
    assert answer(p, 1) is Kind.BAD_REQUEST  # §5.2.1: epoch > server's with seq != 0
    finish(p)
    assert b"<0.1>" not in p.book.failed, str(p.book.failed.get(b"<0.1>"))
    assert stored(p) == [b"<0.1>"]


def test_b3_204_after_a_200_that_continued_an_earlier_run() -> None:
    p = make(earlier_run=1, max_in_flight=2)  # the earlier run stored (id, 0, 0)
    p.append(0, 0)
    p.append(0, 1)
    settle(p)
    p.write(0)
    p.resume(p.holder(1))  # seq 1 goes out once seq 0's body is written
    answer(p, 0, Fault.DROP, then_settle=False)  # not stored, no answer
    answer(p, 1, then_settle=False)  # 200: the server sees it as the earlier run's seq 1
    settle(p)
    p.advance(1.0)
    settle(p)
    answer(p, 0)  # 204 (the earlier run's seq 0) -> acknowledged: <0.0> is lost
    finish(p)


def test_b4_hole_after_a_lost_answer_duplicates_the_earlier_batch() -> None:
    p = make(json_mode=True, max_in_flight=3)
    p.append(0, 0)
    settle(p)
    answer(p, 0)
    p.append(0, 1)
    p.append(0, 2, valid=False)
    settle(p)
    answer(p, 1, Fault.LOSE, then_settle=False)  # stored; answer lost; body written
    p.resume(p.holder(2))  # seq 2 goes out before seq 1's sender sees its failure
    answer(p, 2)  # 400 invalid JSON -> a hole -> epoch 1; seq 1 is re-sequenced
    finish(p)  # duplicates in the stream: "0.1" stored at epoch 0 and at epoch 1


def test_b4_deadline_hole_after_a_lost_answer_duplicates_the_earlier_batch() -> None:
    p = make(max_in_flight=3, delivery_timeout=5.0)
    p.append(0, 0)
    settle(p)
    answer(p, 0)
    p.append(0, 1)
    p.append(0, 2)
    settle(p)
    answer(p, 1, Fault.LOSE, then_settle=False)  # stored; answer lost; body written
    p.resume(p.holder(2))  # seq 2 goes out right behind it
    answer(p, 2, Fault.RATE_LIMITED, then_settle=False)
    p.resume(p.holder(1))  # seq 1: no answer -> retry after a short sleep
    p.advance(6.0)  # past both deadlines
    p.resume(p.holder(2))  # seq 2's 429 is handled first: timed out, a hole -> epoch 1
    assert p.seq.gen == 1
    finish(p)  # seq 1's sender wakes, its batch is parked and renumbered: stored twice


def test_b6_probe_after_a_send_of_the_generation_is_not_used() -> None:
    from durable_streams._producer.batch import Batch

    class Sink:
        def acked(self, *a: object) -> None: ...

        def failed(self, *a: object) -> None: ...

        def stopped(self, *a: object) -> None: ...

    sq = Sequencer(producer_id=PID, url=URL, epoch=0, auto_claim=False, fresh_epoch=False,
                   max_in_flight=2, retry=RETRY, delivery_timeout=10.0, sink=Sink())
    b0 = Batch([b"a"], 1, 0, b"a", 10.0)
    b1 = Batch([b"b"], 1, 1, b"b", 10.0)
    assert sq.admit(b0) and sq.admit(b1)
    assert sq.needs_probe(b0)
    sq.start_attempt(b1)  # seq 1 went out first (after the 2 s turn wait)
    sq.probe_done(0, "0000000000000000_0000000000000009", early=False)
    assert 0 not in sq.probes


@pytest.mark.parametrize("earlier", [1, 2])
def test_b7_close_answered_by_a_plain_duplicate_is_not_success(earlier: int) -> None:
    """B7: a close-only POST whose (epoch, seq) is a plain duplicate of an earlier run's
    data gets 204 (+ Stream-Closed: true from the reference server) but closes nothing:
    without auto_claim that is another writer's epoch, not a success. (With one earlier
    message the 204's Producer-Seq is the closing seq itself: only a HEAD tells.)"""
    p = make(earlier_run=earlier)  # an earlier run left (id, epoch 0, seq 0..earlier-1)
    with pytest.raises(errors.StaleEpochError, match="closing seq 0 as a duplicate"):
        p.close_stream([])
    assert p.server.closed_by is None


def test_b7_close_answered_by_a_plain_duplicate_claims_with_auto_claim() -> None:
    p = make(earlier_run=2, auto_claim=True)
    offset = p.close_stream([])
    p.check_closed(offset)
    assert p.server.closed_by == (PID, 1, 0)


def test_b7_retried_close_is_checked_with_a_head() -> None:
    """A 204 to a retry of a close whose answer was lost is ours only if the stream is
    closed (a HEAD), even when the server's last seq equals the closing seq."""
    p = make()
    p.append(0, 0)
    settle(p)
    answer(p, 0)
    heads = p.stats["HEAD"]
    offset = p.close_stream([Fault.LOSE])
    p.check_closed(offset)
    assert p.server.closed_by == (PID, 0, 1)
    assert p.stats["HEAD"] == heads + 1
