"""The producer's decision core: a pure state machine for epochs and sequence numbers.

No HTTP, no threads, no sleeping and no lock of its own: the producer calls it with its
lock held (see ``producer.py`` for the lock order), and it answers with what to do next.

API (every method is called with the producer lock held):

- Work: :meth:`Sequencer.next_work` says what an idle sender should do — a
  :class:`Task` of kind ``SEAL`` (a slot is reserved; seal the buffer), ``RESEND`` (a
  renumbered batch), ``PROBE`` (read the stream's tail: call :meth:`probe_done`),
  ``VERIFY`` (look for in-doubt batches after an epoch change, or after a fence before
  they are reported: :meth:`verify_candidates`, :meth:`verified`),
  ``FAIL_BUFFER``, ``WAIT`` (for ``timeout`` seconds or a notification) or ``STOP``.
  Every SEAL/RESEND/VERIFY is ended with :meth:`finish_work`.
- Batches: :meth:`admit` a sealed batch (False: parked until a new epoch); before each
  send :meth:`check` it (False: it was failed or parked meanwhile), wait until
  :meth:`turn_ok` (pipelined seqs reach the server in order: lower seqs are written, and,
  once a seq was overtaken, a large batch two seqs below is answered:
  :meth:`large_ahead`), take ``(epoch, seq)`` from :meth:`start_attempt`, report the body
  written with :meth:`written`, then feed the :class:`~.outcome.Outcome` to
  :meth:`on_outcome`. It returns a :class:`Decision`: ``DONE`` (acknowledged, failed or
  parked: let go), ``RETRY`` after ``delay`` seconds, ``WAIT_EARLIER`` (send again once
  the seqs in ``earlier`` are resolved: see :meth:`any_pending`), ``CHECK_STORED`` (read
  the stream after the probe offset and call :meth:`checked`) or ``SPLIT_JSON`` (drop
  invalid JSON messages: :meth:`split_json`). After ``RETRY``/``WAIT_EARLIER``/``SEND``
  the sender loops: ``check``, ``turn_ok``, ``start_attempt`` again (same epoch, seq and
  body). Seq 0 of a generation is sent only once the tail is known: :meth:`needs_probe`,
  :meth:`probe_running`, :meth:`probe_done`. A transport failure marks the body written
  itself. The senders' own events: :meth:`close_requested`, :meth:`content_type_known`
  (at each seal), :meth:`earlier_resolved` (after ``WAIT_EARLIER``) and :meth:`crashed`
  (a bug).
- Closing the stream: :meth:`close_attempt` then :meth:`on_close_outcome` (same rules);
  on ``CHECK_STORED`` (a 204: closed, or a plain duplicate?) a HEAD, then
  :meth:`close_checked`.
- Reports go to the :class:`Sink`: ``acked``, ``failed`` (with the messages) and
  ``stopped`` (a fatal error: refuse appends, fail the buffer). ``phase``, ``epoch``,
  ``next_seq``, ``last_offset`` and ``fatal`` can be read at any time.

The rules (``rules.py``) decide what each outcome means without changing anything; the
sequencer applies the changes their decision carries (``changes.py``) in :meth:`_apply`,
so each piece of its state is changed by the sequencer alone. Its code is in three
parts: ``ledger.py`` (the state, settling batches, claims), ``renumbering.py`` (after an
epoch change or a fence: renumbering and looking for in-doubt batches) and this module
(the API above). A journal is taken over with :meth:`take_over`.

The phase changes only in :meth:`_to`, which checks :data:`ALLOWED` and logs each change.
Retry delays come from the given ``RetryPolicy`` (``jitter=False`` makes them
deterministic); ``now`` is always passed in, so a simulation can drive time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import errors
from . import rules
from .actions import ALLOWED, DONE, SEND, Act, Decision, Phase, Sink, Task, Work
from .batch import Batch, BatchState
from .changes import (
    Ack,
    Change,
    Claim,
    CloseClaim,
    Closed,
    CountRetry,
    Expect,
    Fail,
    Fatal,
    Hold,
    Mark,
    Narrow,
    Park,
    Retried,
    Split,
    Undoubt,
    Written,
)
from .outcome import Outcome
from .renumbering import Renumbering

if TYPE_CHECKING:
    from .journal import Journal

__all__ = ["ALLOWED", "Act", "Decision", "Phase", "Sequencer", "Sink", "Task", "Work"]

#: A body this large may still be on its way to the server when it is written to its
#: socket: once a seq was overtaken, the window behind such a batch is two (see
#: :meth:`Sequencer.large_ahead`).
LARGE_BODY = 256 * 1024


class Sequencer(Renumbering):
    """Epochs, sequence numbers, probes and the decision for every outcome."""

    def may_send(self) -> bool:
        # Until an epoch is confirmed by a success (auto-claim), one request at a time.
        return self.phase is Phase.STEADY or self.in_flight == 0

    # -- work --------------------------------------------------------------------------
    def next_work(self, buffered: bool, due_in: float, now: float) -> Task:
        """What an idle sender should do (``due_in``: seconds until the buffer is due)."""
        if self.must_look():
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

    def check(self, batch: Batch) -> bool:
        """May the sender go on with this batch? (False: it was failed or parked.)"""
        instead = rules.may_go_on(self, batch)
        if instead is None:
            return True
        for change in instead:
            self._change(batch, change)
        return False

    def turn_ok(self, batch: Batch) -> bool:
        if batch.gen != self.gen:
            return True
        seq = batch.seq
        if any(s < seq for s in self.unwritten) or self.large_ahead(batch):
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

    # -- outcomes (the rules decide, in rules.py; _apply makes their changes) ---------------
    def on_outcome(self, batch: Batch, o: Outcome, now: float) -> Decision:
        """Decide what a batch's answer (or its failure) means."""
        return self._apply(batch, rules.on_outcome(self, batch, o, now))

    def transient(self, batch: Batch, err: errors.DurableStreamError,
                  retry_after: float | None, now: float) -> Decision:
        """Retry later with the same (epoch, seq, body), or give up at the deadline."""
        return self._apply(batch, rules.transient(self, batch, err, retry_after, now))

    def checked(self, batch: Batch, o: Outcome, found: bool | None, now: float
                ) -> Decision:
        """The result of looking for a 204'd batch after its generation's probe."""
        return self._apply(batch, rules.checked(self, batch, o, found, now))

    def split_json(self, batch: Batch, good: list[bytes], bad: list[tuple[bytes, str]],
                   err: errors.DurableStreamError) -> Decision:
        """After a 400 in JSON mode: report the invalid messages, resend the valid ones."""
        decision = self._apply(batch, rules.split_json(self, batch, good, bad, err))
        if self.journal is not None and decision.act is Act.SEND:
            try:
                self.journal.resealed(batch, self.json_mode)
            except errors.JournalError as exc:
                self.stop(exc)
                self.fail(batch, exc)
                return DONE
        return decision

    def _apply(self, batch: Batch, decision: Decision) -> Decision:
        """Make the changes a rule decided for ``batch``, in order: the one place where
        an outcome changes the batch and the sequencer."""
        for change in decision.changes:
            self._change(batch, change)
        return decision

    def _change(self, batch: Batch, change: Change) -> None:
        match change:
            case Ack(offset, duplicate):
                self.ack(batch, offset, duplicate=duplicate)
            case Fail(err, hole):
                self.fail(batch, err, hole=hole)
            case Fatal(err, fenced_by):
                if self.fatal is None:
                    self.stop(err, fenced_by=fenced_by)
                self.fail_stopped(batch, err)
            case Mark(maybe_stored, ambiguous):
                batch.maybe_stored = maybe_stored
                if ambiguous is not None:
                    batch.ambiguous = ambiguous
            case Written():
                self.written(batch.gen, batch.seq)
            case Hold():
                self.unwritten.add(batch.seq)
            case Retried():
                batch.retry_n += 1
            case Expect(seq):
                batch.last_expected = seq
            case Park():
                self.park_or_fail(batch)
            case Split(good, bad, err):
                self.sink.failed(bad, err, sum(len(m) for m in bad))
                batch.messages = good
                batch.nbytes = sum(len(m) for m in good)
                batch.body = b"[" + b",".join(good) + b"]"
                batch.retry_n = 0
            case Claim(server_epoch, fenced, of_batch):
                self.begin_claim(batch if of_batch else None, server_epoch, fenced=fenced)
            case Undoubt(gen, seq):
                self.doubtful.discard((gen, seq))
            case Narrow():
                self.window = max(1.0, self.window / 2)
                self.overtaken(batch)
            case _:
                raise AssertionError(f"{change!r} is not a change of a batch")

    # -- close_stream ---------------------------------------------------------------------
    def close_attempt(self) -> tuple[int, int]:
        """Count one closing POST; the (epoch, seq) to send it with."""
        self.counters.requests += 1
        return self.epoch, self.next_seq

    def on_close_outcome(self, o: Outcome, epoch: int, seq: int, now: float, deadline: float,
                         retry_n: int) -> Decision:
        """The decision for an answer to the closing POST (carrying producer headers)."""
        return self._apply_close(
            rules.on_close_outcome(self, o, epoch, seq, now, deadline, retry_n))

    def close_checked(self, o: Outcome, epoch: int, seq: int, closed: bool | None,
                      now: float, deadline: float, retry_n: int) -> Decision:
        """After ``CHECK_STORED`` for the close: ``closed`` from a HEAD (None: failed)."""
        return self._apply_close(
            rules.close_checked(self, o, epoch, seq, closed, now, deadline, retry_n))

    def _apply_close(self, decision: Decision) -> Decision:
        for change in decision.changes:
            match change:
                case CountRetry():
                    self.counters.retries += 1
                case Closed(seq, offset):
                    self.next_seq = seq + 1
                    if offset > self.last_offset:
                        self.last_offset = offset
                case CloseClaim(server_epoch, cap, fallback):
                    # The claim completes the decision: after its backoff, or RAISE if
                    # it could not start (stopped, epoch overflow).
                    before = self.epoch
                    self.begin_claim(None, server_epoch, fenced=True)
                    self.maybe_resequence()
                    if self.epoch == before:
                        return Decision(Act.RAISE, error=self.fatal or fallback)
                    delay, self.claim_delay = min(self.claim_delay or 0.0, cap), None
                    return Decision(Act.RETRY, delay=delay) if delay > 0 else SEND
                case _:
                    raise AssertionError(f"{change!r} is not a change of a close")
        return decision

    # -- a journal's past ---------------------------------------------------------------
    def take_over(self, journal: Journal, *, epoch: int | None, next_seq: int,
                  probe: str | None, batches: list[Batch], json_mode: bool | None = None,
                  owned: bool = False, holes: list[int] | None = None) -> None:
        """Resume where a reopened journal left off (``journal_attach.attach``): at its
        ``epoch`` and ``next_seq``, with its tail ``probe``, and queue its pending sealed
        ``batches`` (their journaled epoch, seq and body) to be resent first: each may be
        stored from before the crash. All are of ``epoch`` (a renumbering is one journal
        record). ``owned``: a 200 proved the server's state at ``epoch`` ours, so a 204
        for one of our seqs is ours; otherwise it is checked in the stream after
        ``probe`` (that state may be another writer's at the same id and epoch).
        ``holes``: seqs of ``epoch`` reported failed that may or may not be stored (kept
        as ``doubtful``, as the live producer kept them)."""
        for b in batches:
            if b.epoch != epoch or not 0 <= b.seq < next_seq:
                raise ValueError(f"{b!r} is not a batch of epoch {epoch} below seq {next_seq}")
        if holes and (epoch is None or not all(0 <= s < next_seq for s in holes)):
            raise ValueError(f"holes {holes} are not seqs of epoch {epoch} below {next_seq}")
        self.journal = journal
        if json_mode is not None:
            self.json_mode = json_mode
        if epoch is not None:
            self.epoch = epoch
            self.next_seq = next_seq
            self.fresh_epoch = False
            self.highest_sent[0] = next_seq - 1
            self.stored_gen = 0 if owned else -1
            self.early_probe_gen = 0  # a tail read now could postdate our own data
            if probe is not None:
                self.probes[0] = probe
            self.doubtful.update((0, s) for s in holes or ())
        for b in batches:
            b.gen = 0
            b.maybe_stored = b.ambiguous = True
            b.move(BatchState.QUEUED)
            self.batches[b.id] = b
            self.resend.append(b)
            self.unwritten.add(b.seq)
            self.counters.batches += 1

    # -- events of the senders (the pool and Delivery report them; nothing else writes
    # -- the sequencer's or a batch's state) ------------------------------------------------
    def close_requested(self) -> None:
        """``close()`` began (appends are refused already): idle senders get STOP once
        nothing is left to send, and after a fatal error a batch is not retried."""
        self.stopping = True

    def content_type_known(self, json_mode: bool) -> None:
        """A batch was built for the stream's content type (``json_mode``: its body is a
        JSON array): it is journaled with it, and a 400 to such a batch of several
        messages splits out the invalid ones (``split_json``)."""
        self.json_mode = json_mode

    def earlier_resolved(self, batch: Batch) -> None:
        """The seqs an out-of-order 409 named as missing are resolved (``any_pending``
        turned False): the resend of ``batch`` starts a new run of retries (the first
        delay again, not one grown by the wait)."""
        batch.retry_n = 0

    def crashed(self, batch: Batch, err: errors.DurableStreamError) -> None:
        """Delivering ``batch`` raised unexpectedly (a bug): fail it alone with ``err``,
        in doubt if it was ever sent (it may be stored)."""
        if batch.attempts:
            batch.ambiguous = True
        self.fail(batch, err)

    #: the latest generation in which a seq overtook an earlier one (a 409, ``Narrow``)
    overtaken_gen = -1

    def overtaken(self, batch: Batch) -> None:
        """``batch`` reached the server before an earlier seq of its generation (a 409
        named the earlier one): from now on, the window behind a large batch of this
        generation is two (:meth:`large_ahead`)."""
        self.overtaken_gen = batch.gen

    def large_ahead(self, batch: Batch) -> bool:
        """Once a seq of ``batch``'s generation was overtaken (:meth:`overtaken`): is a
        large batch (a body of ``LARGE_BODY`` bytes or more) two or more seqs below
        ``batch`` unanswered? Then ``batch`` waits for its turn: behind a large batch the
        window is two. Written to its socket, a large body may still be on its way to the
        server, and a later seq sent on another connection that arrives first is refused
        (409) and uploaded again; the seq right after it still goes once it is written,
        so that one upload overlaps the server's work. (Until the first overtaking the
        whole window is used: most servers and links never reorder.)"""
        seq, gen = batch.seq, batch.gen
        return gen == self.overtaken_gen and any(
            b.gen == gen and 0 <= b.seq < seq - 1 and len(b.body) >= LARGE_BODY
            for b in self.batches.values())
