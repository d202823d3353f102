"""Drives a :class:`Journal` the way the producer's parts do (accumulator takes, sequencer
seals, acks, failures, renumberings), with a model of what must be pending, for the
server-free journal tests. Also: crash images (the files as the kernel holds them when the
writer dies in the middle of one record)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from durable_streams._producer import journal_format as F
from durable_streams._producer.batch import Batch
from durable_streams._producer.journal import Journal, Replay

URL = "http://127.0.0.1:1/v1/stream/j"
PID = "writer-1"


def open_journal(path: str, **kw: object) -> Journal:
    opts: dict[str, object] = {"stream": URL, "producer_id": PID, "max_bytes": 1 << 30,
                               "segment_bytes": 16 * 1024}
    opts.update(kw)
    return Journal.open(path, **opts)  # type: ignore[arg-type]


@dataclass
class Model:
    """What the journal must replay: index -> message, and each live batch's key."""

    messages: dict[int, bytes] = field(default_factory=dict)
    unsealed: set[int] = field(default_factory=set)
    batches: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    def expected(self) -> tuple[list[tuple[int, int, list[bytes]]], list[bytes]]:
        batches = sorted(((k, idx) for k, idx in self.batches.items() if idx),
                         key=lambda kv: kv[1][0])
        return ([(k[0], k[1], [self.messages[i] for i in idx]) for k, idx in batches],
                [self.messages[i] for i in sorted(self.unsealed)])

    def copy(self) -> Model:
        return Model(dict(self.messages), set(self.unsealed),
                     {k: list(v) for k, v in self.batches.items()})


def replayed(r: Replay) -> tuple[list[tuple[int, int, list[bytes]]], list[bytes]]:
    return ([(b.epoch, b.seq, b.messages) for b in r.batches], [m for _, m in r.unsealed])


class Driver:
    """The journal plus an accumulator/sequencer stand-in and the model."""

    def __init__(self, path: str, **kw: object) -> None:
        self.path = path
        self.kw = kw
        self.j = open_journal(path, **kw)
        self.model = Model()
        self.buf: list[tuple[int, bytes]] = []  # (accumulator index, message)
        self.acc_next = 0
        self.epoch = 1
        self.next_seq = 0
        self.live: dict[int, tuple[Batch, list[int]]] = {}  # batch id -> (batch, indexes)
        self.parked: list[Batch] = []
        self.draining = False
        self._adopt(self.j.replay)

    def _adopt(self, r: Replay) -> None:
        """What the producer does on open: replayed batches and unsealed messages."""
        self.model = Model()
        self.live = {}
        for pb in r.batches:
            b = Batch(list(pb.messages), sum(map(len, pb.messages)), pb.indexes[0], pb.body,
                      0.0)
            b.epoch, b.seq = pb.epoch, pb.seq
            self.j.adopt(b, pb.indexes)
            self.live[b.id] = (b, list(pb.indexes))
            self.model.batches[(pb.epoch, pb.seq)] = list(pb.indexes)
            for i, m in zip(pb.indexes, pb.messages, strict=False):
                self.model.messages[i] = m
        k = len(r.unsealed)
        start = r.next_index - k
        self.buf = [(start + n, m) for n, (_, m) in enumerate(r.unsealed)]
        self.j.set_remap({start + n: i for n, (i, _) in enumerate(r.unsealed)
                          if start + n != i})
        self.acc_jidx = {start + n: i for n, (i, _) in enumerate(r.unsealed)}
        for i, m in r.unsealed:
            self.model.messages[i] = m
            self.model.unsealed.add(i)
        self.acc_next = r.next_index
        if r.epoch is not None:
            self.epoch, self.next_seq = r.epoch, r.next_seq
        self.parked = []
        self.draining = False

    # -- operations --------------------------------------------------------------------------
    def append(self, msg: bytes) -> bool:
        if not self.j.add(msg):
            return False
        i = self.acc_next
        self.acc_next += 1
        self.acc_jidx[i] = i
        self.buf.append((i, msg))
        self.model.messages[i] = msg
        self.model.unsealed.add(i)
        return True

    def take(self, count: int, bad: set[int] | None = None, json_body: bool = False
             ) -> Batch | None:
        """Take ``count`` buffered messages; the positions in ``bad`` are invalid."""
        taken = self.buf[:count]
        del self.buf[:count]
        if not taken:
            return None
        msgs = [m for _, m in taken]
        first = taken[0][0]
        self.j.taken(first, msgs)
        jidx = [self.acc_jidx.pop(a) for a, _ in taken]
        bad = bad or set()
        good = [m for k, m in enumerate(msgs) if k not in bad]
        keep = [i for k, i in enumerate(jidx) if k not in bad]
        for k, i in enumerate(jidx):
            self.model.unsealed.discard(i)
            if k in bad:
                del self.model.messages[i]
        if len(good) == len(msgs):
            good = msgs
        self.j.built(good)
        if not good:
            return None
        b = Batch(good, sum(map(len, good)), first, b"", 0.0)
        self.j.admitted(b)
        self.live[b.id] = (b, keep)
        if self.draining:
            self.parked.append(b)
            for i in keep:  # admitted but unsealed: replayed as unsealed messages
                self.model.unsealed.add(i)
            return b
        b.epoch, b.seq = self.epoch, self.next_seq
        self.next_seq += 1
        self.j.sealed([b], json_body)
        self.model.batches[(b.epoch, b.seq)] = keep
        return b

    def resolve(self, b: Batch, acked: bool) -> None:
        _, idx = self.live.pop(b.id)
        self.j.resolved(b, acked=acked)
        self.model.batches.pop((b.epoch, b.seq), None)
        for i in idx:
            self.model.messages.pop(i, None)
            self.model.unsealed.discard(i)
        if b in self.parked:
            self.parked.remove(b)

    def split(self, b: Batch, bad: set[int]) -> None:
        """Invalid JSON found at the server: the batch keeps its (epoch, seq)."""
        _, idx = self.live[b.id]
        good = [m for k, m in enumerate(b.messages) if k not in bad]
        keep = [i for k, i in enumerate(idx) if k not in bad]
        for k, i in enumerate(idx):
            if k in bad:
                del self.model.messages[i]
        b.messages = good
        self.live[b.id] = (b, keep)
        self.model.batches[(b.epoch, b.seq)] = keep
        self.j.resealed(b, True)

    def start_claim(self) -> None:
        self.draining = True

    def renumber(self) -> None:
        """A new epoch: every unresolved batch gets a new (epoch, seq), in one record."""
        self.epoch += 1
        self.next_seq = 0
        batches = sorted((b for b, _ in self.live.values()), key=lambda b: b.first_index)
        for b in batches:
            _, idx = self.live[b.id]
            if b not in self.parked:
                self.model.batches.pop((b.epoch, b.seq), None)
            b.epoch, b.seq = self.epoch, self.next_seq
            self.next_seq += 1
            self.model.batches[(b.epoch, b.seq)] = idx
            for i in idx:
                self.model.unsealed.discard(i)
        self.parked = []
        self.draining = False
        self.j.sealed(batches, False)

    def crash_and_reopen(self) -> Replay:
        """The process dies (nothing is flushed: the maps are the kernel's) and a new
        producer opens the journal."""
        self.j.close()
        self.j = open_journal(self.path, **self.kw)
        return self.j.replay

    def readopt(self) -> None:
        self._adopt(self.j.replay)


# -- crash images ------------------------------------------------------------------------------

def snapshot(path: str) -> dict[str, bytes]:
    out = {}
    for name in sorted(os.listdir(path)):
        if F.SEGMENT_RE.match(name):
            with open(os.path.join(path, name), "rb") as fh:
                out[name] = fh.read()
    return out


def one_record_change(before: dict[str, bytes], after: dict[str, bytes]
                      ) -> tuple[str, int, int] | None:
    """(file, start, end) when ``after`` differs from ``before`` by one region of one
    existing file (one record written in place), else None."""
    if set(before) != set(after):
        return None
    changed = [n for n in after if before[n] != after[n]]
    if len(changed) != 1:
        return None
    name = changed[0]
    a, b = before[name], after[name]
    if len(a) != len(b):
        return None
    # the header (first 8 bytes hold a non-zero length) is where the record starts
    start = next(k for k in range(len(a)) if a[k] != b[k]) // F.ALIGN * F.ALIGN
    end = len(a) - next(k for k in range(len(a)) if a[-1 - k] != b[-1 - k])
    return name, start, end


def torn_images(before: dict[str, bytes], after: dict[str, bytes], record_start: int,
                name: str) -> list[tuple[int, dict[str, bytes]]]:
    """Every state of the files while one record is written in program order (payload
    first, then the header): (bytes written, files)."""
    data_after = after[name]
    _, length, _ = F.HEADER.unpack_from(data_after, record_start)
    order = (list(range(record_start + F.HSIZE, record_start + F.HSIZE + length))
             + list(range(record_start, record_start + F.HSIZE)))
    images = []
    cur = bytearray(before[name])
    for cut in range(len(order)):
        img = dict(before)
        img[name] = bytes(cur)
        images.append((cut, img))
        k = order[cut]
        cur[k] = data_after[k]
    return images


def write_image(path: str, image: dict[str, bytes]) -> None:
    if os.path.exists(path):
        shutil.rmtree(path)
    os.makedirs(path)
    for name, data in image.items():
        with open(os.path.join(path, name), "wb") as fh:
            fh.write(data)
