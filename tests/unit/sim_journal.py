"""The simulation with the crash-safe journal (README "Crash-safe journal"): a
:class:`JournalSimProducer` is a :class:`~sim_producer.SimProducer` with a real
:class:`Journal` in a directory, wired as ``IdempotentProducer`` wires it (``attach``); a
:class:`JournalWorld` may kill it (``kill -9``) at any step and open the next generation on
the same journal and the same :class:`~sim_server.SimServer`, several times, then drains.

A kill stops the simulated process where it is: nothing more is written (the journal's
files stay as the shared maps left them, the OS lock goes with the process), each request on
the wire was either lost, stored (its answer lost) or becomes a zombie that reaches the
server later, in any later generation. A kill may also come in the middle of an
``append()``: the last message's record is then torn at any byte (in the order the journal
writes it: payload, then header), and that message was never accepted (unless the bytes
left out were zeros anyway: the record is whole, and is delivered once); or inside the
SEAL record of batches not sent yet (a renumbering is one record: torn, the batches keep
their previous (epoch, seq), or are replayed unsealed). Or ``close(timeout)``
gives up first (``keep_pending``): what it reports failed stays journaled, for the next
generation to deliver.

Invariants across the generations (the journal's contract), on top of each generation's
own (``SimProducer``):

- at each reopen, the journal replays exactly the messages accepted by earlier generations
  and not reported yet (acknowledged or failed), each once, in acceptance order; a torn
  message is not replayed;
- every accepted message is reported exactly once over all generations, acknowledged or
  failed; an acknowledged one is in the stream; a failed one that is in the stream says it
  may have been stored;
- no request of a generation carries a message reported before (acknowledged messages are
  never sent again, failed ones leave the journal), and no (epoch, seq) of ours is ever sent
  with other messages than the first time (a resend may only drop invalid JSON): sequence
  numbers are never reused;
- the stream holds each message at most once, in acceptance order (the limits Z1 and Z2
  excepted, as in the simulation without a journal: see ``sim_world.LIMITS``).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from durable_streams import _jitter, errors
from durable_streams._producer import journal_format as F
from durable_streams._producer.batch import Batch
from durable_streams._producer.journal import Journal
from durable_streams._producer.journal_attach import attach
from durable_streams._producer.journal_replay import Replay

from .sim_producer import PID, InvariantError, Req, SimProducer, in_doubt, ours
from .sim_server import URL, Fault, SimServer
from .sim_world import FAULTS, KNOWN_BUGS, Config, World

# The walks found two library bugs, both fixed now (their tests are in
# test_sim_journal.py, ``test_j1_*`` and ``test_j2_*``): J1, a 204 for a batch of the
# journaled epoch taken as ours while the server's state at that (id, epoch) was another
# writer's (the message lost); J2, a hole at seq 0 of the journaled epoch forgotten at
# the reopen, so the 400 "new epoch must start with sequence 0" for seq 1 failed valid
# messages as a bad request.

#: segments are made of at least 8 KiB (a page past the reserve): padded messages and
#: longer walks cross segment rollover and compaction
SEGMENT_BYTES = 4096


@dataclass
class Ledger:
    """Every message over all generations: what the application saw."""

    #: message -> (acceptance index, thread, n, generation that accepted it)
    accepted: dict[bytes, tuple[int, int, int, int]] = field(default_factory=dict)
    #: message -> (generation, "acked" or "failed", the error if failed)
    reported: dict[bytes, tuple[int, str, errors.DurableStreamError | None]] = field(
        default_factory=dict)
    torn: set[bytes] = field(default_factory=set)  # killed inside append(): not accepted
    #: (epoch, seq) -> the messages our first request with them carried
    sent: dict[tuple[int, int], tuple[bytes, ...]] = field(default_factory=dict)
    z1 = 0  # zombies of an earlier generation stored under an epoch since left

    def unresolved(self) -> list[bytes]:
        """Accepted and not reported yet, in acceptance order."""
        return [m for m in self.accepted if m not in self.reported]


class _Transport:
    """What ``attach`` reads of the producer's transport (the content type is known)."""

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode
        self.content_type: str | None = ("application/json" if json_mode
                                         else "application/octet-stream")


class _Pool:
    """What ``attach`` uses of the sender pool: its transport, and ``wake``."""

    def __init__(self, producer: JournalSimProducer, json_mode: bool) -> None:
        self.transport = _Transport(json_mode)
        self.producer = producer

    def wake(self) -> None:
        self.producer.notify_one("ready")


class JournalSimProducer(SimProducer):
    """One generation: a simulated producer process with its journal open."""

    def __init__(self, server: SimServer, directory: str, ledger: Ledger, gen: int, *,
                 now: float, pad: int = 0, **kw: Any) -> None:
        super().__init__(server, **kw)
        self.now = now
        self.ledger = ledger
        self.gen_no = gen
        self.pad = pad
        self.directory = directory
        self.journal = Journal.open(directory, stream=URL, producer_id=self.producer_id,
                                    max_bytes=1 << 30, segment_bytes=SEGMENT_BYTES)
        self.replay: Replay = self.journal.replay
        self._check_replay()
        for pb in self.replay.batches:
            for m in pb.messages:
                self._adopt_message(m)
        for _, m in self.replay.unsealed:
            self._adopt_message(m)
        with self.lock:  # as IdempotentProducer.__init__
            self.replayed = attach(self.journal, acc=self.acc, seq=self.seq,
                                   pool=_Pool(self, server.json_mode),  # type: ignore[arg-type]
                                   delivery_timeout=self.delivery_timeout)
        # attach() reads time.monotonic(); this simulation runs on its own clock
        self.acc.first_ts = self.now
        for b in self.seq.resend:
            b.deadline = self.now + self.delivery_timeout
            self.batches.append(b)
            for m in b.messages:
                self.batch_of[m] = b
        self.killed = False

    def _adopt_message(self, m: bytes) -> None:
        _, thread, n, _ = self.ledger.accepted[m]
        self.book.accepted[m] = (thread, n)

    def _check_replay(self) -> None:
        """The journal replays exactly what earlier generations accepted and nobody was
        told about yet, each message once, in acceptance order; torn messages never."""
        r = self.replay
        got = [m for b in r.batches for m in b.messages] + [m for _, m in r.unsealed]
        want = self.ledger.unresolved()
        if got != want:
            missing = [m for m in want if m not in got]
            extra = [m for m in got if m not in want]
            raise InvariantError(
                f"generation {self.gen_no}: the journal replays {len(got)} message(s), "
                f"{len(want)} were pending: missing {missing[:5]}, not pending {extra[:5]}"
                f"{' (torn)' if set(extra) & self.ledger.torn else ''}, order "
                f"{'same' if sorted(got) == sorted(want) else 'n/a'}: {got[:8]} vs {want[:8]}")
        epochs = {b.epoch for b in r.batches}
        if epochs - {r.epoch}:  # a renumbering is one record (atomic)
            raise InvariantError(f"replayed batches of epochs {epochs}, the journal's is "
                                 f"{r.epoch}")
        if r.count != len(got):
            raise InvariantError(f"replay count {r.count} != {len(got)} messages")

    # -- the application --------------------------------------------------------------------
    def raw(self, thread: int, n: int, valid: bool) -> bytes:
        pad = "x" * self.pad
        if self.server.json_mode:
            return (f'"{thread}.{n}{pad}"' if valid else f"{{bad {thread}.{n}{pad}").encode()
        return f"<{thread}.{n}{pad}>".encode()

    def append(self, thread: int, n: int, *, valid: bool = True) -> bool:
        raw = self.raw(thread, n, valid)
        assert len(raw) <= self.acc.max_batch_bytes, raw  # the world pads within it
        try:
            self.acc.append(raw)
        except errors.DurableStreamError:
            self.book.refused += 1
            return False
        self.book.accepted[raw] = (thread, n)
        self.ledger.accepted[raw] = (len(self.ledger.accepted), thread, n, self.gen_no)
        return True

    # -- the Sink: every report is checked against the earlier generations' ----------------
    def acked(self, batch: Batch, offset: str, duplicate: bool) -> None:
        self._report(batch.messages, "acked", None)
        super().acked(batch, offset, duplicate)

    def failed(self, messages: list[bytes], err: errors.DurableStreamError,
               nbytes: int) -> None:
        self._report(messages, "failed", err)
        super().failed(messages, err, nbytes)

    def _report(self, messages: list[bytes], how: str,
                err: errors.DurableStreamError | None) -> None:
        if self.killed:
            raise InvariantError("a killed producer reported something")
        for m in messages:
            before = self.ledger.reported.get(m)
            if before is not None and before[0] != self.gen_no:
                raise InvariantError(
                    f"generation {self.gen_no}: {m!r} {how}, already {before[1]} by "
                    f"generation {before[0]} ({before[2]})")
            if m not in self.ledger.accepted:
                raise InvariantError(f"{m!r} {how} but never accepted "
                                     f"{'(torn)' if m in self.ledger.torn else ''}")
            if how == "failed" and self.journal.keep_pending:
                continue  # close() gave up: it stays journaled, the next producer sends it
            self.ledger.reported.setdefault(m, (self.gen_no, how, err))

    # -- requests: nothing reported is sent again, no (epoch, seq) reused -------------------
    def resume(self, i: int) -> None:
        super().resume(i)
        w = self.waiting[i]
        if isinstance(w, Req) and w.kind == "post" and not w.done:
            batch = self.holding.get(i)
            assert batch is not None and batch.body == w.body
            self._check_send(w.epoch, w.seq, batch.messages)

    def _check_send(self, epoch: int, seq: int, messages: list[bytes]) -> None:
        for m in messages:
            rep = self.ledger.reported.get(m)
            if rep is not None:
                raise InvariantError(f"generation {self.gen_no} sends {m!r} (e={epoch} "
                                     f"s={seq}), {rep[1]} by generation {rep[0]}")
        first = self.ledger.sent.setdefault((epoch, seq), tuple(messages))
        if not set(messages) <= set(first):
            raise InvariantError(f"generation {self.gen_no} reuses (epoch {epoch}, seq "
                                 f"{seq}) for {messages[:4]}; it was sent with {first[:4]}")

    # -- the end of a generation -----------------------------------------------------------
    def drain(self, max_rounds: int = 3000) -> None:
        """As the simulation's, with rounds enough for a long walk's backlog (one batch of
        one message may need a round or two each)."""
        super().drain(max_rounds + 4 * (len(self.acc.buf) + len(self.seq.batches)))

    def abandon(self) -> None:
        """``close(timeout)`` gives up (as ``IdempotentProducer._shutdown(abandon=True)``):
        the unacknowledged messages are reported failed and stay journaled."""
        with self.lock:
            self.journal.keep_pending = True
            self.seq.stop(errors.ProducerClosedError(
                f"producer {self.producer_id!r} was closed before these messages were "
                f"acknowledged; they stay in the journal {self.directory}", url=URL))
        self.stop()

    def kill(self) -> list[Req]:
        """``kill -9``: the process stops here. The journal is left as it is (no record
        more; ``after_fork_in_child`` writes nothing and lets the OS lock go, as the death
        of the process does). Returns the POSTs still on the wire or given up on."""
        self.killed = True
        self.journal.after_fork_in_child()
        posts = [r for r in self.wire if r.kind == "post"] + self.zombies
        self.wire, self.zombies = [], []
        return posts


def last_record(directory: str) -> tuple[int, bytes]:
    """The type and payload of the journal's last record."""
    _, path = F.list_segments(directory)[-1]
    with open(path, "rb") as fh:
        records, _ = F.scan(fh.read(), path, last=True)
    return records[-1][1], records[-1][2]


def tear_last_record(directory: str, rnd: random.Random, rtype: int = F.T_MSG) -> bool:
    """The process died while the last record was written (payload first, then the
    header, as the journal writes): only a prefix of those bytes reached the map. False
    when the bytes left out were zeros anyway (the high bytes of the length and type):
    the record is whole."""
    _, path = F.list_segments(directory)[-1]
    with open(path, "r+b") as fh:
        data = bytearray(fh.read())
        records, _ = F.scan(bytes(data), path, last=True)
        off, found, payload = records[-1]
        assert found == rtype, (found, rtype)
        order = (list(range(off + F.HSIZE, off + F.HSIZE + len(payload)))
                 + list(range(off, off + F.HSIZE)))
        lost = order[rnd.randrange(len(order)):]
        if not any(data[k] for k in lost):
            return False
        for k in lost:
            data[k] = 0
        fh.seek(0)
        fh.write(data)
    return True


@dataclass
class JConfig:
    """The journal world's own knobs, on top of :class:`~sim_world.Config`."""

    crash_p: float = 0.02  # chance per step of a kill
    torn_p: float = 0.3  # chance that a kill comes inside an append (a torn record)
    pad: int = 0  # message padding (bytes), within max_batch_bytes
    burst: int = 1  # messages per append step (1..burst)
    max_generations: int = 6

    @classmethod
    def draw(cls, rnd: random.Random) -> JConfig:
        return cls(crash_p=rnd.choice([0.01, 0.03, 0.08]), torn_p=rnd.choice([0.0, 0.3, 0.7]),
                   pad=rnd.choice([0, 0, 8, 30, 200]), burst=rnd.choice([1, 1, 3, 10, 30]),
                   max_generations=rnd.choice([2, 4, 8]))


class JournalWorld(World):
    """A :class:`~sim_world.World` whose producer has a journal and may be killed."""

    def __init__(self, cfg: Config, jcfg: JConfig, directory: str) -> None:
        super().__init__(cfg)
        self.jcfg = jcfg
        self.directory = directory
        self.ledger = Ledger()
        self.orphans: list[Req] = []  # POSTs of killed generations not arrived yet
        self.generations: list[JournalSimProducer] = []
        self.tolerate: set[str] = set(KNOWN_BUGS)
        self.trace: list[str] | None = None
        self.stats: Counter[str] = Counter()  # what the run exercised
        self.p = self._open(now=self.p.now)

    def _open(self, now: float) -> JournalSimProducer:
        cfg = self.cfg
        pad = max(0, min(self.jcfg.pad, cfg.max_batch_bytes - 12))
        p = JournalSimProducer(
            self.p.server, self.directory, self.ledger, len(self.generations), now=now,
            pad=pad, epoch=1000 if cfg.fresh else 0, auto_claim=cfg.auto_claim,
            fresh_epoch=cfg.fresh, max_in_flight=cfg.max_in_flight,
            delivery_timeout=cfg.delivery_timeout, linger=cfg.linger,
            max_batch_bytes=cfg.max_batch_bytes, validate_json=cfg.validate_json)
        p.tolerate = set(self.tolerate)
        r = p.replay
        if self.generations:
            segments = F.list_segments(self.directory)
            self.stats["reopen"] += 1
            self.stats["replayed sealed batches"] += bool(r.batches)
            self.stats["replayed unsealed messages"] += bool(r.unsealed)
            self.stats["reopened on several segments"] += len(segments) > 1
            self.stats["reopened after compaction"] += segments[0][0] > 0
        if self.trace is not None:
            p.trace = p.seq.trace = self.trace
            self.trace.append(f"--- generation {p.gen_no}: replays {p.replayed} "
                              f"(epoch={p.replay.epoch} next_seq={p.replay.next_seq})")
        self.generations.append(p)
        return p

    @property
    def jp(self) -> JournalSimProducer:
        assert isinstance(self.p, JournalSimProducer)
        return self.p

    # -- steps ------------------------------------------------------------------------------
    def append(self, thread: int, valid: bool = True) -> None:
        for _ in range(self._burst_n):
            self.p.append(thread, self.counters[thread], valid=valid)
            self.counters[thread] += 1

    _burst_n = 1

    def random_steps(self, rnd: random.Random, n: int) -> None:
        for _ in range(n):
            r = rnd.random()
            if r < self.jcfg.crash_p and len(self.generations) < self.jcfg.max_generations:
                self.steps += 1
                if rnd.random() < 0.2:  # close(timeout) gives up, then the process exits
                    self.stats["abandoned close"] += 1
                    self.jp.abandon()
                self.crash(rnd, torn=rnd.random() < self.jcfg.torn_p)
            elif r < self.jcfg.crash_p + 0.03 and self.orphans:
                self.steps += 1
                self.orphan_arrives(rnd.randrange(8))
            else:
                self._burst_n = rnd.randint(1, self.jcfg.burst)
                super().random_steps(rnd, 1)
                self._burst_n = 1

    def crash(self, rnd: random.Random, torn: bool = False, fate: str | None = None) -> None:
        """Kill the producer (maybe inside an append: its record torn), settle the fate of
        its requests in flight (``fate``: "stored", "later" or "lost" for all of them;
        None: at random, each), and open the next generation on the same journal."""
        p = self.jp
        self.stats["kill with requests in flight"] += bool(p.wire)
        self.stats["kill while draining"] += p.seq.draining
        raw = b""
        if torn:
            thread = rnd.randrange(3)
            raw = p.raw(thread, self.counters[thread], True)
            try:
                p.acc.append(raw)  # journaled: the kill comes before append() returns
            except errors.DurableStreamError:
                torn = False
            else:
                self.counters[thread] += 1
        for req in p.kill():
            f = fate or rnd.choice(["stored", "stored", "later", "later", "lost", "lost"])
            if f == "stored":  # reached the server before the death: stored, if it may be
                self._arrive(req)
            elif f == "later":  # on its way: it arrives later, any time
                self.orphans.append(req)
            # else: lost with the process
        if not torn and rnd.random() < self.jcfg.torn_p:
            self._tear_unsent_seal(rnd)
        if torn and not tear_last_record(self.directory, rnd):
            # the record is whole: the next generation replays it (as if accepted)
            self.ledger.accepted[raw] = (len(self.ledger.accepted), thread, self.counters[
                thread] - 1, p.gen_no)
            torn = False
            self.stats["torn record whole"] += 1
        elif torn:
            self.ledger.torn.add(raw)
            self.stats["torn record"] += 1
        if self.trace is not None:
            self.trace.append(f"t={p.now:.3f} KILL gen {p.gen_no}{' (torn)' if torn else ''}"
                              f" orphans={len(self.orphans)}")
        self.p = self._open(now=p.now + rnd.choice([0.0, 0.5, 5.0]))

    def _tear_unsent_seal(self, rnd: random.Random) -> None:
        """If the last record is a SEAL none of whose (epoch, seq) was sent yet (a
        renumbering: its batches wait for a RESEND), the kill may have come while it was
        written: tear it. The batches keep their previous (epoch, seq) or are unsealed."""
        rtype, payload = last_record(self.directory)
        if rtype != F.T_SEAL:
            return
        epoch, entries = F.decode_seal(payload)
        if any((epoch, e.seq) in self.ledger.sent for e in entries):
            return
        if tear_last_record(self.directory, rnd, F.T_SEAL):
            self.stats["torn seal"] += 1
            self.stats["torn renumbering"] += len(entries) > 1 or entries[0].seq > 0

    def orphan_arrives(self, k: int) -> None:
        self._arrive(self.orphans.pop(k % len(self.orphans)))

    def _arrive(self, req: Req) -> None:
        r = self.p.server.post(self.p.producer_id, req.epoch, req.seq, req.body)
        if self.trace is not None:
            self.trace.append(f"t={self.p.now:.3f} ORPHAN e={req.epoch} s={req.seq} "
                              f"{req.body!r} -> {r.status_code}")
        self.stats[f"orphan {r.status_code}"] += 1
        if r.status_code == 200 and req.epoch != self.p.seq.epoch:
            self.ledger.z1 += 1  # Z1: stored under an epoch the producer has left
            self.p.seq.bugs["Z1"] += 1

    # -- the end ----------------------------------------------------------------------------
    def finish(self, close_faults: list[Fault] | None = None,
               rnd: random.Random | None = None) -> None:
        rnd = rnd or random.Random(0)
        # the limits fired in any generation excuse what they cause in the last one
        bugs = self.p.seq.bugs
        bugs["Z1"] += self.ledger.z1 + sum(g.seq.bugs["Z1"] for g in self.generations[:-1])
        while self.orphans:
            req = self.orphans.pop()
            if rnd.random() < 0.5:
                self._arrive(req)
        super().finish(close_faults)
        self.check_all()
        self.jp.journal.close()

    def _known(self, *bugs: str) -> bool:
        for bug in bugs:
            if bug not in self.tolerate:
                continue
            if bug == "Z1" and (self.ledger.z1 or any(g.seq.bugs["Z1"]
                                                      for g in self.generations)):
                return True
            if bug == "Z2" and self.adopted_foreign():
                return True
        return False

    def adopted_foreign(self) -> bool:
        """Z2 over all generations: a seq > 0 of ours continued another writer's seq 0."""
        first: dict[int, bool] = {}
        for a in self.p.server.log:
            if a.producer != PID or not a.messages:
                continue
            mine = self._ours(a.messages[0])
            if a.seq == 0:
                first[a.epoch] = mine
            elif mine and first.get(a.epoch) is False:
                return True
        return False

    def _ours(self, data: bytes) -> bool:
        m = data if self.p.server.json_mode else (ours(data) or [b""])[0]
        return m in self.ledger.accepted or m in self.ledger.torn

    def stored(self) -> list[bytes]:
        server = self.p.server
        msgs = server.messages if server.json_mode else ours(b"".join(server.messages))
        return [m for m in msgs if m in self.ledger.accepted or m in self.ledger.torn]

    def check_all(self) -> None:
        """The journal's contract over every generation (the module docstring)."""
        led = self.ledger
        stored = self.stored()
        torn = [m for m in stored if m in led.torn]
        if torn:
            raise InvariantError(f"torn message(s) delivered: {torn[:5]}")
        if len(stored) != len(set(stored)) and not self._known("Z1"):
            dups = sorted({m for m in stored if stored.count(m) > 1})
            raise InvariantError(f"duplicates in the stream: {dups[:5]}")
        stored_set = set(stored)
        for m in led.accepted:
            rep = led.reported.get(m)
            if rep is None:
                raise InvariantError(f"{m!r} never reported "
                                     f"({'stored' if m in stored_set else 'not stored'})")
            gen, how, err = rep
            valid = not m.startswith(b"{bad")
            if how == "failed" and valid and isinstance(err, errors.BadRequestError):
                raise InvariantError(f"the valid message {m!r} failed (generation {gen}) "
                                     f"with a 400: {err}")
            if how == "failed" and self.cfg.auto_claim and isinstance(
                    err, errors.StaleEpochError):
                raise InvariantError(f"auto_claim, yet {m!r} failed as fenced: {err}")
            if how == "acked" and m not in stored_set:
                raise InvariantError(f"{m!r} acknowledged (generation {gen}) but not stored")
            if (how == "failed" and m in stored_set and err is not None
                    and not (in_doubt(err) and err.maybe_stored) and not self._known("Z1")):
                raise InvariantError(f"{m!r} stored but reported failed (generation {gen}) "
                                     f"without saying it may be stored: {err}")
        last = -1
        for m in dict.fromkeys(stored):
            index = led.accepted[m][0]
            if index < last and not self._known("Z1", "Z2"):
                raise InvariantError(f"{m!r} (accepted #{index}) stored after #{last}")
            last = max(last, index)


def journal_walk(seed: int, directory: str, steps: int = 150,
                 trace: list[str] | None = None,
                 tolerate: tuple[str, ...] = KNOWN_BUGS) -> JournalWorld:
    """A seeded random walk with kills; a failure replays with the same seed (and
    ``trace=[]`` to see what happened)."""
    rnd = random.Random(seed)
    state = _jitter.RNG.getstate()
    _jitter.RNG.seed(seed)  # the claim backoff's jitter: the same seed, the same walk
    try:
        cfg = Config.draw(rnd)
        jcfg = JConfig.draw(rnd)
        world = JournalWorld(cfg, jcfg, os.path.join(directory, f"j{seed}"))
        world.tolerate = set(tolerate)
        world.p.tolerate = set(tolerate)
        if trace is not None:
            trace.append(f"{cfg!r} {jcfg!r}")
            world.trace = trace
            world.p.trace = world.p.seq.trace = trace
        world.random_steps(rnd, steps)
        world.finish([rnd.choice(FAULTS) for _ in range(3)], rnd)
    finally:
        _jitter.RNG.setstate(state)
    return world
