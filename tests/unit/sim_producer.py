"""A simulated producer: the real :class:`Sequencer` and :class:`Accumulator` driven by
simulated sender "threads" against :class:`~sim_server.SimServer`, in one thread.

Each sender is a generator that mirrors ``SenderPool`` step by step (the same calls into the
sequencer, in the same order, under the same conditions). It yields where a real sender
would block: a :class:`Wait` means "waiting on one of the producer's Conditions" (the real
:class:`~durable_streams._producer.waits.Waits`, built on fake Conditions: resumable once
notified, by the same event methods at the same points as the real pool and delivery:
one sender for ``notify()``, every one for ``notify_all()``; or once its timeout has passed
on the fake clock; no spurious wake-ups). Each Wait carries its predicate: a waiter whose
predicate became true without a notification is a lost wake-up, reported at once
(:meth:`SimProducer.check_wakeups`) instead of being hidden by the timeout. A :class:`Req`
means "in an HTTP call" (resumable once the request has an answer). The
test decides which sender runs next, which request the server handles next (in any order)
and with which fault, and when the fake clock moves: every interleaving the real threads
could produce is reachable.

Exactly-once bookkeeping: every message accepted by ``append`` must end up either acked or
reported failed (never both, never twice); acked messages must be in the server's stream
(checked at the moment of the ack); definite failures must not be.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

from durable_streams import errors
from durable_streams._producer.accumulator import Accumulator, Refusal
from durable_streams._producer.batch import Batch, Counters
from durable_streams._producer.outcome import Outcome
from durable_streams._producer.sender import build, split_json
from durable_streams._producer.sequencer import ALLOWED, Act, Phase, Sequencer, Task, Work
from durable_streams._producer.transport import contains_batch
from durable_streams._producer.waits import NAMES, Waits

from .sim_server import RETRY, URL, Append, Fault, SimServer, no_answer, post_with

PID = "sim-producer"


@dataclass
class Req:
    """One request on the (simulated) wire."""

    kind: str  # "post", "head" or "read"
    epoch: int = 0
    seq: int = 0
    body: bytes = b""
    offset: str = ""
    gen: int = -1
    written: bool = False
    done: bool = False
    outcome: Outcome | None = None
    result: str | bytes | None = None  # head: the tail; read: the data; None: failed


@dataclass(frozen=True)
class Wait:
    """A sender waiting on one of the producer's Conditions (a name of ``waits.NAMES``),
    until notified or until ``deadline`` (None: no timeout). ``until``: the predicate it
    waits for (None for ``ready``, whose waiters are woken one at a time, by baton)."""

    cond: str
    deadline: float | None
    until: Callable[[], bool] | None = field(default=None, compare=False, repr=False)


class SimCond:
    """A fake Condition of :class:`Waits`: notifying marks the simulated waiters on it."""

    def __init__(self, sim: SimProducer, name: str) -> None:
        assert name in NAMES, name
        self.sim = sim
        self.name = name

    def wait(self, timeout: float | None = None) -> bool:
        raise AssertionError("simulated senders yield a Wait instead of blocking")

    def notify(self, n: int = 1) -> None:
        for _ in range(n):
            self.sim.notify_one(self.name)

    def notify_all(self) -> None:
        self.sim.notify(self.name)


Step = Generator["Req | Wait | None", None, object]
W = Generator["Req | Wait | None", None, bool]


class RecordingSequencer(Sequencer):
    """The real sequencer, recording every phase change (each must be in ALLOWED)."""

    def __init__(self, **kw: object) -> None:
        self.transitions: list[tuple[Phase, Phase]] = []
        self.trace: list[str] | None = None
        self.bugs: Counter[str] = Counter()
        super().__init__(**kw)  # type: ignore[arg-type]

    def _to(self, phase: Phase, why: str) -> None:
        assert phase in ALLOWED[self.phase], (self.phase, phase, why)
        self.transitions.append((self.phase, phase))
        if self.trace is not None:
            self.trace.append(f"PHASE {self.phase.name} -> {phase.name} ({why})")
        super()._to(phase, why)


class InvariantError(AssertionError):
    pass


@dataclass
class Book:
    """What happened to every message, as the producer reported it."""

    accepted: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # msg -> (thread, n)
    acked: set[bytes] = field(default_factory=set)
    failed: dict[bytes, errors.DurableStreamError] = field(default_factory=dict)
    acked_batches: set[int] = field(default_factory=set)
    refused: int = 0


def in_doubt(err: errors.DurableStreamError) -> bool:
    """A failure that says the data may have been stored after all."""
    text = str(err)
    return err.code == "IN_DOUBT" or "may have been stored" in text or "may or may not" in text


class SimProducer:
    """The real sequencer and accumulator with simulated senders (the Sink as well)."""

    def __init__(self, server: SimServer, *, epoch: int = 0, auto_claim: bool = False,
                 fresh_epoch: bool = False, max_in_flight: int = 3, senders: int | None = None,
                 delivery_timeout: float = 20.0, linger: float = 0.01,
                 max_batch_bytes: int = 64, max_batch_items: int = 0,
                 probe_wait: float = 1.0, producer_id: str = PID,
                 validate_json: bool = False) -> None:
        self.server = server
        self.now = 100.0
        self.book = Book()
        self.lock = threading.Lock()  # the accumulator takes it in add(); never contended
        self.waits = Waits(self.lock, make=lambda name: SimCond(self, name))
        self.acc = Accumulator(self.lock, url=URL, where=URL, max_batch_bytes=max_batch_bytes,
                               max_batch_items=max_batch_items, max_buffer_bytes=1 << 30,
                               linger=linger, max_block=1.0, wake=self.waits.ready.notify,
                               clock=lambda: self.now)
        self.counters = Counters()
        self.seq = RecordingSequencer(
            producer_id=producer_id, url=URL, epoch=epoch, auto_claim=auto_claim,
            fresh_epoch=fresh_epoch, max_in_flight=max_in_flight, retry=RETRY,
            delivery_timeout=delivery_timeout, sink=self, counters=self.counters,
            json_mode=server.json_mode)
        self.producer_id = producer_id
        self.delivery_timeout = delivery_timeout
        self.probe_wait = probe_wait
        #: False: invalid JSON reaches the server (400, SPLIT_JSON); True: the producer's
        #: default, invalid messages are failed when the batch is sealed
        self.validate_json = validate_json
        self.stopping = False
        #: known bugs (B1-B7, test_sequencer_scenarios.py) counted instead of failing
        self.tolerate: set[str] = set()
        self.batches: list[Batch] = []  # every batch ever sealed
        self.batch_of: dict[bytes, Batch] = {}
        self.wire: list[Req] = []  # requests not handled by the server yet
        self.zombies: list[Req] = []  # requests given up by the client, still on the wire
        n = senders if senders is not None else max_in_flight
        self.senders: list[Step] = [self._sender(i) for i in range(n)]
        self.holding: dict[int, Batch] = {}  # sender index -> the batch it delivers
        self.waiting: list[Req | Wait | None] = [None] * n  # what each sender waits for
        self.notified = [False] * n
        self.alive = [True] * n
        self.failures: list[errors.DurableStreamError] = []
        self.stats: Counter[str] = Counter()  # what the run exercised (for the notes)
        self.trace: list[str] | None = None  # set to a list to record what happened
        self.stopped_with: errors.DurableStreamError | None = None

    # -- the Sink ----------------------------------------------------------------------------
    def acked(self, batch: Batch, offset: str, duplicate: bool) -> None:
        self.acc.release(batch.nbytes)
        book = self.book
        if batch.id in book.acked_batches:
            raise InvariantError(f"{batch!r} acknowledged twice")
        book.acked_batches.add(batch.id)
        if self.trace is not None:
            self.trace.append(f"t={self.now:.3f} ACK {batch!r} dup={duplicate} "
                              f"{batch.messages}")
        stored = self.stored_set()
        for m in batch.messages:
            if m in book.acked or m in book.failed:
                raise InvariantError(f"message {m!r} reported twice (acked after "
                                     f"{'ack' if m in book.acked else 'failure'})")
            if m not in stored:
                raise InvariantError(f"message {m!r} acknowledged (duplicate={duplicate})"
                                     f" but not in the stream: {batch!r}")
            book.acked.add(m)
        self.waits.on_acked()

    def failed(self, messages: list[bytes], err: errors.DurableStreamError,
               nbytes: int) -> None:
        self.acc.release(nbytes)
        self.failures.append(err)
        if self.trace is not None:
            self.trace.append(f"t={self.now:.3f} FAIL {messages} {err}")
        self.stats[f"failed:{type(err).__name__}:{err.code}:{str(err)[-60:]}"] += 1
        book = self.book
        if not (in_doubt(err) and err.maybe_stored) and any(
                b.maybe_stored for b in {id(b): b for b in (self.batch_of.get(m) for m in messages)
                                         if b is not None}.values()):
            raise InvariantError(f"{messages} may be stored but failed without saying so "
                                 f"(message and maybe_stored): {err}")
        for m in messages:
            if m in book.acked or m in book.failed:
                raise InvariantError(f"message {m!r} reported failed after being "
                                     f"{'acked' if m in book.acked else 'failed'}: {err}")
            book.failed[m] = err
        self.waits.on_failed()

    def stopped(self, err: errors.DurableStreamError) -> None:
        self.stopped_with = err
        self.acc.refuse(err, Refusal.STOPPED)
        self.fail_buffer(err)
        self.waits.on_fatal()

    def fail_buffer(self, err: errors.DurableStreamError) -> None:
        messages, nbytes = self.acc.take_all()
        if messages:
            self.failed(messages, err, nbytes)

    # -- the application --------------------------------------------------------------------
    def append(self, thread: int, n: int, *, valid: bool = True) -> bool:
        """One message of a logical thread; False if the producer refused it."""
        if self.server.json_mode:
            raw = (f'"{thread}.{n}"' if valid else f"{{bad {thread}.{n}").encode()
        else:
            raw = f"<{thread}.{n}>".encode()
        try:
            self.acc.append(raw)
        except errors.DurableStreamError:
            self.book.refused += 1
            return False
        self.book.accepted[raw] = (thread, n)
        return True

    def stored_set(self) -> set[bytes]:
        if self.server.json_mode:
            return set(self.server.messages)
        return set(ours(b"".join(self.server.messages)))

    def stored_ours(self) -> list[bytes]:
        if self.server.json_mode:
            return [m for m in self.server.messages if m in self.book.accepted]
        return [m for m in ours(b"".join(self.server.messages)) if m in self.book.accepted]

    # -- driving -----------------------------------------------------------------------------
    def check_wakeups(self) -> None:
        """No lost wake-up: a sender whose predicate holds was notified (or timed out)."""
        for i, w in enumerate(self.waiting):
            if (isinstance(w, Wait) and w.until is not None and self.alive[i]
                    and not self.notified[i]
                    and (w.deadline is None or self.now < w.deadline) and w.until()):
                raise InvariantError(f"lost wake-up: sender {i} waits on {w.cond!r} and its "
                                     f"predicate holds, but nobody notified it: "
                                     f"{self.describe()}")

    def runnable(self) -> list[int]:
        """Senders that can be resumed: not finished, not in an HTTP call, and (when waiting
        on a Condition) notified since or past their timeout (Python's Conditions have no
        spurious wake-ups). Checks first that no wake-up was lost."""
        self.check_wakeups()
        out = []
        for i, w in enumerate(self.waiting):
            if not self.alive[i]:
                continue
            if isinstance(w, Wait):
                if self.notified[i] or (w.deadline is not None and self.now >= w.deadline):
                    out.append(i)
            elif w is None or w.done:
                out.append(i)
        return out

    def resume(self, i: int) -> None:
        self.notified[i] = False
        self.waiting[i] = None  # running, so not a waiter a notify could pick
        try:
            with self.lock:  # as a real sender, which runs the sequencer with the lock held
                self.waiting[i] = next(self.senders[i])
        except StopIteration:
            self.alive[i] = False
            self.waiting[i] = None
        w = self.waiting[i]
        if isinstance(w, Req) and not w.done:
            self.wire.append(w)

    def notify(self, *conds: str) -> None:
        """``Condition.notify_all`` on the named Conditions of :class:`Waits`."""
        for i, w in enumerate(self.waiting):
            if isinstance(w, Wait) and w.cond in conds:
                self.notified[i] = True

    def notify_one(self, cond: str) -> None:
        """``Condition.notify()``: one waiter not notified yet (the longest waiting one in
        CPython; here the first by index, which the tests' scheduling makes arbitrary)."""
        for i, w in enumerate(self.waiting):
            if isinstance(w, Wait) and w.cond == cond and not self.notified[i]:
                self.notified[i] = True
                return

    def _finish(self) -> None:
        """``SenderPool._finish``: the slot is given back; one idle sender looks (baton)."""
        self.seq.finish_work()
        self.waits.ready.notify()

    def handle(self, k: int, fault: Fault = Fault.NONE) -> Req:
        """The server handles the k-th request on the wire (any order) with ``fault``."""
        req = self.wire.pop(k % len(self.wire))
        if req.kind == "post":
            if not req.written and fault is not Fault.DROP:
                self._written(req)
            assert req.outcome is None
            req.outcome = post_with(self.server, fault, self.producer_id, req.epoch, req.seq,
                                    req.body)
            if self.trace is not None:
                self.trace.append(f"t={self.now:.3f} POST e={req.epoch} s={req.seq} "
                                  f"{req.body!r} {fault.name} -> {req.outcome.kind.name} "
                                  f"{req.outcome.status} srv={self.server.producers}")
            if fault is Fault.ZOMBIE:
                self.zombies.append(Req("post", req.epoch, req.seq, req.body))
        else:
            self.stats[req.kind.upper()] += 1
        if req.kind != "post" and fault in (Fault.NONE, Fault.PROXY_502, Fault.LOSE):
            req.result = self.server.tail() if req.kind == "head" else \
                self.server.read_from(req.offset)
        req.done = True
        if self.trace is not None and req.kind != "post":
            self.trace.append(f"t={self.now:.3f} {req.kind.upper()} {req.offset} {fault.name} "
                              f"-> {req.result!r}")
        return req

    def write(self, k: int) -> None:
        """The body of the k-th request on the wire is now written to its socket."""
        posts = [r for r in self.wire if r.kind == "post" and not r.written]
        if posts:
            self._written(posts[k % len(posts)])

    def _written(self, req: Req) -> None:
        req.written = True
        with self.lock:
            if self.seq.written(req.gen, req.seq):
                self.waits.on_written()

    def zombie_arrives(self, k: int) -> None:
        """A request the producer gave up on (no answer) reaches the server now."""
        req = self.zombies.pop(k % len(self.zombies))
        r = self.server.post(self.producer_id, req.epoch, req.seq, req.body)
        if self.trace is not None:
            self.trace.append(f"t={self.now:.3f} ZOMBIE e={req.epoch} s={req.seq} "
                              f"{req.body!r} -> {r.status_code}")
        if r.status_code == 200 and req.epoch != self.seq.epoch:
            # Z1 (a limit, not a bug): stored under an epoch the producer has left, after it
            # looked for the batch (VERIFY) or re-sequenced it: it may be stored twice.
            self.seq.bugs["Z1"] += 1

    def restart_server(self, committed: list[bool]) -> None:
        """The server restarts (its state kept): every request on the wire gets no answer;
        a POST whose flag in ``committed`` (cycled) is true was stored first."""
        for i in range(len(self.wire)):
            req = self.wire[0]
            stored = req.kind == "post" and bool(committed) and committed[i % len(committed)]
            self.handle(0, Fault.LOSE if stored else Fault.DROP)

    def advance(self, dt: float) -> None:
        self.now += dt

    def stop(self) -> None:
        """As ``close()``: the senders seal everything and end once nothing is left."""
        self.stopping = True
        self.seq.close_requested()
        self.waits.on_stop()

    def drain(self, max_rounds: int = 3000) -> None:
        """Stop, then run every sender and answer every request without faults until all
        senders have ended (advancing the clock when nothing else moves)."""
        self.stop()
        while self.zombies:
            self.zombie_arrives(0)
        for rnd in range(max_rounds):
            if not any(self.alive):
                return
            while self.wire:
                self.handle(0)
            for i in self.runnable():
                self.resume(i)
            if rnd % 4 == 3:
                self.advance(0.5)
        raise InvariantError(f"the producer did not drain: {self.describe()}")

    def close_stream(self, faults: list[Fault]) -> str:
        """As ``IdempotentProducer.close_stream()`` after its flush (no final message): the
        closing POST, with ``faults[i]`` applied to attempt i (none after the list)."""
        deadline = self.now + self.delivery_timeout
        retry_n = 0
        for attempt in range(50):
            with self.lock:
                epoch, seq = self.seq.close_attempt()
            fault = faults[attempt] if attempt < len(faults) else Fault.NONE
            outcome = post_with(self.server, fault, self.producer_id, epoch, seq, b"",
                                close=True)
            if self.trace is not None:
                self.trace.append(f"t={self.now:.3f} CLOSE e={epoch} s={seq} {fault.name} -> "
                                  f"{outcome.kind.name} {outcome.status}")
            with self.lock:
                decision = self.seq.on_close_outcome(outcome, epoch, seq, self.now, deadline,
                                                     retry_n)
            if decision.act is Act.CHECK_STORED:  # HEAD: is the stream closed?
                closed = self.server.closed_by is not None
                self.stats["HEAD"] += 1
                if self.trace is not None:
                    self.trace.append(f"t={self.now:.3f} HEAD after close -> closed={closed}")
                with self.lock:
                    decision = self.seq.close_checked(outcome, epoch, seq, closed, self.now,
                                                      deadline, retry_n)
            if decision.act is Act.DONE:
                return decision.offset
            if decision.act is Act.RAISE:
                assert decision.error is not None
                raise decision.error
            if decision.act is Act.RETRY:
                retry_n += 1
                self.advance(decision.delay)
        raise InvariantError("close_stream did not end after 50 attempts")

    def check_closed(self, offset: str) -> None:
        """close_stream returned: the stream is closed, by us, at the offset returned."""
        closer = self.server.closed_by
        if closer is None or closer[0] != self.producer_id:
            raise InvariantError(f"close_stream returned {offset!r} but the stream is open")
        if offset != self.server.tail():
            raise InvariantError(f"close_stream returned {offset!r}, the stream ends at "
                                 f"{self.server.tail()}")

    def describe(self) -> str:
        sq = self.seq
        return (f"phase={sq.phase.name} gen={sq.gen} epoch={sq.epoch} next_seq={sq.next_seq} "
                f"in_flight={sq.in_flight} parked={sq.parked} resend={list(sq.resend)} "
                f"unresolved={list(sq.batches.values())} unwritten={sorted(sq.unwritten)} "
                f"window={sq.window} buffered={len(self.acc.buf)} wire={self.wire} "
                f"waiting={self.waiting} alive={self.alive}")

    # -- final checks ------------------------------------------------------------------------
    def foreign_epoch(self, epoch: int) -> bool:
        """Did another writer (an earlier run, a second writer) store data under our
        producer id with this epoch? Then the server's seq state is not ours alone."""
        return any(a.producer == self.producer_id and a.epoch == epoch and not self._ours(a)
                   for a in self.server.log)

    def _ours(self, a: Append) -> bool:
        """Is this stored append one of our batches (not an earlier run's or another
        writer's)? (Byte mode stores a whole body: look at its first message.)"""
        first = a.messages[0] if self.server.json_mode else (ours(a.messages[0]) or [b""])[0]
        return first in self.book.accepted

    def adopted_foreign(self) -> bool:
        """Did the server store one of our batches with seq > 0 as the continuation of
        another writer's seq 0 at the same epoch (Z2)?"""
        first: dict[int, bool] = {}  # epoch -> its seq 0 was ours
        for a in self.server.log:
            if a.producer != self.producer_id or not a.messages:
                continue
            mine = self._ours(a)
            if a.seq == 0:
                first[a.epoch] = mine
            elif mine and first.get(a.epoch) is False:
                return True
        return False

    def _known(self, *bugs: str) -> bool:
        """A violation is excused if a tolerated known bug fired in this run (counted)."""
        for bug in bugs:
            if bug not in self.tolerate:
                continue
            if self.seq.bugs[bug] or (
                    bug == "Z2" and self.adopted_foreign()):
                self.seq.bugs[f"{bug} masked a violation"] += 1
                return True
        return False

    def check_final(self) -> None:
        book = self.book
        stored = self.stored_ours()
        if len(stored) != len(set(stored)) and not self._known("Z1"):
            dups = sorted({m for m in stored if stored.count(m) > 1})
            raise InvariantError(f"duplicates in the stream: {dups[:5]}")
        stored_set = set(stored)
        for m in book.accepted:
            if m not in book.acked and m not in book.failed:
                raise InvariantError(f"message {m!r} neither acknowledged nor failed "
                                     f"({'stored' if m in stored_set else 'not stored'})")
            if m in book.acked and m not in stored_set:
                raise InvariantError(f"message {m!r} acknowledged but not stored")
            if (m in book.failed and m in stored_set and not in_doubt(book.failed[m])
                    and not self._known("Z1")):
                raise InvariantError(f"message {m!r} stored but reported failed without "
                                     f"saying it may be stored: {book.failed[m]}")
        for m, err in book.failed.items():
            valid = not m.startswith(b"{bad")
            if self.seq.auto_claim and isinstance(err, errors.StaleEpochError):
                raise InvariantError(f"auto_claim, yet {m!r} failed as fenced: {err}")
            if valid and isinstance(err, errors.BadRequestError):
                raise InvariantError(f"the valid message {m!r} failed with a 400: {err}")
        last: dict[int, int] = {}
        for m in dict.fromkeys(stored):  # first copies (a second one is a duplicate)
            thread, n = book.accepted[m]
            if n <= last.get(thread, -1) and not self._known("Z1", "Z2"):
                raise InvariantError(f"thread {thread}: {n} stored after {last[thread]}")
            last[thread] = n
        for b in self.batches:
            if not b.final:
                raise InvariantError(f"{b!r} never settled")

    # -- the sender (mirrors SenderPool and Delivery) ----------------------------------------
    def _sendable(self, batch: Batch) -> bool:
        """``Sequencer.check`` without its side effects: may the sender go on with it?"""
        return not batch.final and self.seq.fatal is None and batch.gen == self.seq.gen

    def _force(self) -> bool:
        return self.stopping or self.seq.fatal is not None

    def holder(self, seq: int) -> int:
        """The sender delivering the batch with this seq (of the current generation)."""
        return next(i for i, b in self.holding.items()
                    if b.seq == seq and b.gen == self.seq.gen)

    def _sender(self, index: int) -> Step:
        while True:
            task = yield from self._next_task()
            work = task.work
            if work is Work.STOP:
                return None
            if work is Work.PROBE:
                yield from self._probe(task.gen, early=True)
            elif work is Work.VERIFY:
                yield from self._verify()
                self._finish()
            elif work is Work.RESEND:
                assert task.batch is not None
                self.holding[index] = task.batch
                yield from self._deliver(task.batch)
                del self.holding[index]
            else:  # SEAL
                batch = self._seal()
                if batch is None:
                    self._finish()
                else:
                    self.holding[index] = batch
                    yield from self._deliver(batch)
                    del self.holding[index]

    def _next_task(self) -> Generator[Req | Wait | None, None, Task]:
        while True:
            acc = self.acc
            due = acc.due_in(self.now, self._force()) if acc.buf else 0.0
            task = self.seq.next_work(bool(acc.buf), due, self.now)
            if task.work is Work.WAIT:
                yield Wait("ready", None if task.timeout is None else self.now + task.timeout)
            elif task.work is Work.FAIL_BUFFER:
                assert self.seq.fatal is not None
                self.fail_buffer(self.seq.fatal)
            else:
                if task.work is Work.STOP or (task.work is Work.RESEND and self.seq.resend):
                    self.waits.ready.notify()  # the baton: the next idle sender looks
                return task

    def _seal(self) -> Batch | None:
        taken = self.acc.take(self.now, self._force())
        if self.acc.buf:
            self.waits.ready.notify()  # more than one batch was waiting: the next sender
        if taken is None:
            return None
        messages, total, first = taken
        good, bad, body = build(messages, self.server.json_mode, self.validate_json)
        self.acc.sealed(good)  # as the sender: the journal drops the invalid ones
        if self.trace is not None:
            self.trace.append(f"t={self.now:.3f} SEAL {messages}")
        if bad:
            self.failed([m for m, _ in bad], errors.BadRequestError(
                f"{len(bad)} message(s) are not valid JSON (first: {bad[0][1]})", url=URL,
                code="INVALID_JSON"), sum(len(m) for m, _ in bad))
        if not good:
            return None
        self.seq.content_type_known(self.server.json_mode)
        nbytes = total if not bad else sum(len(m) for m in good)
        batch = Batch(good, nbytes, first, body, self.now + self.delivery_timeout)
        self.batches.append(batch)
        for m in good:
            self.batch_of[m] = batch
        return batch if self.seq.admit(batch) else None

    def _deliver(self, batch: Batch) -> Step:
        yield from self._deliver_loop(batch)
        self._finish()
        return None

    def _deliver_loop(self, batch: Batch) -> Step:
        seq = self.seq
        while True:
            ok = yield from self._ensure_probe(batch)
            if not ok:
                return None
            if not seq.check(batch):
                return None
            if not seq.turn_ok(batch):
                ok = yield from self._wait_turn(batch)
                if not ok:
                    return None
            epoch, n = seq.start_attempt(batch)
            req = Req("post", epoch, n, batch.body, gen=batch.gen)
            yield req
            assert req.outcome is not None
            outcome = req.outcome
            before = seq.gen
            decision = seq.on_outcome(batch, outcome, self.now)
            self.waits.on_new_generation(before, seq.gen)
            act = decision.act
            self.stats[f"{outcome.kind.name}->{act.name}"] += 1
            if act is Act.RETRY:
                ok = yield from self._sleep(batch, decision.delay)
                if not ok:
                    return None
            elif act is Act.WAIT_EARLIER:
                ok = yield from self._wait_earlier(batch, decision.earlier)
                if not ok:
                    return None
            elif act is Act.CHECK_STORED:
                found = yield from self._found(decision.offset, batch)
                self.stats[f"checked:{found}"] += 1
                before = seq.gen
                seq.checked(batch, outcome, found, self.now)
                self.waits.on_new_generation(before, seq.gen)
                return None
            elif act is Act.SPLIT_JSON:
                good, bad = split_json(batch.messages)
                assert decision.error is not None
                again = seq.split_json(batch, good, bad, decision.error)
                if again.act is not Act.SEND:
                    return None
            elif act is not Act.SEND:
                return None

    def _sleep(self, batch: Batch, delay: float) -> W:
        end = self.now + delay
        while True:
            if not self.seq.check(batch):
                return False
            if end - self.now <= 0:
                return True
            yield Wait("retry", end, until=lambda: not self._sendable(batch))

    def _wait_turn(self, batch: Batch) -> W:
        end = self.now + 2.0
        while not self.seq.turn_ok(batch):
            if end - self.now <= 0:
                return True
            yield Wait("turn", end, until=lambda: (self.seq.turn_ok(batch)
                                                   or not self._sendable(batch)))
            if not self.seq.check(batch):
                return False
        return True

    def _wait_earlier(self, batch: Batch, earlier: range) -> W:
        while self.seq.any_pending(batch.gen, earlier):
            if not self.seq.check(batch):
                return False
            yield Wait("earlier", self.now + 1.0, until=lambda: (
                not self.seq.any_pending(batch.gen, earlier) or not self._sendable(batch)))
        if not self.seq.check(batch):
            return False
        self.seq.earlier_resolved(batch)
        return True

    def _probe(self, gen: int, *, early: bool) -> Step:
        req = Req("head")
        yield req
        offset = req.result if isinstance(req.result, str) else None
        self.seq.probe_done(gen, offset, early=early)
        if early:
            self.waits.on_probed()
        return None

    def _ensure_probe(self, batch: Batch) -> W:
        seq = self.seq
        while True:
            if not seq.needs_probe(batch):
                return True
            end = self.now + self.probe_wait
            while seq.probe_running(batch.gen):
                if end - self.now <= 0:
                    break
                yield Wait("probed", end, until=lambda: not seq.probe_running(batch.gen))
            if not seq.needs_probe(batch):
                return True
            gen = batch.gen
            req = Req("head")
            yield req
            if not isinstance(req.result, str):
                exc = no_answer().error
                assert exc is not None
                decision = seq.transient(batch, exc, None, self.now)
                if decision.act is not Act.RETRY:
                    return False
                ok = yield from self._sleep(batch, decision.delay)
                if not ok:
                    return False
                continue
            seq.probe_done(gen, req.result, early=False)  # nobody waits for this one
            return True

    def _found(self, start: str | None, batch: Batch
               ) -> Generator[Req | Wait | None, None, bool | None]:
        if start is None:
            return None
        req = Req("read", offset=start)
        yield req
        if not isinstance(req.result, bytes):
            return None
        return contains_batch(req.result, batch.body, batch.messages, self.server.json_mode)

    def _verify(self) -> Step:
        doubtful = [(b, self.seq.probes.get(b.gen)) for b in self.seq.verify_candidates()]
        for batch, start in doubtful:
            found = yield from self._found(start, batch)
            self.stats[f"verified:{found}"] += 1
            self.seq.verified(batch, found)  # acked or failed: the sink notifies
        return None


def ours(data: bytes) -> list[bytes]:
    """Split a byte stream into its ``<t.n>`` messages (other writers use ``<X.n>``)."""
    out = []
    for part in data.split(b"<")[1:]:
        out.append(b"<" + part)
    return out
