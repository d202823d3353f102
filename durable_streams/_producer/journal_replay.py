"""What a producer journal holds that is still pending (:class:`Replay`), folded from its
records (:class:`ReplayBuilder`), and what a journal holds read without its lock
(:func:`summarize`, :func:`peek_content_type`). How a new producer opens a journal and
takes it over is in ``journal_attach.py``."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field

from .. import errors
from . import journal_format as F


@dataclass
class PendingBatch:
    """A sealed, unresolved batch found in the journal."""

    epoch: int
    seq: int
    json_body: bool
    indexes: list[int]
    messages: list[bytes]

    @property
    def body(self) -> bytes:
        if self.json_body:
            return b"[" + b",".join(self.messages) + b"]"
        return b"".join(self.messages)


@dataclass
class Replay:
    """What a journal holds that is not resolved yet, in message order."""

    batches: list[PendingBatch] = field(default_factory=list)
    unsealed: list[tuple[int, bytes]] = field(default_factory=list)
    epoch: int | None = None  # the epoch of the latest seal (None: nothing ever sealed)
    next_seq: int = 0  # the seq after the latest seal at that epoch
    probe: str | None = None  # that epoch's tail probe, if one was recorded
    content_type: str | None = None  # the stream's, as the batches were sealed with it
    next_index: int = 0
    #: a 200 proved the server's producer state at ``epoch`` this journal's own (every
    #: lower seq of it acknowledged first): a 204 for a journaled seq of it is ours
    owned: bool = False
    #: the holes of ``epoch``: seqs reported failed (DONE) above its highest acknowledged
    #: one. Each may be stored or not (its answer lost); a later seq's 409 naming it, or
    #: a 400 "new epoch must start with sequence 0" for a hole at 0, confirms it is not
    holes: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(b.messages) for b in self.batches) + len(self.unsealed)


class ReplayBuilder:
    """Folds the records of the journal, in order, into what is still pending."""

    def __init__(self) -> None:
        self.pending: dict[int, bytes] = {}
        self.where: dict[int, int] = {}  # index -> segment number
        self.seal_of: dict[int, tuple[int, int]] = {}
        self.members: dict[tuple[int, int], list[int]] = {}
        self.json_of: dict[tuple[int, int], bool] = {}
        self.epoch: int | None = None
        self.next_seq = 0
        self.probes: dict[int, str] = {}
        self.low = -1  # the first index the journal still has
        self.pending_per_segment: dict[int, int] = {}
        self.content_type: str | None = None
        self.owned: int | None = None  # the latest epoch proven ours (META owned_epoch)
        self.holes: set[int] = set()  # seqs of ``epoch`` failed (DONE) above acked_seq
        self.acked_seq = -1  # the highest seq of ``epoch`` acknowledged (DONE)

    def segment(self, info: F.SegmentInfo) -> None:
        if self.low < 0:
            self.low = info.first_index
            self.epoch, self.next_seq = info.epoch, info.next_seq
            if info.epoch is not None and info.probe is not None:
                self.probes[info.epoch] = info.probe
            self.content_type = info.content_type
            self.owned = info.owned
            self.holes = set(F.from_runs(info.holes))
            self.acked_seq = info.acked_seq

    def message(self, index: int, payload: bytes, segment: int) -> None:
        self.pending[index] = payload
        self.where[index] = segment

    def control(self, rtype: int, payload: bytes) -> None:
        if rtype == F.T_SEAL:
            epoch, entries = F.decode_seal(payload)
            for e in entries:
                key = (epoch, e.seq)
                new = [i for i in F.from_runs(e.runs) if i in self.pending]
                old = self.members.get(key)
                if old is not None:  # a reseal after invalid JSON was split off
                    keep = set(new)
                    for i in old:
                        if i not in keep:
                            self._resolve(i)
                for i in new:
                    prev = self.seal_of.get(i)
                    if prev is not None and prev != key:
                        with contextlib.suppress(ValueError):
                            self.members[prev].remove(i)
                    self.seal_of[i] = key
                self.members[key] = new
                self.json_of[key] = e.json_body
                if self.epoch != epoch:
                    self.epoch, self.next_seq = epoch, 0
                    self.holes, self.acked_seq = set(), -1
                self.next_seq = max(self.next_seq, e.seq + 1)
        elif rtype == F.T_DONE:
            kind, runs = F.decode_done(payload)
            ended: tuple[int, int] | None = None  # the sealed batch these messages end
            for i in F.from_runs(runs):
                of = self.seal_of.get(i) if i in self.pending else None
                if of is not None and of != ended and of[0] == self.epoch:
                    ended = of
                    self.holes, self.acked_seq = settle_seq(
                        self.holes, self.acked_seq, of[1], kind == F.DONE_ACKED)
                self._resolve(i)
        elif rtype == F.T_PROBE:
            epoch, offset = F.decode_probe(payload)
            self.probes[epoch] = offset
        elif rtype == F.T_META:
            meta = json.loads(payload)
            if meta.get("content_type"):
                self.content_type = str(meta["content_type"])
            if meta.get("owned_epoch") is not None:
                self.owned = int(meta["owned_epoch"])
        elif rtype == F.T_SEGMENT:
            raise ValueError("a segment header inside a segment")

    def _resolve(self, i: int) -> None:
        if self.pending.pop(i, None) is not None:
            self.seal_of.pop(i, None)

    def result(self, next_index: int) -> Replay:
        r = Replay(epoch=self.epoch, next_seq=self.next_seq, next_index=next_index,
                   content_type=self.content_type,
                   owned=self.epoch is not None and self.owned == self.epoch,
                   holes=sorted(self.holes))
        if self.epoch is not None:
            r.probe = self.probes.get(self.epoch)
        batches = []
        for key, idx in self.members.items():
            live = [i for i in idx if i in self.pending and self.seal_of.get(i) == key]
            if live:
                batches.append(PendingBatch(key[0], key[1], self.json_of[key], live,
                                            [self.pending[i] for i in live]))
        batches.sort(key=lambda b: b.indexes[0])
        for b in batches:
            if b.epoch != self.epoch:
                # Every renumbering is one seal record of the new epoch: a batch still
                # pending at an older one means records are missing or out of place.
                raise errors.JournalError(
                    f"producer journal: the batch (epoch {b.epoch}, seq {b.seq}) in segment "
                    f"{self.where[b.indexes[0]]} is pending although the journal moved to "
                    f"epoch {self.epoch}, which cannot happen (a segment was copied in "
                    "from another journal, or edited?); nothing was skipped. Move the "
                    "journal directory aside to start afresh (its pending messages are "
                    "then not delivered), or restore it from a copy",
                    code="JOURNAL_CORRUPT")
        r.batches = batches
        r.unsealed = [(i, self.pending[i]) for i in sorted(self.pending)
                      if i not in self.seal_of]
        for i in self.pending:
            seg = self.where[i]
            self.pending_per_segment[seg] = self.pending_per_segment.get(seg, 0) + 1
        return r


def settle_seq(holes: set[int], acked_seq: int, seq: int, acked: bool
               ) -> tuple[set[int], int]:
    """The holes of an epoch and its highest acknowledged seq, after ``seq`` of it was
    acknowledged or reported failed: an acknowledged seq means every lower one is stored
    (the server takes one epoch's seqs in order), so no lower seq is a hole any more."""
    if acked:
        if seq > acked_seq:
            return {s for s in holes if s > seq}, seq
        return holes, acked_seq
    if seq > acked_seq:
        return holes | {seq}, acked_seq
    return holes, acked_seq


def peek_content_type(directory: str) -> str | None:
    """The stream content type a journal recorded (read only, no lock; None: unknown),
    for a command line that must parse its input before the server can be reached."""
    ct: str | None = None
    with contextlib.suppress(OSError, ValueError):
        for _, path in F.list_segments(directory):
            with open(path, "rb") as fh:
                data = fh.read()
            for _, rtype, payload in F.scan(data, path, last=True)[0]:
                if rtype == F.T_SEGMENT:
                    ct = F.decode_segment(payload).content_type or ct
                elif rtype == F.T_META:
                    ct = json.loads(payload).get("content_type") or ct
    return ct


@dataclass
class JournalSummary:
    """What a journal holds, read without its lock (``durable-streams journal``)."""

    stream: str  # scheme://host:port/path: no user-info, no query
    producer_id: str
    content_type: str | None
    epoch: int | None
    next_seq: int
    pending_batches: int
    pending_messages: int
    pending_bytes: int
    segments: int
    disk_bytes: int


def summarize(directory: str | os.PathLike[str]) -> JournalSummary | None:
    """Read a journal's segments (read only, no lock) and sum up what is pending.
    None: the directory holds no journal. A corrupt record raises ``ValueError`` naming
    the file and offset, as opening it would."""
    found = F.list_segments(os.fspath(directory))
    builder = ReplayBuilder()
    first: F.SegmentInfo | None = None
    index = 0
    disk = 0
    for k, (_, path) in enumerate(found):
        with open(path, "rb") as fh:
            data = fh.read()
        disk += len(data)
        records = F.scan(data, path, last=k == len(found) - 1)[0]
        if not records or records[0][1] != F.T_SEGMENT:
            continue
        info = F.decode_segment(records[0][2])
        first = first or info
        builder.segment(info)
        index = info.first_index
        for _, rtype, payload in records[1:]:
            if rtype == F.T_MSG:
                builder.message(index, payload, info.number)
                index += 1
            else:
                builder.control(rtype, payload)
    if first is None:
        return None
    r = builder.result(index)
    nbytes = sum(len(m) for b in r.batches for m in b.messages)
    nbytes += sum(len(m) for _, m in r.unsealed)
    return JournalSummary(
        stream=first.stream, producer_id=first.producer_id, content_type=r.content_type,
        epoch=r.epoch, next_seq=r.next_seq,
        pending_batches=len(r.batches) + (1 if r.unsealed else 0),
        pending_messages=r.count, pending_bytes=nbytes, segments=len(found), disk_bytes=disk)
