"""The sender threads: take a typed task from the sequencer, seal batches, and hand each
to :class:`~.delivery.Delivery` (HTTP through the transport with no lock held, outcomes to
the sequencer with it).

The pool is also the sequencer's :class:`~.sequencer.Sink`: acknowledgements free buffer
room, failures go to the reporter, a fatal error refuses appends and fails the buffer; each
notifies the waits it can end (``waits.py``). Idle senders wait on ``ready`` and are woken
one at a time (the baton, see :meth:`SenderPool._next_task`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref

from .. import errors
from . import lifecycle
from .accumulator import Accumulator, Refusal
from .batch import Batch, Counters, build, split_json
from .delivery import Delivery
from .outcome import is_transient
from .reporter import Reporter, copy_error
from .sequencer import Sequencer, Task, Work
from .transport import Transport
from .waits import Waits

__all__ = ["SenderPool", "build", "split_json"]  # build, split_json: from batch.py

log = logging.getLogger("durable_streams.producer")


class SenderPool:
    def __init__(self, lock: threading.Lock, *, acc: Accumulator, transport: Transport,
                 reporter: Reporter, counters: Counters, producer_id: str, threads: int,
                 delivery_timeout: float, validate_json: bool, probe_wait: float,
                 token: object) -> None:
        self.lock = lock
        self.waits = Waits(lock)  # every Condition on the lock but the buffer's and reporter's
        self.seal_lock = threading.Lock()  # one sealer at a time keeps seq order
        self.acc = acc
        self.transport = transport
        self.reporter = reporter
        self.counters = counters
        self.producer_id = producer_id
        self.n_threads = threads
        self.delivery_timeout = delivery_timeout
        self.validate_json = validate_json
        self.token = token
        self.delivery = Delivery(lock, waits=self.waits, transport=transport,
                                 producer_id=producer_id, probe_wait=probe_wait)
        self._seq: Sequencer | None = None
        #: the producer facade: running senders keep it alive (and in the registry of
        #: lifecycle), so that a producer dropped with messages pending is flushed at exit
        self.owner: object = None
        self.threads: list[threading.Thread] = []
        self.idle = 0  # senders waiting on ``ready`` for work
        self.stopping = False

    @property
    def seq(self) -> Sequencer:
        """The sequencer (set by the producer once built: it reports to this pool)."""
        assert self._seq is not None
        return self._seq

    @seq.setter
    def seq(self, seq: Sequencer) -> None:
        self._seq = self.delivery.seq = seq

    # -- the Sink of the sequencer (lock held) -----------------------------------------------
    def acked(self, batch: Batch, offset: str, duplicate: bool) -> None:
        self.acc.release(batch.nbytes)
        self.waits.on_acked()

    def failed(self, messages: list[bytes], err: errors.DurableStreamError,
               nbytes: int) -> None:
        self.acc.release(nbytes)
        self.counters.failed += len(messages)
        self.counters.failures += 1
        self.reporter.report(err, messages)
        self.waits.on_failed()

    def stopped(self, err: errors.DurableStreamError) -> None:
        self.acc.refuse(err, Refusal.STOPPED)  # wakes blocked appenders to raise it
        self.fail_buffer(err)
        self.waits.on_fatal()

    def fail_buffer(self, err: errors.DurableStreamError) -> None:
        messages, nbytes = self.acc.take_all()
        if messages:
            self.failed(messages, err, nbytes)

    # -- threads ---------------------------------------------------------------------------
    def wake(self) -> None:
        """(lock held) There is something to send: wake an idle sender, or start one."""
        if self.idle:
            self.waits.ready.notify()
        else:
            self._spawn()

    def _spawn(self) -> None:
        """(lock held) Start one more sender thread, up to ``max_in_flight``: threads start
        as the work needs them (every sender busy), not all at the first append."""
        if self.stopping or len(self.threads) >= self.n_threads:
            return
        thread = threading.Thread(target=_sender_main, args=(weakref.ref(self), self.token),
                                  name=f"ds-producer-{self.producer_id}-{len(self.threads)}",
                                  daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # the process is out of threads
            log.warning("producer %s: could not start a sender thread (%s); going on with "
                        "%d", self.producer_id, exc, len(self.threads))
            if not self.threads:
                self.seq.stop(errors.ProducerError(
                    f"producer {self.producer_id!r} could not start a sender thread: {exc}",
                    url=self.transport.url))
            return
        self.threads.append(thread)

    def stop(self) -> list[threading.Thread]:
        """(lock held) Let the senders end once nothing is left to send (``close()`` has
        refused appends already)."""
        self.stopping = True
        self.seq.close_requested()
        self.waits.on_stop()  # every sender must see STOP
        return list(self.threads)

    def after_fork_in_child(self, lock: threading.Lock) -> None:
        """A forked child has none of the parent's threads and never starts its own."""
        self.lock = self.delivery.lock = lock
        self.waits = self.delivery.waits = Waits(lock)
        self.seal_lock = threading.Lock()
        self.threads = []
        self.idle = 0
        self.stopping = True

    def _force(self) -> bool:
        return self.stopping or self.seq.fatal is not None

    def _next_task(self) -> Task:
        with self.lock:
            while True:
                acc = self.acc
                now = time.monotonic()
                due = acc.due_in(now, self._force()) if acc.buf else 0.0
                task = self.seq.next_work(bool(acc.buf), due, now)
                if task.work is Work.WAIT:
                    self.idle += 1
                    try:
                        self.waits.ready.wait(task.timeout)
                    finally:
                        self.idle -= 1
                elif task.work is Work.FAIL_BUFFER:
                    assert self.seq.fatal is not None
                    self.fail_buffer(self.seq.fatal)
                else:
                    # Idle senders are woken one at a time, and only when there is more
                    # to do than the task just taken: another STOP, another resend, or
                    # (see _seal) messages left after a batch. Waking them all for every
                    # message cost a low-rate producer a dozen futile thread switches per
                    # message, and busy appenders contended with them for the lock.
                    if task.work is Work.STOP:
                        self.waits.ready.notify()
                    elif task.work is Work.RESEND and self.seq.resend:
                        self.wake()
                    return task

    def step(self) -> bool:
        """Do one task; False when the thread should end."""
        task = self._next_task()
        work = task.work
        if work is Work.STOP:
            return False
        if work is Work.PROBE:
            self.delivery.probe(task.gen)
        elif work is Work.VERIFY:
            try:
                self.delivery.verify()
            finally:
                self._finish()
        elif work is Work.RESEND:
            assert task.batch is not None
            self._deliver(task.batch)
        else:  # SEAL
            batch: Batch | None = None
            try:
                batch = self._seal()
            finally:
                if batch is None:  # nothing to send after all: give the slot back
                    self._finish()
            if batch is not None:
                self._deliver(batch)
        return True

    def _finish(self) -> None:
        """The task's slot is given back: one idle sender looks for work (the baton)."""
        with self.lock:
            self.seq.finish_work()
            self.waits.ready.notify()

    # -- sealing -----------------------------------------------------------------------------
    def _learn_content_type(self) -> bool:
        """HEAD the stream once (its content type and tail); False if not known yet."""
        with self.lock:
            gen = self.seq.gen
        try:
            offset = self.transport.head(retry=True)
        except errors.DurableStreamError as exc:
            with self.lock:
                if not is_transient(exc):
                    self.seq.stop(exc)
                elif (self.acc.buf and time.monotonic() - self.acc.first_ts
                      >= self.delivery_timeout):
                    # Bounded like every retry: the waiting messages are reported.
                    failure = copy_error(exc)
                    failure.message = (
                        f"delivery to {self.transport.where} timed out (delivery_timeout_ms="
                        f"{self.delivery_timeout * 1000:.0f}) before the messages could be "
                        f"sent: the stream's content type could not be read (HEAD): {exc}")
                    failure.args = (failure.message,)
                    self.fail_buffer(failure)
                else:
                    self.counters.retries += 1
                    end = time.monotonic() + self.transport.retry.delay(3)
                    while self.seq.fatal is None and (left := end - time.monotonic()) > 0:
                        self.waits.head_retry.wait(left)
            return False
        with self.lock:
            # Read before any send of this generation: it doubles as the tail probe.
            self.seq.probe_done(gen, offset, early=True)
            self.waits.on_probed()
        return True

    def _seal(self) -> Batch | None:
        """Take up to one batch of messages from the buffer and give it the next seq."""
        if self.transport.json_mode is None and not self._learn_content_type():
            return None
        with self.seal_lock:
            with self.lock:
                taken = self.acc.take(time.monotonic(), self._force())
                if self.acc.buf:
                    self.wake()  # more than one batch was waiting: the next sender
            if taken is None:
                return None
            messages, total, first = taken
            try:
                good, bad, body = build(messages, bool(self.transport.json_mode),
                                        self.validate_json)
            except Exception as exc:  # pragma: no cover - a bug: fail this batch alone
                log.exception("producer %s: could not build a batch", self.producer_id)
                with self.lock:
                    self.acc.sealed([])
                    self.failed(messages, errors.ProducerError(
                        f"could not build a batch for {self.transport.where} (these messages "
                        f"were not sent; the producer goes on): {type(exc).__name__}: "
                        f"{str(exc)[:200]}", url=self.transport.url), total)
                return None
            with self.lock:
                self.acc.sealed(good)
                self.seq.content_type_known(bool(self.transport.json_mode))
                if bad:
                    self.failed([m for m, _ in bad], errors.BadRequestError(
                        f"{len(bad)} message(s) for the JSON stream {self.transport.where} "
                        f"are not valid JSON and were not sent (first: {bad[0][1]}); each "
                        "message must be one JSON value, e.g. json.dumps(obj)",
                        url=self.transport.url, code="INVALID_JSON",
                    ), sum(len(m) for m, _ in bad))
                if not good:
                    return None
                nbytes = total if not bad else sum(len(m) for m in good)
                batch = Batch(good, nbytes, first, body,
                              time.monotonic() + self.delivery_timeout)
                return batch if self.seq.admit(batch) else None

    # -- sending -----------------------------------------------------------------------------
    def _deliver(self, batch: Batch) -> None:
        """Send one batch until it is acknowledged, failed, or parked for re-sequencing."""
        try:
            self.delivery.run(batch)
        except Exception as exc:  # pragma: no cover - a bug; never lose the batch silently
            log.exception("producer %s: unexpected error sending a batch", self.producer_id)
            with self.lock:
                self.seq.crashed(batch, errors.ProducerError(
                    f"unexpected error sending to {self.transport.where}: {exc!r}",
                    url=self.transport.url))
        finally:
            self._finish()


def _sender_main(ref: weakref.ReferenceType[SenderPool], token: object) -> None:
    lifecycle.own_current_thread(token)
    while True:
        pool = ref()
        if pool is None:
            return
        try:
            if not pool.step():
                return
        except Exception as exc:  # pragma: no cover - a bug: fail loudly, never hang
            log.exception("producer sender thread crashed")
            with pool.lock:
                pool.seq.stop(errors.ProducerError(
                    f"producer {pool.producer_id!r} stopped after an internal error: "
                    f"{exc!r}", url=pool.transport.url))
                pool.waits.ready.notify()  # another sender takes over
            return
        finally:
            del pool
