"""The sequencer's books: its state, its phase, how a batch gets its (epoch, seq) and ends
(acknowledged, failed, parked), and the move to a new epoch. The first of the three parts
of the :class:`~.sequencer.Sequencer` (README "Parts"): ``Ledger`` here, then
``Renumbering`` (``renumbering.py``: after an epoch change, renumbering the parked batches
or looking for the in-doubt ones first) and ``Sequencer`` (``sequencer.py``: the API the
senders call, applying the rules' decisions). Every method is called with the producer
lock held."""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from .. import _jitter, errors
from .. import _protocol as P
from .._http import RetryPolicy
from .._redact import redact_url
from .actions import ALLOWED, Phase, Sink
from .batch import Batch, BatchState, Counters
from .reporter import copy_error

if TYPE_CHECKING:
    from .journal import Journal

log = logging.getLogger("durable_streams.producer")


class Ledger:
    """The state of the sequencer, and the settling of batches."""

    def __init__(self, *, producer_id: str, url: str, epoch: int, auto_claim: bool,
                 fresh_epoch: bool, max_in_flight: int, retry: RetryPolicy,
                 delivery_timeout: float, sink: Sink, counters: Counters | None = None,
                 json_mode: bool = False) -> None:
        self.producer_id = producer_id
        self.url = url
        self.where = redact_url(url)
        self.auto_claim = auto_claim
        self.fresh_epoch = fresh_epoch
        self.max_in_flight = max_in_flight
        self.retry = retry
        self.delivery_timeout = delivery_timeout
        self.sink = sink
        self.counters = counters if counters is not None else Counters()
        self.json_mode = json_mode
        self.phase = Phase.UNCONFIRMED if auto_claim else Phase.STEADY
        self.epoch = epoch
        self.next_seq = 0
        self.gen = 0  # one generation per epoch change
        self.last_offset = ""
        self.fatal: errors.DurableStreamError | None = None
        self.stopping = False
        self.highest_sent: dict[int, int] = {}  # gen -> highest seq sent
        self.stored_gen = -1  # the latest generation whose server state a 200 proved ours
        self.doubtful: set[tuple[int, int]] = set()  # (gen, seq) failed, outcome unknown
        self.claim_fenced = False
        # gen -> the stream's tail read before the generation's first send: where to look
        # for our own data when a 204 is otherwise ambiguous
        self.probes: dict[int, str] = {}
        self.early_probe_gen = -1
        self.probing: int | None = None  # the gen of the early probe under way
        # Seqs of the current gen whose next attempt is not on the wire yet: seq N starts
        # writing only once every lower unresolved seq has, so pipelined batches reach the
        # server in order (§5.2.1) instead of being answered 409.
        self.unwritten: set[int] = set()
        # How many batches may be on the wire ahead of the oldest unacknowledged one:
        # halved on a 409 caused by overtaking, grown by one per window of acks.
        self.window = float(min(2, max_in_flight))
        self.batches: dict[int, Batch] = {}  # unresolved sealed batches by id
        self.in_flight = 0  # SEAL/RESEND/VERIFY tasks under way
        self.parked: list[Batch] = []
        self.resend: deque[Batch] = deque()
        # After a fence (stop with fenced_by): the server's epoch; batches of a lower one
        # in doubt are parked and looked for in the stream before they are failed, each
        # with the error it was stopped by.
        self.fenced_by: int | None = None
        self.look_errors: dict[int, errors.DurableStreamError] = {}
        #: the crash-safe journal (``journal=``): told of every seal, ack, failure, probe
        self.journal: Journal | None = None
        # Claims in a row without an acknowledgement in between: the second and later
        # ones wait (claim_backoff) before their batches are sent again, so that a server
        # that fences (or "duplicates") every request cannot drive a claim storm.
        self.claims_in_row = 0
        self.claim_delay: float | None = None  # set by a claim; started by next_work
        self.resend_at = 0.0  # renumbered batches are not resent before this time

    # -- phase -------------------------------------------------------------------------
    def _to(self, phase: Phase, why: str) -> None:
        if phase not in ALLOWED[self.phase]:
            raise RuntimeError(f"producer phase {self.phase.name} -> {phase.name} is not "
                               f"allowed ({why})")
        log.debug("producer %s: %s -> %s (%s)", self.producer_id, self.phase.name,
                  phase.name, why)
        self.phase = phase

    @property
    def draining(self) -> bool:
        return self.phase is Phase.DRAINING or self.phase is Phase.VERIFYING

    # -- sequence numbers ----------------------------------------------------------------
    def _assign(self, batch: Batch) -> None:
        batch.epoch = self.epoch
        batch.gen = self.gen
        batch.seq = self.next_seq
        batch.maybe_stored = False
        self.next_seq += 1
        self.unwritten.add(batch.seq)

    def _journal_sealed(self, batches: list[Batch]) -> bool:
        """Journal the (epoch, seq) of batches before their first send; if that cannot be
        written, stop (sending them unjournaled could store them twice after a crash)."""
        if self.journal is None or not batches:
            return True
        try:
            self.journal.sealed(batches, self.json_mode)
        except errors.JournalError as exc:
            self.stop(exc)
            for batch in batches:
                self.fail(batch, exc)
            return False
        return True

    # -- settling ------------------------------------------------------------------------
    def ack(self, batch: Batch, offset: str, *, duplicate: bool) -> None:
        if not batch.settle(BatchState.ACKED):
            return
        self.batches.pop(batch.id, None)
        if self.journal is not None:
            self.journal.resolved(batch, acked=True)
        if batch.gen == self.gen:
            if self.phase is Phase.UNCONFIRMED:
                self._to(Phase.STEADY, f"epoch {self.epoch} confirmed")
            self.unwritten.discard(batch.seq)
        c = self.counters
        c.acked += len(batch.messages)
        c.bytes_acked += batch.nbytes
        if duplicate:
            c.duplicates += 1
        if offset > self.last_offset:
            self.last_offset = offset
        if not duplicate and batch.gen > self.stored_gen and self._state_is_ours(batch):
            self.stored_gen = batch.gen
            if self.journal is not None:  # the next producer on the journal trusts it too
                self.journal.proven(batch.epoch)
        if not duplicate:
            self.claims_in_row = 0
        if not duplicate and self.window < self.max_in_flight:
            self.window = min(float(self.max_in_flight), self.window + 1 / self.window)
        self.sink.acked(batch, offset, duplicate)

    def _state_is_ours(self, batch: Batch) -> bool:
        """Does a 200 for ``batch`` prove the server's state for its epoch is ours? Only
        when every lower seq of the generation was acknowledged by us first: a 200 for
        seq N > 0 may continue another writer's seq N-1 (an earlier run of the job at the
        same epoch) while our own lower seqs were never stored. (Checked until the first
        such 200 of a generation, not on every 200.)"""
        gen, seq = batch.gen, batch.seq
        return not (any(g == gen for g, _ in self.doubtful) or any(
            b.gen == gen and 0 <= b.seq < seq for b in self.batches.values()))

    def fail(self, batch: Batch, err: errors.DurableStreamError, *, hole: bool = False) -> None:
        if not batch.settle(BatchState.FAILED):
            return
        self.batches.pop(batch.id, None)
        if self.journal is not None:
            self.journal.resolved(batch, acked=False)
        if batch.gen == self.gen:
            self.unwritten.discard(batch.seq)
        if (batch.maybe_stored or batch.ambiguous) and not err.maybe_stored:
            err = _in_doubt(err)
        self.sink.failed(batch.messages, err, batch.nbytes)
        if hole and self.fatal is None and batch.gen == self.gen:
            if batch.maybe_stored:
                # It may have been stored after all (its answers were lost). Renumbering
                # later batches now could store one of them twice; keep their (epoch, seq)
                # until the server confirms the hole with a 409 naming this seq.
                self.doubtful.add((batch.gen, batch.seq))
                return
            # Later batches of this epoch can never be accepted after the hole: move them
            # to a fresh epoch (we own the id, so epoch + 1 is ours to claim).
            self.begin_claim(None, self.epoch)

    def stop(self, err: errors.DurableStreamError, *, fenced_by: int | None = None
             ) -> None:
        """A fatal error: fail everything not held by a sender; nothing more is sent.
        ``fenced_by`` (a fence: the server's epoch): batches in doubt of a lower epoch
        are looked for in the stream first. A later stop (closing, a journal failure)
        fails those still waiting at once."""
        if self.fatal is not None:
            if self.fenced_by is not None:
                self.fenced_by = None
                waiting, self.parked = self.parked, []
                for batch in sorted(waiting, key=lambda b: b.first_index):
                    self.fail(batch, self.look_errors.pop(batch.id, self.fatal))
            return
        self.fatal = err
        self.fenced_by = fenced_by
        self._to(Phase.FAILED, type(err).__name__)
        log.warning("producer %s: stopping: %s", self.producer_id, err)
        parked, self.parked = self.parked, []
        for batch in parked:
            self.fail_stopped(batch, err)
        while self.resend:
            self.fail_stopped(self.resend.popleft(), err)
        self.sink.stopped(err)

    def fail_stopped(self, batch: Batch, err: errors.DurableStreamError) -> None:
        """Fail a batch because the producer stopped with ``err``; after a fence, a batch
        in doubt, of an epoch below the fence's, whose generation's tail is known, waits
        (parked) to be looked for first."""
        if (self.fenced_by is not None and batch.epoch < self.fenced_by
                and batch.maybe_stored and batch.gen in self.probes and not batch.final):
            if batch.state is not BatchState.PARKED:
                batch.move(BatchState.PARKED)
            self.parked.append(batch)
            self.look_errors[batch.id] = err
            return
        self.fail(batch, err)

    def park(self, batch: Batch) -> None:
        if batch.state is not BatchState.ACTIVE:
            return
        batch.move(BatchState.PARKED)
        self.parked.append(batch)

    def park_or_fail(self, batch: Batch) -> None:
        if self.fatal is not None:  # the claim could not start (e.g. epoch overflow)
            self.fail(batch, self.fatal)
        else:
            self.park(batch)

    # -- epochs ----------------------------------------------------------------------------
    def begin_claim(self, batch: Batch | None, server_epoch: int, *,
                    fenced: bool = False) -> None:
        """Move to a higher epoch: drain, then re-sequence every unacknowledged batch."""
        if batch is not None and batch.gen != self.gen:
            return  # a transition is already under way
        if self.fatal is not None:
            return
        if server_epoch + 1 > P.MAX_SAFE_INTEGER:
            self.stop(errors.ProducerError(f"epoch overflow for {self.where}", url=self.url))
            return
        self.epoch = max(self.epoch + 1, server_epoch + 1)
        self.gen += 1
        # A batch whose answer was lost may be in the stream under the old epoch, whether
        # we were fenced (403, another writer's 204) or left the epoch after a hole (a
        # lower seq than the hole can be stored): such batches are looked for (VERIFY).
        self.claim_fenced = fenced
        self.unwritten = set()
        while self.resend:
            queued = self.resend.popleft()
            queued.move(BatchState.PARKED)
            self.parked.append(queued)
        self.next_seq = 0
        self.counters.claims += 1
        self.claims_in_row += 1
        self.claim_delay = self.claim_backoff()
        self._to(Phase.DRAINING, f"claiming epoch {self.epoch}")
        log.info("producer %s: claiming epoch %d for %s", self.producer_id, self.epoch,
                 self.where)

    def claim_backoff(self) -> float:
        """Seconds before the batches of the latest claim are sent: none for the first
        claim in a row (the normal case: a restarted writer claims once), then the retry
        policy's delay but at least 0.25 s, doubling up to 5 s (with jitter)."""
        n = self.claims_in_row - 2
        if n < 0:
            return 0.0
        floor = min(0.25 * 2.0 ** min(n, 5), 5.0) * (0.5 + _jitter.fraction() / 2)
        return max(self.retry.delay(min(n, 30)), floor)


def _in_doubt(err: errors.DurableStreamError) -> errors.DurableStreamError:
    """``err`` for a batch that may be stored after all: a copy that says so (message and
    ``maybe_stored``), so that a caller does not re-append it blindly."""
    doubt = copy_error(err)
    doubt.maybe_stored = True
    text = str(err)
    if not ("may have been stored" in text or "may or may not" in text):
        doubt.message = text + (
            " (it may have been stored: an earlier attempt got no clear answer, so "
            "re-appending it may duplicate it)")
        doubt.args = (doubt.message,)
    return doubt
