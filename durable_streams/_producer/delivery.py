"""One sealed batch on its way: send, wait for its turn or for earlier seqs, retry, read the
stream's tail before seq 0 of a generation, and look for batches whose answer was lost.

Called by a sender thread of :class:`~.sender.SenderPool`, which holds the batch's slot.
Every HTTP call is made without the lock; every sequencer call with it. Each wait has its
own Condition (``waits.py`` lists them with their predicates and who notifies them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from .. import errors
from .batch import Batch, split_json
from .outcome import Outcome, is_transient
from .sequencer import Act, Sequencer
from .transport import Transport, contains_batch
from .waits import Waits

log = logging.getLogger("durable_streams.producer")


class Delivery:
    def __init__(self, lock: threading.Lock, *, waits: Waits, transport: Transport,
                 producer_id: str, probe_wait: float) -> None:
        self.lock = lock
        self.waits = waits
        self.transport = transport
        self.producer_id = producer_id
        self.probe_wait = probe_wait
        self.seq: Sequencer  # set with the pool's (the sequencer reports to the pool)

    def run(self, batch: Batch) -> None:
        """Send one batch until it is acknowledged, failed, or parked for re-sequencing."""
        seq, waits = self.seq, self.waits
        while True:
            if not self._ensure_probe(batch):
                return
            with self.lock:
                if not seq.check(batch):
                    return
                if not seq.turn_ok(batch) and not self._wait_turn(batch):
                    return
                epoch, n = seq.start_attempt(batch)
                gen = batch.gen
            outcome = self.transport.send_batch(batch.body, epoch, n,
                                                self._on_written(gen, n))
            with self.lock:
                before = seq.gen
                decision = seq.on_outcome(batch, outcome, time.monotonic())
                # Acks, failures and a stop notify their waiters from the sink; a claim
                # of a new epoch is seen here.
                waits.on_new_generation(before, seq.gen)
            act = decision.act
            if act is Act.RETRY:
                if not self._sleep(batch, decision.delay):
                    return
            elif act is Act.WAIT_EARLIER:
                if not self._wait_earlier(batch, decision.earlier):
                    return
            elif act is Act.CHECK_STORED:
                self._check_stored(batch, outcome, decision.offset)
                return
            elif act is Act.SPLIT_JSON:
                good, bad = split_json(batch.messages)
                assert decision.error is not None
                with self.lock:
                    again = seq.split_json(batch, good, bad, decision.error)
                if again.act is not Act.SEND:
                    return
            elif act is not Act.SEND:
                return

    def _on_written(self, gen: int, n: int) -> Callable[[], None]:
        def written() -> None:
            # The body is on the wire (called from inside the HTTP call, no lock held).
            with self.lock:
                if self.seq.written(gen, n):
                    self.waits.on_written()
        return written

    # -- waits (lock held inside) -------------------------------------------------------------
    def _sleep(self, batch: Batch, delay: float) -> bool:
        """Wait before a retry; False when the batch was failed or parked meanwhile."""
        with self.lock:
            end = time.monotonic() + delay
            while True:
                if not self.seq.check(batch):
                    return False
                remaining = end - time.monotonic()
                if remaining <= 0:
                    return True
                self.waits.retry.wait(remaining)

    def _wait_turn(self, batch: Batch) -> bool:
        """(lock held) Wait (bounded) until the previous seq is written and the window has
        room; False when the batch was failed or parked meanwhile."""
        end = time.monotonic() + 2.0
        while not self.seq.turn_ok(batch):
            remaining = end - time.monotonic()
            if remaining <= 0:
                return True
            self.waits.turn.wait(remaining)
            if not self.seq.check(batch):
                return False
        return True

    def _wait_earlier(self, batch: Batch, earlier: range) -> bool:
        with self.lock:
            while self.seq.any_pending(batch.gen, earlier):
                if not self.seq.check(batch):
                    return False
                self.waits.earlier.wait(1.0)
            if not self.seq.check(batch):
                return False
            self.seq.earlier_resolved(batch)
            return True

    # -- probes and verification ---------------------------------------------------------------
    def probe(self, gen: int) -> None:
        """The early tail probe of ``gen`` (a PROBE task: while its first batch fills)."""
        offset: str | None = None
        try:
            offset = self.transport.head(retry=False)
        except errors.DurableStreamError as exc:
            log.debug("producer %s: early tail probe failed: %s", self.producer_id, exc)
        finally:
            with self.lock:
                self.seq.probe_done(gen, offset, early=True)
                self.waits.on_probed()

    def _ensure_probe(self, batch: Batch) -> bool:
        """Before seq 0 of a generation, read the stream's tail (settles ambiguous 204s)."""
        if batch.seq != 0:
            return True  # the common case: no lock needed
        seq = self.seq
        while True:
            with self.lock:
                if not seq.needs_probe(batch):
                    return True
                end = time.monotonic() + self.probe_wait
                while seq.probe_running(batch.gen):  # the early probe is under way
                    remaining = end - time.monotonic()
                    if remaining <= 0:
                        break
                    self.waits.probed.wait(remaining)
                if not seq.needs_probe(batch):
                    return True
                gen = batch.gen
            try:
                offset = self.transport.head(retry=False)
            except errors.DurableStreamError as exc:
                with self.lock:
                    if not is_transient(exc):
                        seq.stop(exc)
                        seq.fail(batch, exc)
                        return False
                    decision = seq.transient(batch, exc, getattr(exc, "retry_after", None),
                                             time.monotonic())
                if decision.act is not Act.RETRY or not self._sleep(batch, decision.delay):
                    return False
                continue
            with self.lock:
                # Nobody waits for this one (only seq 0 of the generation needs it).
                seq.probe_done(gen, offset, early=False)
            return True

    def _found(self, start: str | None, batch: Batch) -> bool | None:
        """Is this batch in the stream after ``start`` (its generation's tail probe)?"""
        if start is None:
            return None
        try:
            data = self.transport.read_from(start)
        except errors.DurableStreamError as exc:
            log.warning("producer %s: could not check whether seq %d was stored: %s",
                        self.producer_id, batch.seq, exc)
            return None
        return contains_batch(data, batch.body, batch.messages, bool(self.transport.json_mode))

    def _check_stored(self, batch: Batch, outcome: Outcome, start: str) -> None:
        found = self._found(start, batch)
        with self.lock:
            before = self.seq.gen
            self.seq.checked(batch, outcome, found, time.monotonic())
            self.waits.on_new_generation(before, self.seq.gen)

    def verify(self) -> None:
        """A VERIFY task: look for the in-doubt parked batches (acked or failed: the sink
        notifies)."""
        with self.lock:
            doubtful = [(b, self.seq.probes.get(b.gen)) for b in self.seq.verify_candidates()]
        for batch, start in doubtful:
            found = self._found(start, batch)
            with self.lock:
                self.seq.verified(batch, found)
