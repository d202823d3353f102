"""The rules: what every outcome of a POST means, for a batch and for the closing POST.

Pure functions of the sequencer's state and the :class:`~.outcome.Outcome` (called through
the :class:`~.sequencer.Sequencer` methods of the same names, with the producer lock held).
One copy of the 200/204/400/403/409/413/429/5xx rules serves batches and ``close_stream``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import errors
from .actions import DONE, SEND, Act, Decision
from .batch import Batch
from .outcome import Kind, Outcome
from .reporter import copy_error

if TYPE_CHECKING:
    from .sequencer import Sequencer

log = logging.getLogger("durable_streams.producer")


# -- batch outcomes ------------------------------------------------------------------------

def on_outcome(sq: Sequencer, batch: Batch, o: Outcome, now: float) -> Decision:
    """Decide what a batch's answer (or its failure) means."""
    kind = o.kind
    if kind is Kind.OK:
        sq.ack(batch, o.offset, duplicate=False)
        return DONE
    if kind is Kind.TRANSPORT:
        sq.written(batch.gen, batch.seq)
        if o.maybe_stored:
            batch.ambiguous = batch.maybe_stored = True
        return transient(sq, batch, _err(sq, o), None, now)
    if kind is Kind.NOT_DURABLE or kind is Kind.RETRYABLE:
        if o.maybe_stored:
            batch.maybe_stored = True  # a proxy's 5xx says nothing about the origin
        return transient(sq, batch, _err(sq, o), o.retry_after, now)
    if kind is Kind.CLIENT:
        # Our side raised (an application hook, a bug): fail this batch alone, and say
        # it may be stored if the body had been written.
        sq.written(batch.gen, batch.seq)
        if o.maybe_stored:
            batch.ambiguous = batch.maybe_stored = True
        sq.fail(batch, _err(sq, o), hole=True)
        return DONE
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
    if kind is Kind.BAD_REQUEST or kind is Kind.TOO_LARGE:
        # The body itself is refused: no attempt of this same body can have been stored.
        batch.maybe_stored = batch.ambiguous = False
    if kind is Kind.BAD_REQUEST and sq.json_mode and len(batch.messages) >= 2:
        return Decision(Act.SPLIT_JSON, error=_err(sq, o))
    if kind is Kind.BAD_REQUEST or kind is Kind.TOO_LARGE:
        sq.fail(batch, _err(sq, o), hole=True)
        return DONE
    # STREAM_CLOSED, CONFLICT, REJECTED: nothing more can be sent
    err = _err(sq, o)
    sq.stop(err)
    sq.fail(batch, err)
    return DONE


def _new_epoch_400(sq: Sequencer, batch: Batch) -> Decision | None:
    """A 400 for seq > 0 while seq 0 of the generation is not known stored: for an epoch
    above the server's, §5.2.1 answers "new epoch must start with sequence 0" (a 400, not
    the 409 naming seq 0). The batch is valid; None: a plain bad request."""
    gen = batch.gen
    if (gen, 0) in sq.doubtful:
        # Seq 0 failed in doubt: the server confirms it was not stored, as a 409 would.
        sq.doubtful.discard((gen, 0))
        sq.begin_claim(None, sq.epoch)
        sq.park_or_fail(batch)
        return DONE
    if sq.pending(gen, 0):
        # Seq 0 has not reached the server yet (the turn wait is bounded): resend after
        # it. If the body is bad after all, the next answer is the same 400 and is final.
        sq.unwritten.add(batch.seq)
        return Decision(Act.WAIT_EARLIER, earlier=range(0, batch.seq))
    return None


def _err(sq: Sequencer, o: Outcome) -> errors.DurableStreamError:
    if o.error is not None:
        return o.error
    return errors.ProducerError(f"unexpected answer {o.kind.name} from {sq.where}",
                                url=sq.url)


def transient(sq: Sequencer, batch: Batch, err: errors.DurableStreamError,
              retry_after: float | None, now: float) -> Decision:
    """Retry later with the same (epoch, seq, body), or give up at the deadline."""
    if now >= batch.deadline or (sq.stopping and sq.fatal is not None):
        # fail() adds that it may have been stored (a lost answer, a proxy's 5xx)
        sq.fail(batch, gave_up(sq, batch, err, now), hole=True)
        return DONE
    wait = sq.retry.delay(min(batch.retry_n, 30), retry_after)
    wait = min(wait, max(batch.deadline - now, 0.0))
    batch.retry_n += 1
    if batch.gen == sq.gen:
        sq.unwritten.add(batch.seq)  # later seqs wait for this retry
    log.debug("producer %s: seq %d %s; retrying in %.3fs", sq.producer_id, batch.seq,
              err, wait)
    return Decision(Act.RETRY, delay=wait)


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


def _claim_or_give_up(sq: Sequencer, batch: Batch, server_epoch: int, now: float,
                      err: errors.DurableStreamError) -> Decision:
    """auto_claim: move to a higher epoch and resend, or fail the batch once its delivery
    timeout has passed (the server keeps fencing or answering nonsense: the claims are
    spaced by ``claim_backoff``, and the producer goes on with later batches)."""
    if now >= batch.deadline:
        sq.fail(batch, gave_up(sq, batch, err, now), hole=True)
        return DONE
    sq.begin_claim(batch, server_epoch, fenced=True)
    sq.park_or_fail(batch)
    return DONE


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
        sq.ack(batch, o.offset, duplicate=True)
        return DONE
    if plausible and batch.gen in sq.probes:
        return Decision(Act.CHECK_STORED, offset=sq.probes[batch.gen])
    return checked(sq, batch, o, None, now)


def _not_ours(sq: Sequencer, batch: Batch, o: Outcome) -> errors.StaleEpochError:
    return errors.StaleEpochError(
        f"producer id {sq.producer_id!r} at epoch {batch.epoch} was already used by "
        f"another writer of {sq.where}: the server reports seq {batch.seq} as a "
        "duplicate although this producer has not stored it"
        + (" (an earlier attempt got no clear answer, so it may or may not be stored)"
           if batch.maybe_stored else "")
        + "; use auto_claim=True or a higher epoch so this run's messages are not "
        "mistaken for an earlier run's",
        current_epoch=batch.epoch, status=204, url=sq.url, headers=o.headers,
    )


def checked(sq: Sequencer, batch: Batch, o: Outcome, found: bool | None, now: float
            ) -> Decision:
    """The result of looking for a 204'd batch after its generation's probe."""
    if found is False:
        batch.maybe_stored = batch.ambiguous = False  # looked: it is not in the stream
    if found is True:
        sq.ack(batch, o.offset, duplicate=True)
        return DONE
    # Someone else already wrote this (id, epoch, seq): typically an earlier run of the
    # same job with the same producer id. Believing the 204 would drop our data.
    if sq.auto_claim:
        return _claim_or_give_up(sq, batch, batch.epoch, now, errors.ProducerError(
            f"the server answers 204 (duplicate) for seqs this producer has not stored on "
            f"{sq.where} ({sq.claims_in_row} new epoch(s) claimed in a row): another "
            f"writer uses producer id {sq.producer_id!r}, or a proxy replays answers",
            status=204, url=sq.url, headers=o.headers, code="DUPLICATE_STORM"))
    err = _not_ours(sq, batch, o)
    sq.stop(err)
    sq.fail(batch, err)
    return DONE


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
        err = _err(sq, o)
    elif sq.auto_claim:
        return _claim_or_give_up(sq, batch, o.epoch, now, errors.ProducerError(
            f"producer {sq.producer_id!r} is fenced on {sq.where}: the server answered 403 "
            f"naming epoch {o.epoch} ({sq.claims_in_row} new epoch(s) claimed in a row); "
            "another writer with the same producer id may keep claiming newer epochs",
            status=403, url=sq.url, headers=o.headers, code="FENCED_REPEATEDLY"))
    else:
        err = stale_epoch(sq, batch.epoch, o.epoch, o)
    sq.stop(err)
    sq.fail(batch, err)
    return DONE


def _on_gap(sq: Sequencer, batch: Batch, o: Outcome) -> Decision:
    """A 409 naming the seq the server expects."""
    expected = o.expected_seq
    assert expected is not None
    gen = batch.gen
    if (gen, expected) in sq.doubtful and gen == sq.gen:
        # The server confirms the in-doubt batch was not stored: now later batches can
        # safely move to a new epoch (none of them can have been stored).
        sq.doubtful.discard((gen, expected))
        sq.begin_claim(None, sq.epoch)
        sq.park_or_fail(batch)
        return DONE
    earlier = range(expected, batch.seq)
    in_flight = sq.any_pending(gen, earlier)
    # The seqs the server is missing must be ours and recent: still in flight, or
    # acknowledged just after the server answered. The same answer twice with nothing
    # in flight means the server lost our state.
    known = gen == sq.gen and len(earlier) > 0 and (
        in_flight or batch.last_expected != expected)
    if not in_flight:
        batch.last_expected = expected
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
        if sq.check(batch):
            sq.fail(batch, err, hole=True)
        return DONE
    # An earlier batch of ours is on its way: wait for it, then resend. If it fails
    # instead, the epoch changes and this batch is parked for re-sequencing. Meanwhile
    # later batches wait for this one's resend to be written first.
    sq.window = max(1.0, sq.window / 2)
    sq.unwritten.add(batch.seq)
    return Decision(Act.WAIT_EARLIER, earlier=earlier)


def split_json(sq: Sequencer, batch: Batch, good: list[bytes], bad: list[tuple[bytes, str]],
               err: errors.DurableStreamError) -> Decision:
    """After a 400 in JSON mode: report the invalid messages, resend the valid ones
    with the same seq (a rejected request does not consume it)."""
    if not bad or not good:
        sq.fail(batch, err, hole=True)
        return DONE
    if not sq.check(batch):
        return DONE
    reason = err.reason if isinstance(err, errors.BadRequestError) else str(err)
    sq.sink.failed(
        [m for m, _ in bad],
        errors.BadRequestError(
            f"{len(bad)} message(s) for {sq.where} were rejected as invalid JSON "
            f"({reason}; first: {bad[0][1]})", status=400, url=sq.url,
            code="INVALID_JSON"),
        sum(len(m) for m, _ in bad),
    )
    batch.messages = good
    batch.nbytes = sum(len(m) for m in good)
    batch.body = b"[" + b",".join(good) + b"]"
    batch.retry_n = 0
    return SEND


# -- close_stream ----------------------------------------------------------------------

def close_attempt(sq: Sequencer) -> tuple[int, int]:
    sq.counters.requests += 1
    return sq.epoch, sq.next_seq


def on_close_outcome(sq: Sequencer, o: Outcome, epoch: int, seq: int, now: float, deadline: float,
                     retry_n: int) -> Decision:
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
        return _close_done(sq, seq, o.offset)
    if kind is Kind.FENCED and sq.auto_claim:
        return _close_claim(sq, o, epoch, o.epoch or 0, now, deadline)
    if kind is Kind.FENCED:
        return Decision(Act.RAISE, error=stale_epoch(sq, epoch, o.epoch, o))
    if (kind is Kind.TRANSPORT or kind is Kind.RETRYABLE) and now < deadline:
        sq.counters.retries += 1
        return Decision(Act.RETRY, delay=sq.retry.delay(min(retry_n, 30), o.retry_after))
    return Decision(Act.RAISE, error=_err(sq, o))


def close_checked(sq: Sequencer, o: Outcome, epoch: int, seq: int, closed: bool | None,
                  now: float, deadline: float, retry_n: int) -> Decision:
    """After a 204 to the close: ``closed`` is what a HEAD said (None: it failed)."""
    if closed:
        return _close_done(sq, seq, o.offset)
    if closed is False:
        return _close_not_ours(sq, o, epoch, seq, now, deadline)
    if now < deadline:
        sq.counters.retries += 1
        return Decision(Act.RETRY, delay=sq.retry.delay(min(retry_n, 30), None))
    return Decision(Act.RAISE, error=errors.ProducerError(
        f"closing {sq.where}: the server answered 204 to the close and the stream could not "
        "be read (HEAD) to tell whether it is closed: it may or may not be",
        url=sq.url, code="IN_DOUBT"))


def _close_done(sq: Sequencer, seq: int, offset: str) -> Decision:
    sq.next_seq = seq + 1
    if offset > sq.last_offset:
        sq.last_offset = offset
    return Decision(Act.DONE, offset=offset)


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
    before = sq.epoch
    sq.begin_claim(None, server_epoch, fenced=True)
    sq.maybe_resequence()
    if sq.epoch == before:  # the claim could not start (stopped, epoch overflow)
        return Decision(Act.RAISE, error=sq.fatal or stale_epoch(sq, epoch, o.epoch, o))
    delay, sq.claim_delay = min(sq.claim_delay or 0.0, max(0.0, deadline - now)), None
    return Decision(Act.RETRY, delay=delay) if delay > 0 else SEND


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
