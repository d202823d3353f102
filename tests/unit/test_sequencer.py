"""The producer's decision core without a server: the outcome classification and every
decision of the sequencer (PROTOCOL §5.2.1 idempotent producers: epochs, seqs, 204
duplicates, 403 fencing, 409 gaps), in every phase, driven by tables."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from requests.structures import CaseInsensitiveDict

from durable_streams import _protocol as P
from durable_streams import errors
from durable_streams._http import RetryPolicy
from durable_streams._producer.actions import ALLOWED
from durable_streams._producer.batch import Batch, BatchState
from durable_streams._producer.outcome import Kind, Outcome, classify, transport_failure
from durable_streams._producer.sequencer import Act, Phase, Sequencer, Work

URL = "http://user:pw@host/s?token=abc"
RETRY = RetryPolicy(jitter=False, initial_delay_ms=100, max_delay_ms=1000)
CLOCK_EPOCH = 1_700_000_000_000


class Sink:
    """Records what the sequencer reports."""

    def __init__(self) -> None:
        self.acks: list[tuple[Batch, str, bool]] = []
        self.fails: list[tuple[list[bytes], errors.DurableStreamError]] = []
        self.stops: list[errors.DurableStreamError] = []

    def acked(self, batch: Batch, offset: str, duplicate: bool) -> None:
        self.acks.append((batch, offset, duplicate))

    def failed(self, messages: list[bytes], err: errors.DurableStreamError, nbytes: int) -> None:
        self.fails.append((list(messages), err))

    def stopped(self, err: errors.DurableStreamError) -> None:
        self.stops.append(err)


def make(*, auto_claim: bool = False, fresh: bool = False, json_mode: bool = False,
         max_in_flight: int = 5, epoch: int = 0) -> tuple[Sequencer, Sink]:
    sink = Sink()
    seq = Sequencer(producer_id="p", url=URL, epoch=CLOCK_EPOCH if fresh else epoch,
                    auto_claim=auto_claim, fresh_epoch=fresh, max_in_flight=max_in_flight,
                    retry=RETRY, delivery_timeout=10.0, sink=sink,
                    json_mode=json_mode)
    return seq, sink


_first = [0]


def new_batch(*messages: bytes, deadline: float = 100.0) -> Batch:
    msgs = list(messages) or [b"x"]
    b = Batch(msgs, sum(map(len, msgs)), _first[0], b"".join(msgs), deadline)
    _first[0] += len(msgs)
    return b


def sent(seq: Sequencer, *messages: bytes, probe: str | None = "0_0") -> Batch:
    """Seal (slot reserved), admit and start sending one batch, as a sender does."""
    assert seq.next_work(True, 0.0, 0.0).work is Work.SEAL
    b = new_batch(*messages)
    assert seq.admit(b)
    if probe is not None and seq.needs_probe(b):
        seq.probe_done(b.gen, probe, early=False)
    assert seq.check(b)
    seq.start_attempt(b)
    assert seq.written(b.gen, b.seq) or b.seq not in seq.unwritten
    return b


def answer(status: int, headers: Mapping[str, str] | None = None, seq: int = 0) -> Outcome:
    h = CaseInsensitiveDict(headers or {})
    return classify(status, h, seq, RETRY.is_retryable_status,
                    lambda: P.error_for_response(status, h, "", url=URL, operation="append"),
                    url=URL, where="<s>")


def ok(offset: str = "0_10") -> Outcome:
    return answer(200, {P.STREAM_NEXT_OFFSET: offset})


# -- classification (pure) ---------------------------------------------------------------
@pytest.mark.parametrize(("status", "headers", "kind", "maybe_stored"), [
    (200, {P.STREAM_NEXT_OFFSET: "1_1"}, Kind.OK, False),
    (200, {P.PRODUCER_SEQ: "0"}, Kind.OK, False),
    (200, {}, Kind.NOT_DURABLE, True),
    (200, {P.PRODUCER_SEQ: "7"}, Kind.NOT_DURABLE, True),
    (204, {P.PRODUCER_SEQ: "3"}, Kind.DUPLICATE, False),
    (403, {P.PRODUCER_EPOCH: "9"}, Kind.FENCED, False),
    (409, {P.STREAM_CLOSED: "true"}, Kind.STREAM_CLOSED, False),
    (409, {P.PRODUCER_EXPECTED_SEQ: "2", P.PRODUCER_RECEIVED_SEQ: "4"}, Kind.SEQ_GAP, False),
    (409, {}, Kind.CONFLICT, False),
    (400, {}, Kind.BAD_REQUEST, False),
    (413, {}, Kind.TOO_LARGE, False),
    (429, {P.RETRY_AFTER: "2"}, Kind.RETRYABLE, False),
    (503, {}, Kind.RETRYABLE, True),
    (500, {}, Kind.RETRYABLE, True),
    (404, {}, Kind.REJECTED, False),
])
def test_classify_table(status: int, headers: dict[str, str], kind: Kind,
                        maybe_stored: bool) -> None:
    o = answer(status, headers)
    assert o.kind is kind
    assert o.maybe_stored is maybe_stored
    assert (o.error is None) == (kind in (Kind.OK, Kind.DUPLICATE))


def test_classify_parses_the_numbers() -> None:
    assert answer(204, {P.PRODUCER_SEQ: "3", P.STREAM_NEXT_OFFSET: "5_5"}).server_seq == 3
    assert answer(403, {P.PRODUCER_EPOCH: "9"}).epoch == 9
    gap = answer(409, {P.PRODUCER_EXPECTED_SEQ: "2", P.PRODUCER_RECEIVED_SEQ: "4"})
    assert (gap.expected_seq, gap.server_seq) == (2, 4)
    assert answer(429, {P.RETRY_AFTER: "2"}).retry_after == 2.0


def test_transport_failure_knows_whether_the_request_left() -> None:
    err = errors.TransportError("refused")
    err.reached_server = False  # type: ignore[attr-defined]
    assert transport_failure(err).maybe_stored is False
    assert transport_failure(errors.TransportError("reset")).maybe_stored is True


# -- phases and batch states --------------------------------------------------------------
def test_failed_is_terminal_and_illegal_transitions_raise() -> None:
    seq, _ = make()
    assert ALLOWED[Phase.FAILED] == frozenset()
    seq.stop(errors.ProducerError("boom"))
    assert seq.phase is Phase.FAILED
    with pytest.raises(RuntimeError, match="FAILED -> STEADY"):
        seq._to(Phase.STEADY, "test")


def test_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    seq, _ = make(auto_claim=True)
    caplog.set_level("DEBUG", logger="durable_streams")
    b = sent(seq)
    seq.on_outcome(b, ok(), 0.0)
    assert seq.phase is Phase.STEADY
    assert any("UNCONFIRMED -> STEADY" in r.getMessage() for r in caplog.records)


def test_batch_final_state_is_set_once() -> None:
    b = new_batch()
    assert b.settle(BatchState.ACKED)
    assert not b.settle(BatchState.FAILED)
    assert b.state is BatchState.ACKED
    with pytest.raises(RuntimeError):
        b.move(BatchState.PARKED)
    with pytest.raises(ValueError):
        new_batch().settle(BatchState.PARKED)


# -- work --------------------------------------------------------------------------------
def test_unconfirmed_epoch_sends_one_batch_at_a_time() -> None:
    seq, _ = make(auto_claim=True)
    assert seq.phase is Phase.UNCONFIRMED
    assert seq.next_work(True, 0.0, 0.0).work is Work.SEAL
    assert seq.next_work(True, 0.0, 0.0).work is Work.WAIT  # the slot is taken
    steady, _ = make()
    assert steady.next_work(True, 0.0, 0.0).work is Work.SEAL
    assert steady.next_work(True, 0.0, 0.0).work is Work.SEAL


def test_early_probe_requested_once_per_generation_while_lingering() -> None:
    seq, _ = make()
    task = seq.next_work(True, 0.004, 0.0)
    assert task.work is Work.PROBE and task.gen == 0 and seq.probe_running(0)
    assert seq.next_work(True, 0.004, 0.0).work is Work.WAIT
    assert seq.next_work(True, 0.004, 0.0).timeout == 0.004
    seq.probe_done(0, None, early=True)  # failed: the send path probes itself
    assert not seq.probe_running(0)
    assert seq.next_work(True, 0.004, 0.0).work is Work.WAIT


def test_stop_only_when_nothing_is_left() -> None:
    seq, _ = make()
    seq.close_requested()
    assert seq.next_work(False, 0.0, 0.0).work is Work.STOP
    assert seq.next_work(True, 0.0, 0.0).work is Work.SEAL


def test_fatal_producer_fails_the_buffer_instead_of_sealing() -> None:
    seq, sink = make()
    seq.stop(errors.ProducerError("boom"))
    assert sink.stops and seq.next_work(True, 0.0, 0.0).work is Work.FAIL_BUFFER


def test_probe_first_result_wins_and_late_early_probe_is_ignored() -> None:
    seq, _ = make()
    b = sent(seq, probe=None)
    assert seq.needs_probe(b)
    seq.probe_done(0, "0_5", early=True)  # answered after seq 0 was sent: unusable
    assert 0 not in seq.probes
    seq.probe_done(0, "0_5", early=False)
    seq.probe_done(0, "0_9", early=False)
    assert seq.probes[0] == "0_5"


def test_pipelined_seqs_are_written_in_order_within_the_window() -> None:
    seq, _ = make(max_in_flight=5)
    assert seq.next_work(True, 0.0, 0.0).work is Work.SEAL
    a = new_batch()
    seq.admit(a)
    assert seq.next_work(True, 0.0, 0.0).work is Work.SEAL
    b = new_batch()
    seq.admit(b)
    assert seq.turn_ok(a) and not seq.turn_ok(b)  # seq 1 waits for seq 0 on the wire
    seq.written(a.gen, a.seq)
    assert seq.turn_ok(b)
    assert seq.next_work(True, 0.0, 0.0).work is Work.SEAL
    c = new_batch()
    seq.admit(c)
    seq.written(b.gen, b.seq)
    assert not seq.turn_ok(c)  # window of 2 ahead of the oldest unacknowledged
    seq.on_outcome(a, ok("0_1"), 0.0)
    assert seq.turn_ok(c)


# -- 200 ----------------------------------------------------------------------------------
def test_200_acknowledges_and_confirms_the_epoch() -> None:
    seq, sink = make(auto_claim=True)
    b = sent(seq, b"ab")
    d = seq.on_outcome(b, ok("0_2"), 0.0)
    assert d.act is Act.DONE and b.state is BatchState.ACKED
    assert sink.acks == [(b, "0_2", False)]
    assert seq.last_offset == "0_2" and seq.phase is Phase.STEADY
    assert seq.counters.acked == 1 and seq.counters.bytes_acked == 2
    assert not seq.batches


def test_last_offset_never_moves_back() -> None:
    seq, _ = make()
    a, b = sent(seq), sent(seq)
    seq.on_outcome(b, ok("0_9"), 0.0)
    seq.on_outcome(a, ok("0_5"), 0.0)
    assert seq.last_offset == "0_9"


def test_bogus_200_is_retried_as_maybe_stored() -> None:
    seq, _ = make()
    b = sent(seq)
    d = seq.on_outcome(b, answer(200, {}), 0.0)
    assert d.act is Act.RETRY and b.maybe_stored and not b.ambiguous


# -- transient failures and delivery deadlines ------------------------------------------------
def test_5xx_retries_with_growing_backoff_and_keeps_later_seqs_behind() -> None:
    seq, _ = make()
    b = sent(seq)
    d1 = seq.on_outcome(b, answer(503), 0.0)
    d2 = seq.on_outcome(b, answer(503), 0.0)
    assert (d1.act, d1.delay, d2.delay) == (Act.RETRY, 0.1, 0.2)
    assert b.maybe_stored and b.seq in seq.unwritten


def test_429_retry_after_is_a_lower_bound_capped_by_the_deadline() -> None:
    seq, _ = make()
    b = sent(seq)
    assert seq.on_outcome(b, answer(429, {P.RETRY_AFTER: "5"}), 0.0).delay == 5.0
    assert seq.on_outcome(b, answer(429, {P.RETRY_AFTER: "5"}), 98.0).delay == 2.0
    assert not b.maybe_stored  # a 429 says the server did nothing


def test_lost_answer_makes_the_batch_in_doubt() -> None:
    seq, _ = make()
    b = sent(seq)
    d = seq.on_outcome(b, transport_failure(errors.TransportError("reset")), 0.0)
    assert d.act is Act.RETRY and b.ambiguous and b.maybe_stored


def test_delivery_deadline_fails_the_batch_and_moves_later_ones_to_a_new_epoch() -> None:
    seq, sink = make()
    a, b = sent(seq), sent(seq)
    err = errors.TransportError("refused")
    err.reached_server = False  # type: ignore[attr-defined]
    d = seq.on_outcome(a, transport_failure(err), 100.0)
    assert d.act is Act.DONE and a.state is BatchState.FAILED
    assert "timed out" in str(sink.fails[0][1]) and "pw" not in str(sink.fails[0][1])
    # a confirmed hole: nothing after it can be accepted in this epoch
    assert seq.phase is Phase.DRAINING and seq.epoch == 1 and seq.gen == 1
    assert not seq.check(b) and b.state is BatchState.PARKED
    seq.in_flight = 0
    seq.maybe_resequence()
    assert (b.epoch, b.seq, b.state) == (1, 0, BatchState.QUEUED)
    assert seq.phase is Phase.UNCONFIRMED


def test_in_doubt_batch_at_its_deadline_keeps_later_seqs_until_the_server_confirms() -> None:
    seq, sink = make()
    a, b = sent(seq), sent(seq)
    seq.on_outcome(a, transport_failure(errors.TransportError("reset")), 0.0)
    d = seq.on_outcome(a, transport_failure(errors.TransportError("reset")), 100.0)
    assert d.act is Act.DONE and "may have been stored" in str(sink.fails[0][1])
    assert seq.phase is Phase.STEADY and (0, 0) in seq.doubtful  # no renumbering yet
    # the server names the in-doubt seq as missing: it was not stored, now move on
    d = seq.on_outcome(b, answer(409, {P.PRODUCER_EXPECTED_SEQ: "0"}, seq=1), 0.0)
    assert d.act is Act.DONE and seq.phase is Phase.DRAINING and b.state is BatchState.PARKED


# -- 204 ------------------------------------------------------------------------------------
def dup(server_seq: int = 0) -> Outcome:
    return answer(204, {P.PRODUCER_SEQ: str(server_seq), P.STREAM_NEXT_OFFSET: "0_7"})


def test_204_without_an_earlier_lost_answer_is_another_writer() -> None:
    seq, sink = make()
    b = sent(seq)
    d = seq.on_outcome(b, dup(), 0.0)
    assert d.act is Act.DONE and b.state is BatchState.FAILED
    assert isinstance(seq.fatal, errors.StaleEpochError) and seq.phase is Phase.FAILED
    assert sink.stops and "auto_claim" in str(seq.fatal)


def test_204_after_a_lost_answer_is_ours_once_the_epoch_stored_something() -> None:
    seq, sink = make()
    a, b = sent(seq), sent(seq)
    seq.on_outcome(a, ok("0_1"), 0.0)
    seq.on_outcome(b, transport_failure(errors.TransportError("reset")), 0.0)
    d = seq.on_outcome(b, dup(1), 0.0)
    assert d.act is Act.DONE and sink.acks[-1] == (b, "0_7", True)
    assert seq.counters.duplicates == 1


def test_204_naming_a_seq_we_never_sent_is_not_ours() -> None:
    seq, _ = make(auto_claim=True)
    b = sent(seq)
    seq.on_outcome(b, transport_failure(errors.TransportError("reset")), 0.0)
    seq.on_outcome(b, dup(5), 0.0)
    assert b.state is BatchState.PARKED and seq.phase is Phase.DRAINING


def test_204_for_a_fresh_clock_epoch_is_our_own_first_attempt() -> None:
    seq, sink = make(auto_claim=True, fresh=True)
    b = sent(seq)
    seq.on_outcome(b, transport_failure(errors.TransportError("reset")), 0.0)
    assert seq.on_outcome(b, dup(), 0.0).act is Act.DONE
    assert sink.acks == [(b, "0_7", True)]


@pytest.mark.parametrize(("found", "state"), [
    (True, BatchState.ACKED), (False, BatchState.PARKED), (None, BatchState.PARKED)])
def test_ambiguous_204_is_settled_by_reading_after_the_probe(found: bool | None,
                                                             state: BatchState) -> None:
    seq, _ = make(auto_claim=True, epoch=3)
    b = sent(seq, probe="0_42")
    seq.on_outcome(b, transport_failure(errors.TransportError("reset")), 0.0)
    d = seq.on_outcome(b, dup(), 0.0)
    assert d.act is Act.CHECK_STORED and d.offset == "0_42"
    seq.checked(b, dup(), found, 0.0)
    assert b.state is state
    if found is False:
        assert not b.maybe_stored  # looked: not there, so it can be resent as is


# -- 403 ------------------------------------------------------------------------------------
def test_403_with_auto_claim_claims_above_the_server_epoch_and_resends_in_order() -> None:
    seq, _ = make(auto_claim=True, epoch=1)
    a, b = sent(seq), None
    seq.on_outcome(a, ok("0_1"), 0.0)
    seq.finish_work()
    b, c = sent(seq), sent(seq)
    d = seq.on_outcome(c, answer(403, {P.PRODUCER_EPOCH: "7"}), 0.0)
    assert d.act is Act.DONE and seq.epoch == 8 and seq.phase is Phase.DRAINING
    assert seq.counters.claims == 1
    assert not seq.check(b)  # the other sender sees the epoch change and parks its batch
    seq.finish_work()
    seq.finish_work()
    assert seq.phase is Phase.UNCONFIRMED
    assert [(x.epoch, x.seq) for x in seq.resend] == [(8, 0), (8, 1)]
    assert list(seq.resend) == [b, c]
    task = seq.next_work(False, 0.0, 0.0)
    assert task.work is Work.RESEND and task.batch is b


def test_403_without_auto_claim_is_fatal_and_names_the_server_epoch() -> None:
    seq, sink = make(epoch=2)
    b = sent(seq)
    seq.on_outcome(b, answer(403, {P.PRODUCER_EPOCH: "5"}), 0.0)
    assert isinstance(seq.fatal, errors.StaleEpochError) and seq.fatal.current_epoch == 5
    assert sink.fails[0][0] == b.messages


def test_403_without_an_epoch_header_is_fatal_even_with_auto_claim() -> None:
    seq, _ = make(auto_claim=True)
    b = sent(seq)
    seq.on_outcome(b, answer(403), 0.0)
    assert seq.phase is Phase.FAILED


def test_fenced_with_a_lost_answer_verifies_before_renumbering() -> None:
    seq, _ = make(auto_claim=True, epoch=1)
    a = sent(seq)
    seq.on_outcome(a, ok("0_1"), 0.0)
    seq.finish_work()
    b, c = sent(seq), sent(seq)
    seq.on_outcome(b, transport_failure(errors.TransportError("reset")), 0.0)
    seq.on_outcome(c, answer(403, {P.PRODUCER_EPOCH: "4"}), 0.0)
    assert not seq.check(b)
    seq.finish_work()
    seq.finish_work()
    assert seq.phase is Phase.VERIFYING
    assert seq.next_work(False, 0.0, 0.0).work is Work.VERIFY
    assert seq.verify_candidates() == [b]
    seq.verified(b, True)
    assert b.state is BatchState.ACKED
    seq.finish_work()
    assert seq.phase is Phase.UNCONFIRMED and list(seq.resend) == [c] and c.seq == 0


def test_in_doubt_batch_that_cannot_be_checked_is_reported_not_resent() -> None:
    seq, sink = make(auto_claim=True, epoch=1)
    b = sent(seq)
    seq.on_outcome(b, transport_failure(errors.TransportError("reset")), 0.0)
    seq.on_outcome(b, answer(403, {P.PRODUCER_EPOCH: "1"}), 0.0)
    seq.finish_work()
    assert seq.phase is Phase.VERIFYING
    seq.next_work(False, 0.0, 0.0)
    seq.verified(b, None)
    assert b.state is BatchState.FAILED and sink.fails[-1][1].code == "IN_DOUBT"
    seq.finish_work()
    assert seq.phase is Phase.UNCONFIRMED and not seq.resend


def test_epoch_overflow_is_fatal() -> None:
    seq, _ = make(auto_claim=True)
    b = sent(seq)
    seq.on_outcome(b, answer(403, {P.PRODUCER_EPOCH: str(P.MAX_SAFE_INTEGER)}), 0.0)
    assert seq.phase is Phase.FAILED and "overflow" in str(seq.fatal)
    assert b.state is BatchState.FAILED


# -- 409 ------------------------------------------------------------------------------------
def test_409_stream_closed_stops_the_producer() -> None:
    seq, sink = make()
    b = sent(seq)
    seq.on_outcome(b, answer(409, {P.STREAM_CLOSED: "true"}), 0.0)
    assert isinstance(seq.fatal, errors.StreamClosedError) and sink.stops


def test_409_gap_behind_an_earlier_batch_waits_for_it_then_resends() -> None:
    seq, _ = make(max_in_flight=4)
    a, b = sent(seq), sent(seq)
    seq.window = 4.0
    d = seq.on_outcome(b, answer(409, {P.PRODUCER_EXPECTED_SEQ: "0"}, seq=1), 0.0)
    assert d.act is Act.WAIT_EARLIER and d.earlier == range(0, 1)
    assert seq.window == 2.0 and b.seq in seq.unwritten
    assert seq.any_pending(0, d.earlier)
    seq.on_outcome(a, ok(), 0.0)
    assert not seq.any_pending(0, d.earlier)


def test_409_gap_twice_with_nothing_in_flight_means_the_server_lost_our_state() -> None:
    seq, sink = make()
    a, b = sent(seq), sent(seq)
    seq.on_outcome(a, ok(), 0.0)
    gap = answer(409, {P.PRODUCER_EXPECTED_SEQ: "0"}, seq=1)
    assert seq.on_outcome(b, gap, 0.0).act is Act.WAIT_EARLIER  # maybe a race: once
    assert seq.on_outcome(b, gap, 0.0).act is Act.DONE
    assert isinstance(sink.fails[0][1], errors.SequenceGapError)
    assert seq.phase is Phase.DRAINING  # a hole: later batches move to a new epoch


def test_409_without_expected_seq_is_fatal() -> None:
    seq, _ = make()
    b = sent(seq)
    seq.on_outcome(b, answer(409), 0.0)
    assert seq.phase is Phase.FAILED


# -- 400 / 413 / other ------------------------------------------------------------------------
def test_400_in_json_mode_splits_out_the_invalid_messages_keeping_the_seq() -> None:
    seq, sink = make(json_mode=True)
    b = sent(seq, b"1", b"{bad", b"2")
    d = seq.on_outcome(b, answer(400), 0.0)
    assert d.act is Act.SPLIT_JSON and d.error is not None
    again = seq.split_json(b, [b"1", b"2"], [(b"{bad", "why")], d.error)
    assert again.act is Act.SEND and b.seq == 0 and b.body == b"[1,2]"
    assert sink.fails[0][0] == [b"{bad"] and sink.fails[0][1].code == "INVALID_JSON"


def test_400_for_a_later_seq_while_seq_0_is_pending_waits_for_it() -> None:
    # B2: in an epoch above the server's, seq > 0 before seq 0 is a 400 (§5.2.1), not 409
    seq, _ = make()
    a, b = sent(seq), sent(seq)
    d = seq.on_outcome(b, answer(400), 0.0)
    assert d.act is Act.WAIT_EARLIER and d.earlier == range(0, 1)
    assert b.state is BatchState.ACTIVE and seq.phase is Phase.STEADY
    seq.on_outcome(a, ok("0_1"), 0.0)
    # a bad body after all: the same 400 once seq 0 is resolved is final (a hole)
    seq.on_outcome(b, answer(400), 0.0)
    assert b.state is BatchState.FAILED and seq.phase is Phase.DRAINING


def test_400_for_a_later_seq_after_seq_0_failed_in_doubt_claims() -> None:
    # B2: the 400 confirms the in-doubt seq 0 of a new epoch was not stored
    seq, sink = make()
    a, b = sent(seq), sent(seq)
    seq.on_outcome(a, transport_failure(errors.TransportError("reset")), 100.0)  # deadline
    assert a.state is BatchState.FAILED and seq.phase is Phase.STEADY  # kept: in doubt
    seq.on_outcome(b, answer(400), 0.0)
    assert b.state is BatchState.PARKED and seq.phase is Phase.DRAINING
    assert len(sink.fails) == 1  # only the in-doubt seq 0


@pytest.mark.parametrize("status", [400, 413])
def test_rejected_batch_is_a_hole(status: int) -> None:
    seq, sink = make()
    a, b = sent(seq), sent(seq)
    seq.on_outcome(a, answer(status), 0.0)
    assert a.state is BatchState.FAILED and seq.fatal is None
    assert seq.phase is Phase.DRAINING and not seq.check(b)


def test_unexpected_status_is_fatal_and_fails_everything_queued() -> None:
    seq, sink = make(auto_claim=True)
    a = sent(seq)
    seq.on_outcome(a, answer(403, {P.PRODUCER_EPOCH: "0"}), 0.0)  # parked
    parked = seq.parked[0]
    seq.stop(errors.ProducerError("gone"))
    assert parked.state is BatchState.FAILED and not seq.parked
    assert len(sink.stops) == 1
    seq.stop(errors.ProducerError("again"))  # the first fatal error stays
    assert str(seq.fatal) == "gone"


def test_batches_sealed_while_draining_wait_and_keep_buffer_order() -> None:
    seq, _ = make()
    a, b = sent(seq), sent(seq)
    seq.on_outcome(a, answer(413), 0.0)  # hole -> claim
    seq.finish_work()
    assert seq.next_work(True, 0.0, 0.0).work is Work.WAIT  # no sealing while draining
    late = new_batch()
    seq.in_flight += 1
    assert not seq.admit(late)  # parked behind the older unacknowledged batch
    seq.finish_work()
    assert not seq.check(b)
    seq.finish_work()
    assert [x.seq for x in (b, late)] == [0, 1] and list(seq.resend) == [b, late]


# -- close_stream -----------------------------------------------------------------------------
def test_close_outcomes() -> None:
    seq, _ = make(auto_claim=True, epoch=2)
    e, n = seq.close_attempt()
    assert seq.on_close_outcome(answer(503), e, n, 0.0, 10.0, 0).act is Act.RETRY
    assert seq.on_close_outcome(answer(503), e, n, 11.0, 10.0, 0).act is Act.RAISE
    assert seq.on_close_outcome(answer(403, {P.PRODUCER_EPOCH: "6"}), e, n, 0.0, 10.0,
                                0).act is Act.SEND
    assert seq.epoch == 7 and seq.next_seq == 0 and seq.counters.claims == 1
    assert seq.phase is Phase.UNCONFIRMED  # claimed through the transition table
    e, n = seq.close_attempt()
    # a 204 (Producer-Seq = ours) is our close only if the stream is closed: look (HEAD)
    assert seq.on_close_outcome(dup(n), e, n, 0.0, 10.0, 0).act is Act.CHECK_STORED
    d = seq.close_checked(dup(n), e, n, True, 0.0, 10.0, 0)
    assert d.act is Act.DONE and d.offset == "0_7" and seq.next_seq == 1
    assert seq.last_offset == "0_7"


def test_close_answered_by_a_plain_duplicate_is_not_ours() -> None:
    # B7: a 204 naming a later last seq than the closing one: another writer's tuple
    seq, _ = make(epoch=2)
    d = seq.on_close_outcome(dup(5), 2, 0, 0.0, 10.0, 0)
    assert d.act is Act.RAISE and isinstance(d.error, errors.StaleEpochError)
    assert "not closed" in str(d.error)
    seq, _ = make(auto_claim=True, epoch=2)
    assert seq.on_close_outcome(dup(5), 2, 0, 0.0, 10.0, 0).act is Act.SEND
    assert seq.epoch == 3 and seq.next_seq == 0


def test_close_204_with_the_stream_open_is_not_ours() -> None:
    seq, _ = make(epoch=2)
    assert seq.on_close_outcome(dup(0), 2, 0, 0.0, 10.0, 0).act is Act.CHECK_STORED
    d = seq.close_checked(dup(0), 2, 0, False, 0.0, 10.0, 0)  # HEAD: the stream is open
    assert d.act is Act.RAISE and isinstance(d.error, errors.StaleEpochError)
    # the HEAD failed: retry until the deadline, then say it is in doubt
    assert seq.close_checked(dup(0), 2, 0, None, 0.0, 10.0, 0).act is Act.RETRY
    d = seq.close_checked(dup(0), 2, 0, None, 11.0, 10.0, 0)
    assert d.act is Act.RAISE and d.error is not None and d.error.code == "IN_DOUBT"


def test_close_without_auto_claim_raises_the_stale_epoch() -> None:
    seq, _ = make(epoch=2)
    d = seq.on_close_outcome(answer(403, {P.PRODUCER_EPOCH: "3"}), 2, 0, 0.0, 10.0, 0)
    assert d.act is Act.RAISE and isinstance(d.error, errors.StaleEpochError)
    d = seq.on_close_outcome(answer(400), 2, 0, 0.0, 10.0, 0)
    assert d.act is Act.RAISE and isinstance(d.error, errors.BadRequestError)


def test_no_probe_for_a_batch_of_an_older_generation() -> None:
    seq, _ = make(auto_claim=True)
    assert seq.next_work(True, 0.0, 0.0).work is Work.SEAL
    b = new_batch()
    seq.admit(b)
    assert seq.needs_probe(b)
    seq.begin_claim(None, seq.epoch)  # e.g. a hole: the epoch moves on
    assert not seq.needs_probe(b)  # it is parked, never sent: no HEAD for it
    assert not seq.check(b) and b.state is BatchState.PARKED


def test_holes_resequence_only_after_every_old_request_returned() -> None:
    seq, _ = make(max_in_flight=3)
    a, b, c = sent(seq), sent(seq), sent(seq)
    seq.on_outcome(b, answer(413), 0.0)  # b is rejected: a hole at seq 1
    seq.finish_work()
    assert seq.phase is Phase.DRAINING and not seq.resend
    seq.on_outcome(a, ok("0_1"), 0.0)  # a was stored under the old epoch: fine
    seq.finish_work()
    assert seq.phase is Phase.DRAINING  # c still in flight under the old epoch
    assert not seq.check(c)
    seq.finish_work()
    assert seq.phase is Phase.UNCONFIRMED and list(seq.resend) == [c]
    assert (c.epoch, c.seq) == (1, 0) and a.state is BatchState.ACKED


def test_close_claim_that_cannot_start_raises_instead_of_looping() -> None:
    seq, _ = make(auto_claim=True)
    seq.stop(errors.ProducerError("stopped"))
    d = seq.on_close_outcome(answer(403, {P.PRODUCER_EPOCH: "6"}), seq.epoch, 0, 0.0, 10.0, 0)
    assert d.act is Act.RAISE and str(d.error) == "stopped"

