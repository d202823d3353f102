"""The sender threads: take a typed task from the sequencer, do its HTTP through the
transport (no lock held), and hand the outcome back to the sequencer (lock held).

The pool is also the sequencer's :class:`~.sequencer.Sink`: acknowledgements free buffer
room, failures go to the reporter, a fatal error closes the buffer.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable

from .. import _protocol as P
from .. import errors
from .._json import check_json_text
from . import lifecycle
from .accumulator import Accumulator
from .batch import Batch, Counters
from .outcome import Outcome, is_transient
from .reporter import Reporter, copy_error
from .sequencer import Act, Sequencer, Task, Work
from .transport import Transport, contains_batch

log = logging.getLogger("durable_streams.producer")


class SenderPool:
    def __init__(self, lock: threading.Lock, *, acc: Accumulator, transport: Transport,
                 reporter: Reporter, counters: Counters, producer_id: str, threads: int,
                 delivery_timeout: float, validate_json: bool, probe_wait: float,
                 token: object) -> None:
        self.lock = lock
        self.ready = threading.Condition(lock)  # idle senders wait here for work
        self.done = threading.Condition(lock)  # progress: flush/close, retry and turn waits
        self.seal_lock = threading.Lock()  # one sealer at a time keeps seq order
        self.acc = acc
        self.transport = transport
        self.reporter = reporter
        self.counters = counters
        self.producer_id = producer_id
        self.n_threads = threads
        self.delivery_timeout = delivery_timeout
        self.validate_json = validate_json
        self.probe_wait = probe_wait
        self.token = token
        self.seq: Sequencer  # set by the producer (the sequencer reports to this pool)
        #: the producer facade: running senders keep it alive (and in the registry of
        #: lifecycle), so that a producer dropped with messages pending is flushed at exit
        self.owner: object = None
        self.threads: list[threading.Thread] = []
        self.idle = 0  # senders waiting on ``ready`` for work
        self.stopping = False

    # -- the Sink of the sequencer (lock held) -----------------------------------------------
    def acked(self, batch: Batch, offset: str, duplicate: bool) -> None:
        self.acc.release(batch.nbytes)

    def failed(self, messages: list[bytes], err: errors.DurableStreamError,
               nbytes: int) -> None:
        self.acc.release(nbytes)
        self.counters.failed += len(messages)
        self.counters.failures += 1
        self.reporter.report(err, messages)
        self.done.notify_all()

    def stopped(self, err: errors.DurableStreamError) -> None:
        self.acc.refusal = err
        self.fail_buffer(err)
        self.ready.notify_all()
        self.acc.space.notify_all()

    def fail_buffer(self, err: errors.DurableStreamError) -> None:
        messages, nbytes = self.acc.take_all()
        if messages:
            self.failed(messages, err, nbytes)

    # -- threads ---------------------------------------------------------------------------
    def wake(self) -> None:
        """(lock held) There is something to send: wake an idle sender, or start one."""
        if self.idle:
            self.ready.notify()
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

    def notify(self) -> None:
        """(lock held) Something changed: wake one idle sender (it passes the baton on if
        there is more to do, see :meth:`_next_task`) and every waiter on ``done``."""
        self.ready.notify()
        self.done.notify_all()

    def stop(self) -> list[threading.Thread]:
        """(lock held) Let the senders end once nothing is left to send."""
        self.stopping = True
        self.seq.stopping = True
        self.ready.notify_all()  # every sender must see STOP
        self.done.notify_all()
        self.acc.space.notify_all()
        return list(self.threads)

    def after_fork_in_child(self, lock: threading.Lock) -> None:
        """A forked child has none of the parent's threads and never starts its own."""
        self.lock = lock
        self.ready = threading.Condition(lock)
        self.done = threading.Condition(lock)
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
                        self.ready.wait(task.timeout)
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
                        self.ready.notify()
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
            self._probe(task.gen, early=True)
        elif work is Work.VERIFY:
            try:
                self._verify()
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
        with self.lock:
            self.seq.finish_work()
            self.notify()

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
                    self.done.wait(self.transport.retry.delay(3))
            return False
        with self.lock:
            # Read before any send of this generation: it doubles as the tail probe.
            self.seq.probe_done(gen, offset, early=True)
            self.done.notify_all()
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
                self.seq.json_mode = bool(self.transport.json_mode)
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
            self._deliver_loop(batch)
        except Exception as exc:  # pragma: no cover - a bug; never lose the batch silently
            log.exception("producer %s: unexpected error sending a batch", self.producer_id)
            with self.lock:
                if batch.attempts:  # it may have been sent: say it may be stored
                    batch.ambiguous = True
                self.seq.fail(batch, errors.ProducerError(
                    f"unexpected error sending to {self.transport.where}: {exc!r}",
                    url=self.transport.url))
        finally:
            self._finish()

    def _deliver_loop(self, batch: Batch) -> None:
        seq = self.seq
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
                decision = seq.on_outcome(batch, outcome, time.monotonic())
                # Waiters on progress only: idle senders get new work when the slot is
                # given back (_finish) or when the producer stops (the sink wakes them).
                self.done.notify_all()
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
                    self.notify()
                if again.act is not Act.SEND:
                    return
            elif act is not Act.SEND:
                return

    def _on_written(self, gen: int, n: int) -> Callable[[], None]:
        def written() -> None:
            # The body is on the wire (called from inside the HTTP call, no lock held).
            with self.lock:
                if self.seq.written(gen, n):
                    self.done.notify_all()
        return written

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
                self.done.wait(remaining)

    def _wait_turn(self, batch: Batch) -> bool:
        """(lock held) Wait (bounded) until the previous seq is written and the window has
        room; False when the batch was failed or parked meanwhile."""
        end = time.monotonic() + 2.0
        while not self.seq.turn_ok(batch):
            remaining = end - time.monotonic()
            if remaining <= 0:
                return True
            self.done.wait(remaining)
            if not self.seq.check(batch):
                return False
        return True

    def _wait_earlier(self, batch: Batch, earlier: range) -> bool:
        with self.lock:
            while self.seq.any_pending(batch.gen, earlier):
                if not self.seq.check(batch):
                    return False
                self.done.wait(1.0)
            if not self.seq.check(batch):
                return False
            batch.retry_n = 0
            return True

    # -- probes and verification ---------------------------------------------------------------
    def _probe(self, gen: int, *, early: bool) -> None:
        offset: str | None = None
        try:
            offset = self.transport.head(retry=False)
        except errors.DurableStreamError as exc:
            log.debug("producer %s: early tail probe failed: %s", self.producer_id, exc)
        finally:
            with self.lock:
                self.seq.probe_done(gen, offset, early=early)
                self.done.notify_all()

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
                    self.done.wait(remaining)
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
                seq.probe_done(gen, offset, early=False)
                self.done.notify_all()
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
            self.seq.checked(batch, outcome, found, time.monotonic())
            self.done.notify_all()

    def _verify(self) -> None:
        with self.lock:
            doubtful = [(b, self.seq.probes.get(b.gen)) for b in self.seq.verify_candidates()]
        for batch, start in doubtful:
            found = self._found(start, batch)
            with self.lock:
                self.seq.verified(batch, found)
                self.done.notify_all()


def build(messages: list[bytes], json_mode: bool, validate: bool
          ) -> tuple[list[bytes], list[tuple[bytes, str]], bytes]:
    """The request body for ``messages``: (valid messages, invalid ones with why, body)."""
    if not json_mode:
        return messages, [], b"".join(messages)
    body = b"[" + b",".join(messages) + b"]"
    if not validate:
        return messages, [], body
    try:
        # The fast path: one C parse of the whole batch. Any refusal (invalid JSON, or a
        # Python limit: deep nesting, a huge integer) sends each message to the check
        # that has no such limit (_json.check_json_text), which alone decides.
        parsed = P.load_json(body)
        if isinstance(parsed, list) and len(parsed) == len(messages):
            return messages, [], body
    except (ValueError, RecursionError):
        pass
    good, bad = split_json(messages)
    if len(good) == len(messages):
        return messages, [], body
    return good, bad, b"[" + b",".join(good) + b"]"


def split_json(messages: list[bytes]) -> tuple[list[bytes], list[tuple[bytes, str]]]:
    """(valid messages, invalid ones with the reason); never refuses a valid message."""
    good: list[bytes] = []
    bad: list[tuple[bytes, str]] = []
    for m in messages:
        try:
            check_json_text(m)
        except ValueError as exc:
            bad.append((m, f"{m[:60]!r}: {exc}"))
        else:
            good.append(m)
    return good, bad


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
                pool.notify()
            return
        finally:
            del pool
