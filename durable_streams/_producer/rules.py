"""The rules: what every outcome of a POST means, for a batch and for the closing POST.

Pure decisions: each function reads the sequencer's state, the batch and the
:class:`~.outcome.Outcome`, changes nothing, and returns a :class:`~.actions.Decision`
whose ``changes`` (``changes.py``) say what becomes of the batch and the sequencer; the
:class:`~.sequencer.Sequencer` methods of the same names apply them (with the producer lock
held). One copy of the 200/204/400/403/409/413/429/5xx rules serves batches and
``close_stream``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import errors
from .actions import Act, Decision
from .batch import Batch
from .changes import (
    COUNT_RETRY,
    HOLD,
    IN_DOUBT,
    NARROW,
    NOT_STORED,
    PARK,
    RETRIED,
    WRITTEN,
    Ack,
    Change,
    Claim,
    CloseClaim,
    Closed,
    Expect,
    Fail,
    Fatal,
    Mark,
    Split,
    Undoubt,
)
from .outcome import Kind, Outcome
from .reporter import copy_error

if TYPE_CHECKING:
    from .sequencer import Sequencer

log = logging.getLogger("durable_streams.producer")

Changes = tuple[Change, ...]


def _done(*changes: Change) -> Decision:
    return Decision(Act.DONE, changes=changes)


# -- batch outcomes ------------------------------------------------------------------------

def on_outcome(sq: Sequencer, batch: Batch, o: Outcome, now: float) -> Decision:
    """Decide what a batch's answer (or its failure) means."""
    kind = o.kind
    if kind is Kind.OK:
        return _done(Ack(o.offset, duplicate=False))
    if kind is Kind.TRANSPORT:
        return transient(sq, batch, _err(sq, o), None, now,
                         (WRITTEN, IN_DOUBT) if o.maybe_stored else (WRITTEN,))
    if kind is Kind.NOT_DURABLE or kind is Kind.RETRYABLE:
        # a proxy's 5xx says nothing about the origin
        return transient(sq, batch, _err(sq, o), o.retry_after, now,
                         (Mark(maybe_stored=True),) if o.maybe_stored else ())
    if kind is Kind.CLIENT:
        # Our side raised (an application hook, a bug): fail this batch alone, and say
        # it may be stored if the body had been written.
        return _done(WRITTEN, *((IN_DOUBT,) if o.maybe_stored else ()),
                     Fail(_err(sq, o), hole=True))
    if kind is Kind.DUPLICATE:
        return _on_duplicate(sq, batch, o, now)
    if kind is Kind.FENCED:
        return _on_fenced(sq, batch, o, now)
    if kind is Kind.SEQ_GAP:
        return _on_gap(sq, batch, o)
    if kind is Kind.BAD_REQUEST and batch.seq > 0 and batch.gen == sq.gen:
        decision = _new_epoch_400(sq, batch)
        if decision is not None:
            return decision
    if kind is Kind.BAD_REQUEST and batch.seq > 0 and batch.gen != sq.gen:
        # The epoch changed while this was in flight (say another seq's 400 "new epoch
        # must start with sequence 0" confirmed a hole at seq 0): this 400 may be that
        # answer too, not one for the body. Nothing of it is stored; it is renumbered
        # (a bad body gets its 400 again there, final for a seq 0).
        instead = may_go_on(sq, batch)
        return _done(NOT_STORED, *(instead if instead is not None else (PARK,)))
    if kind is Kind.BAD_REQUEST or kind is Kind.TOO_LARGE:
        # The body itself is refused: no attempt of this same body can have been stored.
        if kind is Kind.BAD_REQUEST and sq.json_mode and len(batch.messages) >= 2:
            return Decision(Act.SPLIT_JSON, error=_err(sq, o), changes=(NOT_STORED,))
        return _done(NOT_STORED, Fail(_err(sq, o), hole=True))
    # STREAM_CLOSED, CONFLICT, REJECTED: nothing more can be sent
    return _done(Fatal(_err(sq, o)))


def _new_epoch_400(sq: Sequencer, batch: Batch) -> Decision | None:
    """A 400 for seq > 0 while seq 0 of the generation is not known stored: for an epoch
    above the server's, §5.2.1 answers "new epoch must start with sequence 0" (a 400, not
    the 409 naming seq 0). The batch is valid; None: a plain bad request."""
    gen = batch.gen
    if (gen, 0) in sq.doubtful:
        # Seq 0 failed in doubt: the server confirms it was not stored, as a 409 would.
        return _done(Undoubt(gen, 0), Claim(sq.epoch), PARK)
    if sq.pending(gen, 0):
        # Seq 0 has not reached the server yet (the turn wait is bounded): resend after
        # it. If the body is bad after all, the next answer is the same 400 and is final.
        return Decision(Act.WAIT_EARLIER, earlier=range(0, batch.seq), changes=(HOLD,))
    return None


def _err(sq: Sequencer, o: Outcome) -> errors.DurableStreamError:
    if o.error is not None:
        return o.error
    return errors.ProducerError(f"unexpected answer {o.kind.name} from {sq.where}",
                                url=sq.url)


def transient(sq: Sequencer, batch: Batch, err: errors.DurableStreamError,
              retry_after: float | None, now: float, before: Changes = ()) -> Decision:
    """Retry later with the same (epoch, seq, body), or give up at the deadline
    (``before``: the changes the outcome itself makes first)."""
    if now >= batch.deadline or (sq.stopping and sq.fatal is not None):
        # Fail adds that it may have been stored (a lost answer, a proxy's 5xx)
        return _done(*before, Fail(gave_up(sq, batch, err, now), hole=True))
    wait = sq.retry.delay(min(batch.retry_n, 30), retry_after)
    wait = min(wait, max(batch.deadline - now, 0.0))
    log.debug("producer %s: seq %d %s; retrying in %.3fs", sq.producer_id, batch.seq,
              err, wait)
    # the retry's seq is not on the wire: later seqs of the generation wait for it
    hold = (HOLD,) if batch.gen == sq.gen else ()
    return Decision(Act.RETRY, delay=wait, changes=(*before, RETRIED, *hold))


def gave_up(sq: Sequencer, batch: Batch, err: errors.DurableStreamError, now: float
            ) -> errors.DurableStreamError:
    """``err`` for a batch given up on, saying why, after how long and how many sends."""
    elapsed = max(0.0, now - (batch.deadline - sq.delivery_timeout))
    if now >= batch.deadline:
        why = (f"delivery to {sq.where} timed out (delivery_timeout_ms="
               f"{sq.delivery_timeout * 1000:.0f})")
    else:
        why = f"delivery to {sq.where} was abandoned ({sq.fatal})"
    sends = f"{batch.attempts} attempt(s)" if batch.attempts else "before it could be sent"
    failure = copy_error(err)
    failure.message = f"{why} after {elapsed:.1f}s, {sends}; last error: {err}"
    failure.args = (failure.message,)
    return failure


def may_go_on(sq: Sequencer, batch: Batch) -> Changes | None:
    """May a sender go on with this batch? None: yes; else what becomes of it (nothing if
    it is settled already; failed if the producer stopped; parked if the epoch changed)."""
    if batch.final:
        return ()
    if sq.fatal is not None:
        return (Fatal(sq.fatal),)
    if batch.gen != sq.gen:
        return (PARK,)
    return None


def _claim_or_give_up(sq: Sequencer, batch: Batch, server_epoch: int, now: float,
                      err: errors.DurableStreamError, before: Changes = ()) -> Decision:
    """auto_claim: move to a higher epoch and resend, or fail the batch once its delivery
    timeout has passed (the server keeps fencing or answering nonsense: the claims are
    spaced by ``claim_backoff``, and the producer goes on with later batches)."""
    if now >= batch.deadline:
        return _done(*before, Fail(gave_up(sq, batch, err, now), hole=True))
    return _done(*before, Claim(server_epoch, fenced=True, of_batch=True), PARK)


def _on_duplicate(sq: Sequencer, batch: Batch, o: Outcome, now: float) -> Decision:
    """A 204. Believe it only if this (epoch, seq) can have been stored by us: an earlier
    send of this tuple may have been stored, the server's last seq is one we sent, and
    the server already stored something of ours in this epoch (or the epoch is fresh
    from the clock, or the stream after the probe shows our data). Otherwise the
    previous run of the same job is indistinguishable from our own first attempt."""
    high = sq.highest_sent.get(batch.gen, -1)
    plausible = batch.maybe_stored and (o.server_seq is None or o.server_seq <= high)
    fresh = sq.fresh_epoch and batch.gen == 0 and batch.epoch == sq.epoch
    if plausible and (sq.stored_gen == batch.gen or fresh):
        return _done(Ack(o.offset, duplicate=True))
    if plausible and batch.gen in sq.probes:
        return Decision(Act.CHECK_STORED, offset=sq.probes[batch.gen])
    return checked(sq, batch, o, None, now)


def _not_ours(sq: Sequencer, batch: Batch, o: Outcome, maybe_stored: bool
              ) -> errors.StaleEpochError:
    return errors.StaleEpochError(
        f"producer id {sq.producer_id!r} at epoch {batch.epoch} was already used by "
        f"another writer of {sq.where}: the server reports seq {batch.seq} as a "
        "duplicate although this producer has not stored it"
        + (" (an earlier attempt got no clear answer, so it may or may not be stored)"
           if maybe_stored else "")
        + "; use auto_claim=True or a higher epoch so this run's messages are not "
        "mistaken for an earlier run's",
        current_epoch=batch.epoch, status=204, url=sq.url, headers=o.headers,
    )


def checked(sq: Sequencer, batch: Batch, o: Outcome, found: bool | None, now: float
            ) -> Decision:
    """The result of looking for a 204'd batch after its generation's probe."""
    if found is True:
        return _done(Ack(o.offset, duplicate=True))
    looked: Changes = (NOT_STORED,) if found is False else ()  # looked: not in the stream
    # Someone else already wrote this (id, epoch, seq): typically an earlier run of the
    # same job with the same producer id. Believing the 204 would drop our data.
    if sq.auto_claim:
        return _claim_or_give_up(sq, batch, batch.epoch, now, errors.ProducerError(
            f"the server answers 204 (duplicate) for seqs this producer has not stored on "
            f"{sq.where} ({sq.claims_in_row} new epoch(s) claimed in a row): another "
            f"writer uses producer id {sq.producer_id!r}, or a proxy replays answers",
            status=204, url=sq.url, headers=o.headers, code="DUPLICATE_STORM"), looked)
    maybe = batch.maybe_stored and found is not False
    return _done(*looked, Fatal(_not_ours(sq, batch, o, maybe)))


def stale_epoch(sq: Sequencer, epoch: int, current: int | None, o: Outcome
                ) -> errors.StaleEpochError:
    return errors.StaleEpochError(
        f"producer {sq.producer_id!r} at epoch {epoch} was fenced by a newer producer "
        f"with the same id (server epoch {current}) on {sq.where}; stop this writer, or "
        "restart it with auto_claim=True or epoch > the server's",
        current_epoch=current, status=403, url=sq.url, headers=o.headers,
    )


def _on_fenced(sq: Sequencer, batch: Batch, o: Outcome, now: float) -> Decision:
    if o.epoch is None:
        return _done(Fatal(_err(sq, o)))
    if sq.auto_claim:
        return _claim_or_give_up(sq, batch, o.epoch, now, errors.ProducerError(
            f"producer {sq.producer_id!r} is fenced on {sq.where}: the server answered 403 "
            f"naming epoch {o.epoch} ({sq.claims_in_row} new epoch(s) claimed in a row); "
            "another writer with the same producer id may keep claiming newer epochs",
            status=403, url=sq.url, headers=o.headers, code="FENCED_REPEATEDLY"))
    # The server's epoch only grows (PROTOCOL §5.2.1): once it is above ours, nothing
    # more is stored under our epoch, so the stream after the tail probe tells whether
    # a batch in doubt is stored.
    return _done(Fatal(stale_epoch(sq, batch.epoch, o.epoch, o), fenced_by=o.epoch))


def _on_gap(sq: Sequencer, batch: Batch, o: Outcome) -> Decision:
    """A 409 naming the seq the server expects."""
    expected = o.expected_seq
    assert expected is not None
    gen = batch.gen
    if (gen, expected) in sq.doubtful and gen == sq.gen:
        # The server confirms the in-doubt batch was not stored: now later batches can
        # safely move to a new epoch (none of them can have been stored).
        return _done(Undoubt(gen, expected), Claim(sq.epoch), PARK)
    earlier = range(expected, batch.seq)
    in_flight = sq.any_pending(gen, earlier)
    # The seqs the server is missing must be ours and recent: still in flight, or
    # acknowledged just after the server answered. The same answer twice with nothing
    # in flight means the server lost our state.
    known = gen == sq.gen and len(earlier) > 0 and (
        in_flight or batch.last_expected != expected)
    noted: Changes = () if in_flight else (Expect(expected),)
    if not known:
        received = o.server_seq
        err = errors.SequenceGapError(
            f"producer sequence gap on {sq.where}: the server expects seq {expected}, "
            f"received {received if received is not None else batch.seq}; its producer "
            "state no longer matches this producer (restart it with a new epoch or "
            "auto_claim=True)",
            expected_seq=expected, received_seq=received, status=409, url=sq.url,
            headers=o.headers,
        )
        instead = may_go_on(sq, batch)
        return _done(*noted, *(instead if instead is not None else (Fail(err, hole=True),)))
    # An earlier batch of ours is on its way: wait for it, then resend. If it fails
    # instead, the epoch changes and this batch is parked for re-sequencing. Meanwhile
    # later batches wait for this one's resend to be written first.
    return Decision(Act.WAIT_EARLIER, earlier=earlier, changes=(*noted, NARROW, HOLD))


def split_json(sq: Sequencer, batch: Batch, good: list[bytes], bad: list[tuple[bytes, str]],
               err: errors.DurableStreamError) -> Decision:
    """After a 400 in JSON mode: report the invalid messages, resend the valid ones
    with the same seq (a rejected request does not consume it)."""
    if not bad or not good:
        return _done(Fail(err, hole=True))
    instead = may_go_on(sq, batch)
    if instead is not None:
        return _done(*instead)
    reason = err.reason if isinstance(err, errors.BadRequestError) else str(err)
    invalid = errors.BadRequestError(
        f"{len(bad)} message(s) for {sq.where} were rejected as invalid JSON "
        f"({reason}; first: {bad[0][1]})", status=400, url=sq.url, code="INVALID_JSON")
    return Decision(Act.SEND, changes=(Split(good, [m for m, _ in bad], invalid),))


# -- close_stream ----------------------------------------------------------------------

def on_close_outcome(sq: Sequencer, o: Outcome, epoch: int, seq: int, now: float,
                     deadline: float, retry_n: int) -> Decision:
    """The decision for an answer to the closing POST (carrying producer headers)."""
    kind = o.kind
    if kind is Kind.DUPLICATE:
        # A close-only POST is answered 204 (Stream-Closed: true, Producer-Seq: seq) when
        # it closes the stream and when it retries our closing request; but a plain
        # duplicate tuple (another writer's or an earlier run's data at this epoch) gets
        # the same 204, with Producer-Seq = the server's last seq, and the stream stays
        # open. A last seq other than ours is not our close; an equal one is told apart
        # by a HEAD (once per close_stream).
        if o.server_seq is None or o.server_seq == seq:
            return Decision(Act.CHECK_STORED)
        return _close_not_ours(sq, o, epoch, seq, now, deadline)
    if kind is Kind.OK or kind is Kind.NOT_DURABLE:
        return _close_done(seq, o.offset)
    if kind is Kind.FENCED and sq.auto_claim:
        return _close_claim(sq, o, epoch, o.epoch or 0, now, deadline)
    if kind is Kind.FENCED:
        return Decision(Act.RAISE, error=stale_epoch(sq, epoch, o.epoch, o))
    if (kind is Kind.TRANSPORT or kind is Kind.RETRYABLE) and now < deadline:
        return Decision(Act.RETRY, delay=sq.retry.delay(min(retry_n, 30), o.retry_after),
                        changes=(COUNT_RETRY,))
    return Decision(Act.RAISE, error=_err(sq, o))


def close_checked(sq: Sequencer, o: Outcome, epoch: int, seq: int, closed: bool | None,
                  now: float, deadline: float, retry_n: int) -> Decision:
    """After a 204 to the close: ``closed`` is what a HEAD said (None: it failed)."""
    if closed:
        return _close_done(seq, o.offset)
    if closed is False:
        return _close_not_ours(sq, o, epoch, seq, now, deadline)
    if now < deadline:
        return Decision(Act.RETRY, delay=sq.retry.delay(min(retry_n, 30), None),
                        changes=(COUNT_RETRY,))
    return Decision(Act.RAISE, error=errors.ProducerError(
        f"closing {sq.where}: the server answered 204 to the close and the stream could not "
        "be read (HEAD) to tell whether it is closed: it may or may not be",
        url=sq.url, code="IN_DOUBT"))


def _close_done(seq: int, offset: str) -> Decision:
    return Decision(Act.DONE, offset=offset, changes=(Closed(seq, offset),))


def _close_claim(sq: Sequencer, o: Outcome, epoch: int, server_epoch: int, now: float,
                 deadline: float) -> Decision:
    """The same claim as for a batch (nothing is left to renumber after the flush), and
    the same bounds: spaced by ``claim_backoff``, given up at the delivery deadline."""
    if now >= deadline:
        what = (f"403 naming epoch {o.epoch}" if o.kind is Kind.FENCED
                else "204 (duplicate) for a close this producer has not stored")
        return Decision(Act.RAISE, error=errors.ProducerError(
            f"closing {sq.where} gave up at the delivery timeout (delivery_timeout_ms="
            f"{sq.delivery_timeout * 1000:.0f}): the server answered {what} "
            f"({sq.claims_in_row} new epoch(s) claimed in a row); another writer with "
            f"producer id {sq.producer_id!r} may keep claiming newer epochs",
            status=o.status, url=sq.url, headers=o.headers,
            code="FENCED_REPEATEDLY" if o.kind is Kind.FENCED else "DUPLICATE_STORM"))
    # The sequencer completes this decision: RETRY after the claim's backoff, SEND at
    # once, or RAISE if the claim could not start (stopped, epoch overflow).
    return Decision(Act.RETRY, changes=(CloseClaim(
        server_epoch, max(0.0, deadline - now), stale_epoch(sq, epoch, o.epoch, o)),))


def _close_not_ours(sq: Sequencer, o: Outcome, epoch: int, seq: int, now: float,
                    deadline: float) -> Decision:
    """A 204 to a close that is not ours: someone else wrote this (id, epoch, seq)."""
    if sq.auto_claim:
        return _close_claim(sq, o, epoch, epoch, now, deadline)
    return Decision(Act.RAISE, error=errors.StaleEpochError(
        f"producer id {sq.producer_id!r} at epoch {epoch} was already used by another "
        f"writer of {sq.where}: the server reports the closing seq {seq} as a duplicate, so "
        "the stream was not closed; use auto_claim=True or a higher epoch",
        current_epoch=epoch, status=204, url=sq.url, headers=o.headers))
