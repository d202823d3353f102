"""The on-disk format of a producer journal: segment files of framed, checksummed records.

A journal directory holds ``LOCK`` (an empty file: the OS lock of the live producer) and
segment files ``seg-<16 digits>.dsj``, numbered in order. Each segment is preallocated
(``posix_fallocate``: a full disk is found when the segment is made, never later as a
SIGBUS) and written through a ``MAP_SHARED`` memory map, so a record is in the kernel's
page cache the moment its bytes are copied: it survives the death of the process.

A record (LevelDB's shape, adapted)::

    crc32 u32 | length u32 | type u32 | payload (length bytes) | zero padding to 8 bytes

``crc32`` covers the payload with ``(length, type)`` folded into its initial value, so a
wrong length or type fails the check too. The payload is written first and the header last.
Unwritten space is zero, and a zero header (type 0) ends a segment's records.

Reading (:func:`scan`): in the last segment, the first bad record is a *torn tail* (the
death of the writer in the middle of one record) if no valid record follows it at any
8-byte position: it is dropped. Anywhere else a bad record is corruption, reported as
:class:`JournalError` naming the file and the offset; nothing is ever skipped silently.

Record types: ``SEGMENT`` (the first record of each segment: format version, identity,
the index of the segment's first message, the epoch and next seq at that point, the
epoch's tail probe, the content type, whether that epoch is proven ours and its holes:
see ``journal_replay.Replay``), ``META`` (JSON: the stream's content type, once known;
``owned_epoch``, once a 200 proved the server's producer state at that epoch this
journal's own), ``MSG`` (one accepted message; its index is implicit: the segment's first
index plus the MSG records before it), ``SEAL`` (batches given their (epoch, seq) before
the first send: one record for one batch or for a whole re-numbering, so a re-numbering
is atomic), ``DONE`` (messages acknowledged or reported failed) and ``PROBE`` (the stream's
tail read before an epoch's first send: where to look for our batches later).
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .. import errors

FORMAT = 1
HEADER = struct.Struct("<III")  # crc32, payload length, type
HSIZE = HEADER.size
ALIGN = 8

T_SEGMENT, T_MSG, T_SEAL, T_DONE, T_PROBE, T_META = 1, 2, 3, 4, 5, 6
TYPES = frozenset({T_SEGMENT, T_MSG, T_SEAL, T_DONE, T_PROBE, T_META})
DONE_ACKED, DONE_FAILED = 1, 2

SEGMENT_RE = re.compile(r"^seg-(\d{16})\.dsj$")
_RUN = struct.Struct("<QI")  # first index, count
_SEAL_HEAD = struct.Struct("<QI")  # epoch, number of batches
_SEAL_ENTRY = struct.Struct("<QBI")  # seq, flags, number of runs
_DONE_HEAD = struct.Struct("<BI")  # kind, number of runs
_PROBE_HEAD = struct.Struct("<Q")  # epoch
FLAG_JSON = 1
MAX_PAYLOAD = (1 << 31) - 1

Runs = list[tuple[int, int]]


def segment_name(number: int) -> str:
    return f"seg-{number:016d}.dsj"


def record_size(payload_len: int) -> int:
    """Bytes a record with this payload takes, padding included."""
    return (HSIZE + payload_len + ALIGN - 1) & ~(ALIGN - 1)


def seed(length: int, rtype: int) -> int:
    """The crc32 initial value: (length, type) folded in, so both are checked too."""
    return ((length << 3) & 0xFFFFFFFF) ^ ((rtype * 0x9E3779B1) & 0xFFFFFFFF)


def checksum(payload: bytes | memoryview, rtype: int) -> int:
    return zlib.crc32(payload, seed(len(payload), rtype))


def to_runs(indexes: Iterable[int]) -> Runs:
    """Ascending message indexes as (first, count) runs."""
    runs: Runs = []
    for i in indexes:
        if runs and runs[-1][0] + runs[-1][1] == i:
            first, count = runs[-1]
            runs[-1] = (first, count + 1)
        else:
            runs.append((i, 1))
    return runs


def from_runs(runs: Iterable[tuple[int, int]]) -> Iterator[int]:
    for first, count in runs:
        yield from range(first, first + count)


# -- payloads ------------------------------------------------------------------------------

@dataclass(frozen=True)
class SegmentInfo:
    stream: str
    producer_id: str
    number: int
    first_index: int
    epoch: int | None  # the epoch of the latest seal when the segment was made
    next_seq: int  # the seq after the latest seal at that epoch
    probe: str | None  # the epoch's tail probe, if known
    content_type: str | None = None  # the stream's, once known (bodies are sent with it)
    version: int = FORMAT
    #: ``epoch`` if a 200 proved the server's producer state at it this journal's own
    owned: int | None = None
    #: seqs of ``epoch`` reported failed above its highest acknowledged one (holes), as
    #: (first, count) runs, and that highest acknowledged seq (-1: none)
    holes: tuple[tuple[int, int], ...] = ()
    acked_seq: int = -1


def encode_segment(info: SegmentInfo) -> bytes:
    return json.dumps({
        "format": info.version, "stream": info.stream, "producer_id": info.producer_id,
        "segment": info.number, "first_index": info.first_index, "epoch": info.epoch,
        "next_seq": info.next_seq, "probe": info.probe, "content_type": info.content_type,
        "owned": info.owned, "holes": [list(r) for r in info.holes],
        "acked_seq": info.acked_seq,
    }, sort_keys=True).encode()


def decode_segment(payload: bytes) -> SegmentInfo:
    d: dict[str, Any] = json.loads(payload)
    return SegmentInfo(stream=str(d["stream"]), producer_id=str(d["producer_id"]),
                       number=int(d["segment"]), first_index=int(d["first_index"]),
                       epoch=None if d["epoch"] is None else int(d["epoch"]),
                       next_seq=int(d["next_seq"]),
                       probe=None if d["probe"] is None else str(d["probe"]),
                       content_type=(None if d.get("content_type") is None
                                     else str(d["content_type"])),
                       version=int(d["format"]),
                       owned=None if d.get("owned") is None else int(d["owned"]),
                       holes=tuple((int(f), int(c)) for f, c in d.get("holes") or ()),
                       acked_seq=int(d.get("acked_seq", -1)))


@dataclass(frozen=True)
class SealEntry:
    seq: int
    json_body: bool
    runs: tuple[tuple[int, int], ...]


def encode_seal(epoch: int, entries: Iterable[SealEntry]) -> bytes:
    items = list(entries)
    parts = [_SEAL_HEAD.pack(epoch, len(items))]
    for e in items:
        parts.append(_SEAL_ENTRY.pack(e.seq, FLAG_JSON if e.json_body else 0, len(e.runs)))
        parts.extend(_RUN.pack(first, count) for first, count in e.runs)
    return b"".join(parts)


def decode_seal(payload: bytes) -> tuple[int, list[SealEntry]]:
    epoch, n = _SEAL_HEAD.unpack_from(payload, 0)
    pos = _SEAL_HEAD.size
    entries = []
    for _ in range(n):
        seq, flags, nruns = _SEAL_ENTRY.unpack_from(payload, pos)
        pos += _SEAL_ENTRY.size
        runs = tuple(_RUN.unpack_from(payload, pos + k * _RUN.size) for k in range(nruns))
        pos += nruns * _RUN.size
        entries.append(SealEntry(seq, bool(flags & FLAG_JSON), runs))
    if pos != len(payload):
        raise ValueError("seal record has trailing bytes")
    return epoch, entries


def encode_done(kind: int, runs: Runs) -> bytes:
    return _DONE_HEAD.pack(kind, len(runs)) + b"".join(_RUN.pack(f, c) for f, c in runs)


def decode_done(payload: bytes) -> tuple[int, Runs]:
    kind, n = _DONE_HEAD.unpack_from(payload, 0)
    if len(payload) != _DONE_HEAD.size + n * _RUN.size or kind not in (DONE_ACKED, DONE_FAILED):
        raise ValueError("malformed done record")
    return kind, [_RUN.unpack_from(payload, _DONE_HEAD.size + k * _RUN.size) for k in range(n)]


def encode_probe(epoch: int, offset: str) -> bytes:
    return _PROBE_HEAD.pack(epoch) + offset.encode()


def decode_probe(payload: bytes) -> tuple[int, str]:
    (epoch,) = _PROBE_HEAD.unpack_from(payload, 0)
    return epoch, payload[_PROBE_HEAD.size:].decode()


# -- reading -------------------------------------------------------------------------------

def corrupt(path: str, offset: int, why: str) -> errors.JournalError:
    return errors.JournalError(
        f"producer journal file {path} is corrupt at offset {offset}: {why}; nothing was "
        "skipped. Move the journal directory aside to start afresh (its pending messages "
        "are then not delivered), or restore it from a copy",
        code="JOURNAL_CORRUPT", path=path, offset=offset)


def _valid_at(data: bytes | memoryview, pos: int, end: int) -> int:
    """The size of a valid record at ``pos`` (0: none)."""
    if pos + HSIZE > end:
        return 0
    crc, length, rtype = HEADER.unpack_from(data, pos)
    if rtype not in TYPES or length > end - pos - HSIZE:
        return 0
    if checksum(data[pos + HSIZE:pos + HSIZE + length], rtype) != crc:
        return 0
    return record_size(length)


def scan(data: bytes | memoryview, path: str, *, last: bool
         ) -> tuple[list[tuple[int, int, bytes]], int]:
    """Every record of one segment as (offset, type, payload), and where the next record
    would go. A torn tail of the last segment is dropped (see the module docstring);
    any other bad record raises :class:`JournalError` naming ``path`` and the offset."""
    end = len(data)
    records: list[tuple[int, int, bytes]] = []
    pos = 0
    while pos + HSIZE <= end:
        crc, length, rtype = HEADER.unpack_from(data, pos)
        if rtype == 0 and length == 0 and crc == 0:
            # The end of the records: everything after must be unwritten (zero) space,
            # except a torn record of the last segment (its payload is written first).
            rest = bytes(data[pos:]).rstrip(b"\0")
            if rest and (not last or _any_valid_after(data, pos, end)):
                raise corrupt(path, pos, "a record header is missing (zeros) before "
                              "written data")
            return records, pos
        size = _valid_at(data, pos, end)
        if not size:
            if last and not _any_valid_after(data, pos, end):
                return records, pos  # the torn tail: the record being written at the crash
            why = ("unknown record type" if rtype not in TYPES else
                   "record length runs past the end of the file"
                   if length > end - pos - HSIZE else "checksum mismatch")
            raise corrupt(path, pos, why)
        records.append((pos, rtype, bytes(data[pos + HSIZE:pos + HSIZE + length])))
        pos += size
    return records, pos


def _any_valid_after(data: bytes | memoryview, pos: int, end: int) -> bool:
    tail = bytes(data[pos:]).rstrip(b"\0")
    stop = pos + len(tail)
    q = pos + ALIGN
    while q < stop:
        if _valid_at(data, q, end):
            return True
        q += ALIGN
    return False


def list_segments(directory: str) -> list[tuple[int, str]]:
    """(number, path) of every segment file, in order."""
    found = []
    for name in os.listdir(directory):
        m = SEGMENT_RE.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    found.sort()
    return found
