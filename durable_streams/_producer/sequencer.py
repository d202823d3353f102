"""The producer's decision core: a pure state machine for epochs and sequence numbers.

No HTTP, no threads, no sleeping and no lock of its own: the producer calls it with its
lock held (see ``producer.py`` for the lock order), and it answers with what to do next.

API (every method is called with the producer lock held):

- Work: :meth:`Sequencer.next_work` says what an idle sender should do — a
  :class:`Task` of kind ``SEAL`` (a slot is reserved; seal the buffer), ``RESEND`` (a
  renumbered batch), ``PROBE`` (read the stream's tail: call :meth:`probe_done`),
  ``VERIFY`` (look for in-doubt batches: :meth:`verify_candidates`, :meth:`verified`),
  ``FAIL_BUFFER``, ``WAIT`` (for ``timeout`` seconds or a notification) or ``STOP``.
  Every SEAL/RESEND/VERIFY is ended with :meth:`finish_work`.
- Batches: :meth:`admit` a sealed batch (False: parked until a new epoch); before each send
  :meth:`check` it (False: it was failed or parked meanwhile), wait until :meth:`turn_ok`
  (pipelined seqs reach the server in order), take ``(epoch, seq)`` from
  :meth:`start_attempt`, report the body written with :meth:`written`, then feed the
  :class:`~.outcome.Outcome` to :meth:`on_outcome`. It returns a :class:`Decision`:
  ``DONE`` (acknowledged, failed or parked: let go), ``RETRY`` after ``delay`` seconds,
  ``WAIT_EARLIER`` (send again once the seqs in ``earlier`` are resolved: see
  :meth:`any_pending`), ``CHECK_STORED`` (read the stream after the probe offset and call
  :meth:`checked`) or ``SPLIT_JSON`` (drop invalid JSON messages: :meth:`split_json`).
  After ``RETRY``/``WAIT_EARLIER``/``SEND`` the sender loops: ``check``, ``turn_ok``,
  ``start_attempt`` again (same epoch, seq and body). Seq 0 of a generation is sent only
  once the tail is known: :meth:`needs_probe`, :meth:`probe_running`, :meth:`probe_done`.
  A transport failure marks the body written itself; set ``stopping`` when closing.
- Closing the stream: :meth:`close_attempt` then :meth:`on_close_outcome` (same rules);
  on ``CHECK_STORED`` (a 204: closed, or a plain duplicate?) a HEAD, then
  :meth:`close_checked`.
- Reports go to the :class:`Sink`: ``acked``, ``failed`` (with the messages) and
  ``stopped`` (a fatal error: refuse appends, fail the buffer). ``phase``, ``epoch``,
  ``next_seq``, ``last_offset`` and ``fatal`` can be read at any time.

The phase changes only in :meth:`_to`, which checks :data:`ALLOWED` and logs each change.
Retry delays come from the given ``RetryPolicy`` (``jitter=False`` makes them
deterministic); ``now`` is always passed in, so a simulation can drive time.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from typing import TYPE_CHECKING

from .. import _protocol as P
from .. import errors
from .._http import RetryPolicy
from .._redact import redact_url
from . import rules
from .actions import ALLOWED, DONE, Act, Decision, Phase, Sink, Task, Work
from .batch import Batch, BatchState, Counters
from .outcome import Outcome
from .reporter import copy_error

if TYPE_CHECKING:
    from .journal import Journal

log = logging.getLogger("durable_streams.producer")

__all__ = ["ALLOWED", "Act", "Decision", "Phase", "Sequencer", "Sink", "Task", "Work"]


class Sequencer:
    """Epochs, sequence numbers, probes and the decision for every outcome."""

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

    def may_send(self) -> bool:
        # Until an epoch is confirmed by a success (auto-claim), one request at a time.
        return self.phase is Phase.STEADY or self.in_flight == 0

    # -- work --------------------------------------------------------------------------
    def next_work(self, buffered: bool, due_in: float, now: float) -> Task:
        """What an idle sender should do (``due_in``: seconds until the buffer is due)."""
        if self.phase is Phase.VERIFYING and self.in_flight == 0:
            self.in_flight += 1
            return Task(Work.VERIFY)
        draining = self.draining
        if self.resend and not draining and self.may_send():
            if self.claim_delay is not None:  # the backoff of the claim starts now
                self.resend_at, self.claim_delay = now + self.claim_delay, None
            until = min(self.resend_at, self.resend[0].deadline)
            if now < until:
                # Renumbered batches go first (their seqs are the lowest): nothing is
                # sealed meanwhile either. Past its deadline a batch is sent once more
                # and given up on at the answer (the rules bound every claim loop).
                return Task(Work.WAIT, timeout=until - now)
            batch = self.resend.popleft()
            batch.move(BatchState.ACTIVE)
            batch.retry_n = 0
            self.in_flight += 1
            return Task(Work.RESEND, batch)
        if buffered and not draining:
            if due_in <= 0:
                if self.fatal is not None:
                    return Task(Work.FAIL_BUFFER)
                if self.may_send():
                    self.in_flight += 1  # the slot is reserved before sealing
                    return Task(Work.SEAL)
                return Task(Work.WAIT)
            if self.early_probe_gen != self.gen and self.gen not in self.probes:
                # Note the tail while the first batch fills rather than on the send path.
                self.early_probe_gen = self.probing = self.gen
                return Task(Work.PROBE, gen=self.gen)
            return Task(Work.WAIT, timeout=due_in)
        if self.stopping and not self.resend and not self.parked:
            return Task(Work.STOP)
        return Task(Work.WAIT)

    def finish_work(self) -> None:
        """A SEAL, RESEND or VERIFY task ended (whatever became of its batch)."""
        self.in_flight -= 1
        if self.phase is Phase.VERIFYING:
            self._to(Phase.DRAINING, "verified")
        self.maybe_resequence()

    # -- probes ------------------------------------------------------------------------
    def needs_probe(self, batch: Batch) -> bool:
        """Seq 0 of a generation is not sent before the tail was read (one HEAD). A batch
        of an older generation needs none: it will be parked, not sent."""
        return batch.seq == 0 and batch.gen == self.gen and batch.gen not in self.probes

    def probe_running(self, gen: int) -> bool:
        return self.probing == gen

    def probe_done(self, gen: int, offset: str | None, *, early: bool) -> None:
        """The tail read for ``gen`` (``offset`` None: the HEAD failed)."""
        if early and self.probing == gen:
            self.probing = None
        if offset is None:
            return
        # First result wins: a probe answered later may postdate our first send. An early
        # probe counts only if nothing of this generation was sent meanwhile; seq 0's own
        # probe only if no later seq went out first (after the bounded turn wait): the
        # tail may lie after our own data then, and "not found" would be a lie.
        sent = self.highest_sent.get(gen, -1)
        if gen == self.gen and gen not in self.probes and sent < (0 if early else 1):
            self.probes[gen] = offset
            if self.journal is not None:
                self.journal.probed(self.epoch, offset)
            for old in [g for g in self.probes if g < gen - 8]:
                del self.probes[old]

    # -- batches -------------------------------------------------------------------------
    def admit(self, batch: Batch) -> bool:
        """Register a sealed batch; False when it waits (parked) for a new epoch."""
        self.batches[batch.id] = batch
        self.counters.batches += 1
        if self.journal is not None:
            self.journal.admitted(batch)
        if self.draining:
            # An epoch change is under way: this batch gets its seq after the older
            # unacknowledged ones are renumbered, to keep the order.
            batch.move(BatchState.PARKED)
            self.parked.append(batch)
            return False
        self._assign(batch)
        return self._journal_sealed([batch])

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

    def _assign(self, batch: Batch) -> None:
        batch.epoch = self.epoch
        batch.gen = self.gen
        batch.seq = self.next_seq
        batch.maybe_stored = False
        self.next_seq += 1
        self.unwritten.add(batch.seq)

    def check(self, batch: Batch) -> bool:
        """May the sender go on with this batch? (False: it was failed or parked.)"""
        if batch.final:
            return False
        if self.fatal is not None:
            self.fail(batch, self.fatal)
            return False
        if batch.gen != self.gen:
            self.park(batch)
            return False
        return True

    def turn_ok(self, batch: Batch) -> bool:
        if batch.gen != self.gen:
            return True
        seq = batch.seq
        if any(s < seq for s in self.unwritten):
            return False
        lowest = min((b.seq for b in self.batches.values() if b.gen == batch.gen and b.seq >= 0),
                     default=seq)
        return seq - lowest < int(self.window)

    def start_attempt(self, batch: Batch) -> tuple[int, int]:
        """Count one send of ``batch``; returns the (epoch, seq) to send it with."""
        batch.attempts += 1
        self.counters.requests += 1
        if batch.seq > self.highest_sent.get(batch.gen, -1):
            self.highest_sent[batch.gen] = batch.seq
        if batch.attempts > 1:
            self.counters.retries += 1
        return batch.epoch, batch.seq

    def written(self, gen: int, seq: int) -> bool:
        """The body of (gen, seq) is on the wire; True if a waiting sender may go on."""
        if gen == self.gen and seq in self.unwritten:
            self.unwritten.discard(seq)
            return True
        return False

    def pending(self, gen: int, seq: int) -> bool:
        """True when a batch of ours with this (generation, seq) is not resolved yet."""
        return any(b.gen == gen and b.seq == seq for b in self.batches.values())

    def any_pending(self, gen: int, seqs: range) -> bool:
        return any(self.pending(gen, s) for s in seqs)

    # -- outcomes (the rules are in rules.py) --------------------------------------------------
    def on_outcome(self, batch: Batch, o: Outcome, now: float) -> Decision:
        """Decide what a batch's answer (or its failure) means."""
        return rules.on_outcome(self, batch, o, now)

    def transient(self, batch: Batch, err: errors.DurableStreamError,
                  retry_after: float | None, now: float) -> Decision:
        """Retry later with the same (epoch, seq, body), or give up at the deadline."""
        return rules.transient(self, batch, err, retry_after, now)

    def checked(self, batch: Batch, o: Outcome, found: bool | None, now: float
                ) -> Decision:
        """The result of looking for a 204'd batch after its generation's probe."""
        return rules.checked(self, batch, o, found, now)

    def split_json(self, batch: Batch, good: list[bytes], bad: list[tuple[bytes, str]],
                   err: errors.DurableStreamError) -> Decision:
        """After a 400 in JSON mode: report the invalid messages, resend the valid ones."""
        decision = rules.split_json(self, batch, good, bad, err)
        if self.journal is not None and decision.act is Act.SEND:
            try:
                self.journal.resealed(batch, self.json_mode)
            except errors.JournalError as exc:
                self.stop(exc)
                self.fail(batch, exc)
                return DONE
        return decision

    def close_attempt(self) -> tuple[int, int]:
        """Count one closing POST; the (epoch, seq) to send it with."""
        return rules.close_attempt(self)

    def on_close_outcome(self, o: Outcome, epoch: int, seq: int, now: float, deadline: float,
                         retry_n: int) -> Decision:
        """The decision for an answer to the closing POST (carrying producer headers)."""
        return rules.on_close_outcome(self, o, epoch, seq, now, deadline, retry_n)

    def close_checked(self, o: Outcome, epoch: int, seq: int, closed: bool | None,
                      now: float, deadline: float, retry_n: int) -> Decision:
        """After ``CHECK_STORED`` for the close: ``closed`` from a HEAD (None: failed)."""
        return rules.close_checked(self, o, epoch, seq, closed, now, deadline, retry_n)

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

    def stop(self, err: errors.DurableStreamError) -> None:
        """A fatal error: fail everything not held by a sender; nothing more is sent."""
        if self.fatal is not None:
            return
        self.fatal = err
        self._to(Phase.FAILED, type(err).__name__)
        log.warning("producer %s: stopping: %s", self.producer_id, err)
        for parked in self.parked:
            self.fail(parked, err)
        self.parked.clear()
        while self.resend:
            self.fail(self.resend.popleft(), err)
        self.sink.stopped(err)

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
        floor = min(0.25 * 2.0 ** min(n, 5), 5.0) * (0.5 + random.random() / 2)
        return max(self.retry.delay(min(n, 30)), floor)

    def maybe_resequence(self) -> None:
        """When no old-epoch request is in flight, renumber the parked batches in order."""
        if self.phase is not Phase.DRAINING or self.in_flight > 0:
            return
        if any(b.maybe_stored for b in self.parked):
            # Some answers were lost: those batches may already be in the stream under
            # the old epoch. A sender looks for them first (VERIFY).
            why = "fenced" if self.claim_fenced else "after a hole"
            self._to(Phase.VERIFYING, f"in-doubt batches to look for ({why})")
            return
        parked = sorted(self.parked, key=lambda b: b.first_index)
        self.parked = []
        for batch in parked:
            self._assign(batch)
            batch.move(BatchState.QUEUED)
            self.resend.append(batch)
        self._to(Phase.UNCONFIRMED, f"{len(parked)} batch(es) renumbered")
        self._journal_sealed(parked)  # one record: a renumbering is atomic in the journal

    def verify_candidates(self) -> list[Batch]:
        """Parked batches whose answer was lost before the epoch changed."""
        return [b for b in self.parked if b.maybe_stored]

    def verified(self, batch: Batch, found: bool | None) -> None:
        """Acknowledge it if it is in the stream after its generation's tail probe, resend
        it (renumbered) if it is not, and report it as in doubt if that cannot be told."""
        if batch.state is not BatchState.PARKED or batch not in self.parked:
            return  # failed meanwhile (the producer stopped)
        if found is False:
            # Looked after the tail probe, with every request of the old epoch finished:
            # not stored, and never will be under that (epoch, seq).
            batch.maybe_stored = batch.ambiguous = False
            return
        self.parked.remove(batch)
        batch.move(BatchState.ACTIVE)
        if found is None:
            self.fail(batch, errors.ProducerError(
                f"producer {self.producer_id!r} left its epoch on {self.where} while the "
                "outcome of this batch was unknown (its answer was lost) and the stream "
                "could not be checked: it may or may not be stored, so it is not re-sent",
                url=self.url, code="IN_DOUBT"))
        else:
            self.ack(batch, "", duplicate=True)


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
