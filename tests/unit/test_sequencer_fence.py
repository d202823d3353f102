"""Without a server: the rules are pure decisions the sequencer applies, and after a fence
(PROTOCOL §5.2.1: a 403 naming a higher epoch; nothing more is stored under ours) each
batch in doubt, such as one taken over from a reopened journal, is looked for in the
stream after its generation's tail probe before it is reported: ``maybe_stored=True``
only where that cannot tell."""

from __future__ import annotations

import pytest

from durable_streams import _protocol as P
from durable_streams import errors
from durable_streams._producer import journal_format as F
from durable_streams._producer import rules
from durable_streams._producer.batch import Batch, BatchState
from durable_streams._producer.changes import Fatal
from durable_streams._producer.journal_replay import ReplayBuilder
from durable_streams._producer.outcome import Kind, Outcome
from durable_streams._producer.sequencer import Act, Phase, Sequencer, Work

from .sim_producer import PID, SimProducer, in_doubt
from .sim_server import Fault, OtherWriter
from .test_sequencer import Sink, answer, make, new_batch
from .test_sequencer_scenarios import answer as sim_answer
from .test_sequencer_scenarios import make as scenario
from .test_sequencer_scenarios import settle


class Journal:
    """What the sequencer tells a journal (the batches it resolves)."""

    def __init__(self) -> None:
        self.resolved_: list[tuple[int, bool]] = []
        self.proven_: list[int] = []

    def resolved(self, batch: Batch, *, acked: bool) -> None:
        self.resolved_.append((batch.seq, acked))

    def admitted(self, batch: Batch) -> None:
        pass

    def sealed(self, batches: list[Batch], json_body: bool) -> None:
        pass

    def probed(self, epoch: int, offset: str) -> None:
        pass

    def proven(self, epoch: int) -> None:
        self.proven_.append(epoch)


def fenced(epoch: int) -> Outcome:
    return answer(403, {P.PRODUCER_EPOCH: str(epoch)})


def journaled(*seqs: int, next_seq: int = 6, owned: bool = False,
              holes: list[int] | None = None
              ) -> tuple[Sequencer, Sink, Journal, list[Batch]]:
    """A producer taking over a journal at epoch 0 whose batches ``seqs`` are pending
    (``owned``: the journal recorded that a 200 proved epoch 0 ours)."""
    seq, sink = make()
    journal = Journal()
    batches = []
    for n in seqs:
        b = new_batch(f"<{n}>".encode())
        b.epoch, b.seq = 0, n
        batches.append(b)
    seq.take_over(journal, epoch=0, next_seq=next_seq, probe="0_0",  # type: ignore[arg-type]
                  batches=batches, owned=owned, holes=holes)
    return seq, sink, journal, batches


def resend(seq: Sequencer, batch: Batch) -> None:
    task = seq.next_work(False, 0.0, 0.0)
    assert task.work is Work.RESEND and task.batch is batch
    assert seq.check(batch) and seq.turn_ok(batch)
    seq.start_attempt(batch)
    seq.written(batch.gen, batch.seq)


def test_a_rule_changes_nothing_and_says_what_changes() -> None:
    seq, sink, _, (b,) = journaled(4, next_seq=5)
    resend(seq, b)
    d = rules.on_outcome(seq, b, fenced(7), 1.0)
    assert seq.fatal is None and seq.phase is Phase.STEADY and b.state is BatchState.ACTIVE
    assert not sink.fails and not sink.stops
    assert d.act is Act.DONE and len(d.changes) == 1
    change = d.changes[0]
    assert isinstance(change, Fatal) and change.fenced_by == 7
    assert isinstance(change.error, errors.StaleEpochError)
    # a 403 naming no epoch proves nothing about later stores
    d = rules.on_outcome(seq, b, answer(403), 1.0)
    assert len(d.changes) == 1 and isinstance(d.changes[0], Fatal)
    assert d.changes[0].fenced_by is None


def test_take_over_resumes_at_the_journal_epoch() -> None:
    seq, _, journal, (b4, b5) = journaled(4, 5)
    assert (seq.epoch, seq.next_seq, seq.probes[0]) == (0, 6, "0_0")
    assert seq.journal is journal  # type: ignore[comparison-overlap]
    assert list(seq.resend) == [b4, b5] and seq.unwritten == {4, 5}
    assert all(b.maybe_stored and b.gen == 0 and b.state is BatchState.QUEUED
               for b in (b4, b5))
    with pytest.raises(ValueError, match="not a batch of epoch 3"):
        make()[0].take_over(journal, epoch=3, next_seq=6, probe=None,  # type: ignore[arg-type]
                            batches=[b4])


def duplicate(seq: int) -> Outcome:
    return answer(204, {P.PRODUCER_EPOCH: "0", P.PRODUCER_SEQ: str(seq)})


def test_a_204_for_a_journaled_batch_is_ours_only_where_the_journal_proved_it() -> None:
    """J1: a journal whose epoch a 200 proved ours (``owned``): the 204 for a replayed
    batch acknowledges it. Otherwise the server's state at that (id, epoch) may be
    another writer's: the batch is looked for after the journaled probe first."""
    seq, sink, _, (b,) = journaled(4, next_seq=5, owned=True)
    resend(seq, b)
    assert seq.on_outcome(b, duplicate(4), 1.0).act is Act.DONE
    assert [(a is b, dup) for a, _, dup in sink.acks] == [(True, True)]
    seq, sink, _, (b,) = journaled(4, next_seq=5)
    resend(seq, b)
    d = seq.on_outcome(b, duplicate(4), 1.0)
    assert d.act is Act.CHECK_STORED and d.offset == "0_0" and not sink.acks
    seq.checked(b, duplicate(4), False, 1.0)  # not in the stream: not ours
    assert not sink.acks and isinstance(sink.fails[0][1], errors.StaleEpochError)
    assert sink.fails[0][1].maybe_stored is False


def test_a_200_that_proves_the_epoch_ours_is_told_to_the_journal() -> None:
    seq, _, journal, (b4, b5) = journaled(4, 5)
    resend(seq, b4)
    resend(seq, b5)
    seq.on_outcome(b5, answer(200, {P.STREAM_NEXT_OFFSET: "0_9"}), 1.0)
    assert journal.proven_ == []  # seq 4 is not acknowledged yet: proves nothing
    seq.on_outcome(b4, duplicate(4), 1.0)
    seq.checked(b4, duplicate(4), True, 1.0)
    b6 = new_batch(b"<6>")
    assert seq.next_work(True, 0.0, 1.0).work is Work.SEAL and seq.admit(b6)
    assert seq.check(b6) and seq.turn_ok(b6)
    seq.start_attempt(b6)
    seq.on_outcome(b6, answer(200, {P.STREAM_NEXT_OFFSET: "0_12"}), 1.0)
    assert journal.proven_ == [0]


def test_a_journaled_hole_is_confirmed_by_the_new_epoch_400_of_each_later_seq() -> None:
    """J2: the journal's hole at seq 0 is doubtful again after the take-over. The 400 "new
    epoch must start with sequence 0" for seq 1 confirms it (a new epoch is claimed); the
    same 400 for seq 2, answered after that claim, is no bad body either: both batches
    are renumbered, none is failed."""
    seq, sink, _, (b1, b2) = journaled(1, 2, next_seq=3, holes=[0])
    assert seq.doubtful == {(0, 0)}
    resend(seq, b1)
    resend(seq, b2)
    assert seq.on_outcome(b1, answer(400), 1.0).act is Act.DONE
    assert seq.epoch == 1 and seq.phase is Phase.DRAINING and b1 in seq.parked
    assert seq.on_outcome(b2, answer(400), 1.0).act is Act.DONE
    assert not sink.fails and b2 in seq.parked and not b2.maybe_stored
    seq.finish_work()
    seq.finish_work()
    while seq.phase is not Phase.UNCONFIRMED:  # b1 was sent in doubt: looked for first
        assert seq.next_work(False, 0.0, 1.0).work is Work.VERIFY
        for b in seq.verify_candidates():
            seq.verified(b, False)
        seq.finish_work()
    assert [(b.epoch, b.seq) for b in seq.resend] == [(1, 0), (1, 1)]
    with pytest.raises(ValueError, match="holes"):
        journaled(1, next_seq=2, holes=[2])


@pytest.mark.parametrize(("found", "maybe_stored"), [(False, False), (None, True),
                                                     (True, None)])
def test_after_a_fence_journaled_batches_are_settled_by_the_stream(
        found: bool | None, maybe_stored: bool | None) -> None:
    """Found in the stream: acknowledged (``maybe_stored`` None: not reported); not found:
    failed as not stored; the stream could not be read: failed, maybe stored."""
    seq, sink, journal, (b4, b5) = journaled(4, 5)
    resend(seq, b4)
    assert seq.on_outcome(b4, fenced(7), 1.0).act is Act.DONE
    assert seq.phase is Phase.FAILED and isinstance(seq.fatal, errors.StaleEpochError)
    # nothing reported yet: both wait to be looked for, once the request is finished
    assert not sink.fails and set(seq.parked) == {b4, b5} and len(sink.stops) == 1
    assert seq.next_work(False, 0.0, 1.0).work is Work.WAIT
    seq.finish_work()
    assert seq.next_work(False, 0.0, 1.0).work is Work.VERIFY
    assert seq.verify_candidates() == [b4, b5]
    seq.verified(b4, found)
    seq.verified(b5, False)
    seq.finish_work()
    if maybe_stored is None:
        assert [(a is b4, dup) for a, _, dup in sink.acks] == [(True, True)]
        assert [m for m, _ in sink.fails] == [[b"<5>"]]
        (_, e5), = sink.fails
    else:
        assert not sink.acks
        assert [m for m, _ in sink.fails] == [[b"<4>"], [b"<5>"]]
        (_, e4), (_, e5) = sink.fails
        assert isinstance(e4, errors.StaleEpochError) and e4.maybe_stored is maybe_stored
        assert ("may have been stored" in str(e4)) is maybe_stored
    assert isinstance(e5, errors.StaleEpochError) and e5.maybe_stored is False
    assert journal.resolved_ == [(4, found is True), (5, False)] and not seq.parked
    seq.stopping = True
    assert seq.next_work(False, 0.0, 1.0).work is Work.STOP


def test_a_batch_answered_after_the_fence_is_looked_for_too() -> None:
    seq, sink, _, (b4, b5) = journaled(4, 5)
    resend(seq, b4)
    resend(seq, b5)  # pipelined: both on the wire
    seq.on_outcome(b4, fenced(7), 1.0)
    seq.finish_work()
    assert seq.next_work(False, 0.0, 1.0).work is Work.WAIT  # b5 is still in flight
    seq.on_outcome(b5, fenced(7), 1.0)
    seq.finish_work()
    assert not sink.fails and seq.next_work(False, 0.0, 1.0).work is Work.VERIFY
    for b in seq.verify_candidates():
        seq.verified(b, False)
    assert [e.maybe_stored for _, e in sink.fails] == [False, False]


def test_without_a_tail_probe_a_fenced_batch_is_reported_in_doubt_at_once() -> None:
    seq, sink = make()
    b = new_batch(b"<0>")
    b.epoch, b.seq = 0, 0
    seq.take_over(Journal(), epoch=0, next_seq=1, probe=None,  # type: ignore[arg-type]
                  batches=[b])
    resend(seq, b)
    seq.on_outcome(b, fenced(7), 1.0)
    assert b.state is BatchState.FAILED and sink.fails[0][1].maybe_stored is True


def test_a_403_not_above_the_batch_epoch_fails_it_in_doubt_at_once() -> None:
    seq, sink, _, (b,) = journaled(4, next_seq=5)
    resend(seq, b)
    seq.on_outcome(b, fenced(0), 1.0)  # not a fence of epoch 0: it proves nothing
    assert b.state is BatchState.FAILED and sink.fails[0][1].maybe_stored is True


def test_a_later_stop_reports_the_batches_still_to_look_for() -> None:
    seq, sink, _, (b4, b5) = journaled(4, 5)
    resend(seq, b4)
    seq.on_outcome(b4, fenced(7), 1.0)
    seq.stop(errors.ProducerClosedError("closed"))  # close() gives up waiting
    assert [m for m, _ in sink.fails] == [[b"<4>"], [b"<5>"]] and not seq.parked
    assert all(isinstance(e, errors.StaleEpochError) and e.maybe_stored
               for _, e in sink.fails)
    seq.finish_work()
    assert seq.next_work(False, 0.0, 1.0).work is Work.WAIT


def test_a_journal_with_a_batch_pending_at_an_older_epoch_is_corrupt() -> None:
    builder = ReplayBuilder()
    builder.segment(F.SegmentInfo("s", "p", 0, 0, None, 0, None))
    builder.message(0, b"a", 0)
    builder.message(1, b"b", 0)
    builder.control(F.T_SEAL, F.encode_seal(0, [F.SealEntry(0, False, ((0, 1),))]))
    builder.control(F.T_SEAL, F.encode_seal(1, [F.SealEntry(0, False, ((1, 1),))]))
    with pytest.raises(errors.JournalError, match=r"\(epoch 0, seq 0\) in segment 0"):
        builder.result(2)


# -- against the simulated server (the real sequencer, simulated senders) -------------------

def _fenced_after(fault: Fault) -> SimProducer:
    """Seq 0 stored and acknowledged; seq 1 meets ``fault``; then another writer claims a
    higher epoch and seq 1's retry is fenced."""
    p = scenario()
    p.append(0, 0)
    settle(p)
    sim_answer(p, 0)
    p.append(0, 1)
    settle(p)
    sim_answer(p, 1, fault)
    OtherWriter(p.server, PID).claim()
    p.advance(1.0)
    settle(p)
    assert sim_answer(p, 1) is Kind.FENCED
    return p


def test_sim_fenced_after_a_request_lost_on_its_way_reports_it_not_stored() -> None:
    p = _fenced_after(Fault.DROP)  # lost before the server saw it: no answer
    err = p.book.failed[b"<0.1>"]
    assert isinstance(err, errors.StaleEpochError) and err.maybe_stored is False
    assert not in_doubt(err) and p.stored_ours() == [b"<0.0>"]
    p.drain()
    p.check_final()


def test_sim_a_request_arriving_after_the_fence_cannot_make_not_stored_a_lie() -> None:
    p = _fenced_after(Fault.ZOMBIE)  # no answer now; the request reaches the server later
    assert p.book.failed[b"<0.1>"].maybe_stored is False
    p.zombie_arrives(0)  # refused: its epoch is fenced
    assert p.stored_ours() == [b"<0.0>"]
    p.drain()
    p.check_final()
