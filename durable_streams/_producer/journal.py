"""The crash-safe journal of an :class:`~durable_streams.IdempotentProducer` (``journal=``).

It records the life of every message: accepted (``MSG``, before ``append()`` returns),
sealed into a batch with its (epoch, seq) (``SEAL``, before the batch's first send),
acknowledged or reported failed (``DONE``). A later producer opened on the same directory
replays what is pending: sealed batches with their journaled (epoch, seq, body), so that the
server deduplicates what it stored before the crash, then the unsealed messages. The format
is in ``journal_format.py``.

What survives what: a record is copied into a ``MAP_SHARED`` map of a preallocated segment
file, so it is the kernel's as soon as the copy ends, and survives the death of the process
(SIGKILL, the OOM killer, ``os._exit``, a crash in C code). With ``fsync=True`` every
``MSG`` and ``SEAL`` record is also flushed to the device (``msync``) before the call
returns, and each new segment file's directory entry too: that survives power loss and
kernel crashes, at the cost of one device flush per append.

One owner: an exclusive ``flock`` on ``LOCK`` (released by the kernel when the process
dies) keeps a second producer off the journal, in another process or the same one. After
``os.fork()`` the child's copy is switched off (:meth:`Journal.after_fork_in_child`): it
never writes to the parent's files.

Bounded: segments whose messages (and every earlier one's) are all resolved are deleted
(compaction). Appends wait while the segment files would exceed ``max_bytes``; the control
records (seal, done, probe) may go past it, so the senders can always make progress.

Every method except :meth:`Journal.open` is called with the producer lock held (the
journal has no lock of its own): records are written in the order of the calls.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import mmap
import os
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .. import errors
from . import journal_format as F
from .journal_replay import Replay, ReplayBuilder

if TYPE_CHECKING:
    from .batch import Batch

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("durable_streams.producer")

_MiB = 1024 * 1024
SEGMENT_BYTES = 8 * _MiB
RESERVE = 256 * 1024  # the end of each segment is kept for control records
_MSG_SEED = (F.T_MSG * 0x9E3779B1) & 0xFFFFFFFF
_PAGE = mmap.PAGESIZE


def identity_of(url: str) -> str:
    """The stream's identity on disk: scheme, host, port and path only (no user-info, no
    query, so no secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class _Segment:
    __slots__ = ("number", "path", "fd", "mm", "size", "pos", "limit", "first_index",
                 "unresolved")

    def __init__(self, number: int, path: str, first_index: int) -> None:
        self.number = number
        self.path = path
        self.fd = -1
        self.mm: mmap.mmap | None = None
        self.size = 0
        self.pos = 0
        self.limit = 0  # MSG records end before this; control records may use the rest
        self.first_index = first_index
        self.unresolved = 0

    def unmap(self) -> None:
        if self.mm is not None:
            with contextlib.suppress(Exception):
                self.mm.close()
            self.mm = None
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class Journal:
    """One open journal directory (see the module docstring)."""

    def __init__(self, directory: str, *, stream: str, producer_id: str,
                 max_bytes: int, fsync: bool = False,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.stream = stream
        self.producer_id = producer_id
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.reserve = min(RESERVE, segment_bytes // 4)
        self.segments: list[_Segment] = []
        self._firsts: list[int] = []  # first_index of each segment, for bisect
        self.total_bytes = 0
        self.next_index = 0
        self.epoch: int | None = None
        self.next_seq = 0
        self.probes: dict[int, str] = {}
        self.content_type: str | None = None
        #: where the stream's content type is read at each seal (set by attach)
        self.content_type_of: Callable[[], str | None] = lambda: None
        #: batch id -> (journal indexes, its message list when registered)
        self._live: dict[int, tuple[list[int], list[bytes]]] = {}
        self._take: tuple[list[int], list[bytes]] | None = None
        self._built: tuple[list[int], list[bytes]] | None = None
        self._remap: dict[int, int] = {}  # accumulator index -> journal index (replay)
        #: set when closing abandons pending messages: they stay journaled (no DONE)
        self.keep_pending = False
        self.disabled = False  # closed, or a forked child's copy
        self._lock_fd = -1
        self.replay = Replay()

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, stream: str, producer_id: str,
             max_bytes: int, fsync: bool = False, segment_bytes: int = SEGMENT_BYTES
             ) -> Journal:
        """Lock, check and read the journal in ``directory`` (created if missing)."""
        path = os.path.abspath(os.fspath(directory))
        j = cls(path, stream=identity_of(stream), producer_id=producer_id,
                max_bytes=max_bytes, fsync=fsync, segment_bytes=segment_bytes)
        j._lock()
        try:
            j._load()
        except BaseException:
            j.close()
            raise
        return j

    def _io_error(self, what: str, exc: OSError, path: str | None = None
                  ) -> errors.JournalError:
        return errors.JournalError(
            f"producer journal {self.directory}: cannot {what}: {exc.strerror or exc} "
            f"(errno {exc.errno}); check that the directory exists, is writable and its "
            "disk has room", code="JOURNAL_IO", path=path or self.directory)

    def _lock(self) -> None:
        if fcntl is None:  # pragma: no cover
            raise errors.JournalError("journal= needs a POSIX system (fcntl.flock)",
                                      code="JOURNAL_IO", path=self.directory)
        lock_path = os.path.join(self.directory, "LOCK")
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0),
                         0o600)
        except OSError as exc:
            raise self._io_error("open its LOCK file", exc, lock_path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = f" (process {int(os.pread(fd, 32, 0).split()[0])})"
            os.close(fd)
            raise errors.JournalError(
                f"producer journal {self.directory} is in use by another live producer"
                f"{holder}: one producer per journal, in any process; close that one "
                "first or give this producer its own journal directory",
                code="JOURNAL_LOCKED", path=self.directory) from None
        except OSError as exc:
            os.close(fd)
            raise self._io_error("lock its LOCK file", exc, lock_path) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _load(self) -> None:
        try:
            found = F.list_segments(self.directory)
        except OSError as exc:
            raise self._io_error("list its files", exc) from None
        builder = ReplayBuilder()
        expect_first: int | None = None
        for k, (number, path) in enumerate(found):
            last = k == len(found) - 1
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                raise self._io_error("read a segment", exc, path) from None
            records, end = F.scan(data, path, last=last)
            if not records:
                if last:  # made, but the process died before its first record
                    self._unlink(path)
                    continue
                raise F.corrupt(path, 0, "the segment has no header record")
            off, rtype, payload = records[0]
            if rtype != F.T_SEGMENT:
                raise F.corrupt(path, 0, "the first record is not a segment header")
            try:
                info = F.decode_segment(payload)
            except (ValueError, KeyError, TypeError) as exc:
                raise F.corrupt(path, 0, f"bad segment header ({exc})") from None
            self._check_identity(info, path)
            if info.number != number or (expect_first is not None
                                         and info.first_index != expect_first):
                raise F.corrupt(path, 0, "segments are not contiguous (a segment file "
                                "was removed or renamed by hand?)")
            seg = _Segment(number, path, info.first_index)
            seg.size = len(data)
            builder.segment(info)
            index = info.first_index
            for off, rtype, payload in records[1:]:
                try:
                    if rtype == F.T_MSG:
                        builder.message(index, payload, number)
                        index += 1
                    else:
                        builder.control(rtype, payload)
                except (ValueError, KeyError, UnicodeDecodeError) as exc:
                    raise F.corrupt(path, off, f"malformed record ({exc})") from None
            expect_first = index
            self.segments.append(seg)
            self.total_bytes += seg.size
            seg.pos = end
        self.replay = builder.result(expect_first or 0)
        r = self.replay
        self.next_index = r.next_index
        self.epoch, self.next_seq = r.epoch, r.next_seq
        self.content_type = r.content_type
        if r.epoch is not None and r.probe is not None:
            self.probes[r.epoch] = r.probe
        self._firsts = [s.first_index for s in self.segments]
        by_number = {s.number: s for s in self.segments}
        for number, n in builder.pending_per_segment.items():
            by_number[number].unresolved = n
        self._compact()
        if self.segments:
            self._reopen_last()
        else:
            self._new_segment(self.next_index, F.record_size(0))

    def _check_identity(self, info: F.SegmentInfo, path: str) -> None:
        if info.version != F.FORMAT:
            raise errors.JournalError(
                f"producer journal {self.directory} has format {info.version}, this "
                f"version of durable_streams reads format {F.FORMAT}",
                code="JOURNAL_FORMAT", path=path)
        if info.stream != self.stream or info.producer_id != self.producer_id:
            raise errors.JournalError(
                f"producer journal {self.directory} belongs to producer "
                f"{info.producer_id!r} of {info.stream}, not to producer "
                f"{self.producer_id!r} of {self.stream}: give each (stream, producer id) "
                "its own journal directory", code="JOURNAL_IDENTITY", path=path)

    def _reopen_last(self) -> None:
        seg = self.segments[-1]
        try:
            seg.fd = os.open(seg.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
            seg.mm = mmap.mmap(seg.fd, seg.size)
        except OSError as exc:
            seg.unmap()
            raise self._io_error("open its last segment for writing", exc, seg.path) from None
        mm = seg.mm
        # Zero what a torn record left after the last valid one, so the next record
        # written there can never be mistaken for garbage (or garbage for a record).
        tail = mm[seg.pos:].rstrip(b"\0")
        if tail:
            mm[seg.pos:seg.pos + len(tail)] = bytes(len(tail))
            self._sync(seg.pos, len(tail))
        seg.limit = max(seg.size - self.reserve, 0)

    # -- segments ------------------------------------------------------------------------
    def _new_segment(self, first_index: int, need: int) -> _Segment:
        number = self.segments[-1].number + 1 if self.segments else 0
        path = os.path.join(self.directory, F.segment_name(number))
        size = self._segment_size(need)
        seg = _Segment(number, path, first_index)
        try:
            seg.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL
                             | getattr(os, "O_CLOEXEC", 0), 0o600)
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(seg.fd, 0, size)
            else:  # pragma: no cover - macOS: write the zeros
                os.ftruncate(seg.fd, size)
                os.pwrite(seg.fd, bytes(size), 0)
            seg.mm = mmap.mmap(seg.fd, size)
        except OSError as exc:
            seg.unmap()
            self._unlink(path)
            raise self._io_error(f"make a new segment of {size} bytes", exc, path) from None
        seg.size = size
        seg.limit = max(size - self.reserve, 0)
        info = F.SegmentInfo(stream=self.stream, producer_id=self.producer_id, number=number,
                             first_index=first_index, epoch=self.epoch,
                             next_seq=self.next_seq,
                             probe=None if self.epoch is None else self.probes.get(self.epoch),
                             content_type=self.content_type)
        old = self.segments[-1] if self.segments else None
        self.segments.append(seg)
        self._firsts.append(first_index)
        self.total_bytes += size
        self._write(F.T_SEGMENT, F.encode_segment(info), sync=True)
        if self.fsync:
            self._sync_dir()
        if old is not None:
            old.unmap()  # (its unused tail stays zero)
        return seg

    def _sync_dir(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self._io_error("sync its directory", exc) from None

    def _unlink(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            try:
                os.unlink(path)
            except OSError as exc:
                log.warning("producer journal: could not remove %s: %s", path, exc)

    def _compact(self) -> None:
        """Delete the oldest segments while they (and all before them) are resolved."""
        segs = self.segments
        while len(segs) > 1 and segs[0].unresolved <= 0:
            seg = segs.pop(0)
            self._firsts.pop(0)
            seg.unmap()
            self._unlink(seg.path)
            self.total_bytes -= seg.size

    def _sync(self, pos: int, size: int) -> None:
        if not self.fsync:
            return
        mm = self.segments[-1].mm
        assert mm is not None
        start = pos - pos % _PAGE
        try:
            mm.flush(start, min(pos + size, len(mm)) - start)
        except OSError as exc:
            raise self._io_error("flush a record to disk", exc) from None

    # -- writing -------------------------------------------------------------------------
    def fits(self, n: int) -> bool:
        """Can a message of ``n`` bytes be journaled now without passing ``max_bytes``?"""
        seg = self.segments[-1]
        size = (F.HSIZE + n + 7) & ~7
        if seg.pos + size <= seg.limit:
            return True
        return self.total_bytes + self._segment_size(size) <= self.max_bytes

    def _segment_size(self, need: int) -> int:
        size = max(self.segment_bytes, need + self.reserve + 4096)
        return (size + _PAGE - 1) // _PAGE * _PAGE

    def add(self, raw: bytes) -> bool:
        """Journal one accepted message; False (nothing written) when it does not fit
        under ``max_bytes``. Raises :class:`JournalError` (and nothing was journaled) when
        no segment can be made."""
        n = len(raw)
        size = (F.HSIZE + n + 7) & ~7
        seg = self.segments[-1]
        pos = seg.pos
        if pos + size > seg.limit or self.disabled:
            if self.disabled:
                raise errors.JournalError(f"producer journal {self.directory} is closed",
                                          code="JOURNAL_CLOSED", path=self.directory)
            if not self.fits(n):
                return False
            seg = self._new_segment(self.next_index, size)
            pos = seg.pos
        mm = seg.mm
        assert mm is not None
        mm[pos + F.HSIZE:pos + F.HSIZE + n] = raw
        F.HEADER.pack_into(mm, pos, zlib.crc32(raw, ((n << 3) & 0xFFFFFFFF) ^ _MSG_SEED),
                           n, F.T_MSG)
        seg.pos = pos + size
        seg.unresolved += 1
        self.next_index += 1
        if self.fsync:
            self._sync(pos, size)
        return True

    def _write(self, rtype: int, payload: bytes, *, sync: bool = False) -> None:
        """A control record: may use the reserve, or a new segment beyond ``max_bytes``."""
        size = F.record_size(len(payload))
        seg = self.segments[-1]
        if seg.pos + size > seg.size:
            seg = self._new_segment(self.next_index, size)
        pos = seg.pos
        mm = seg.mm
        assert mm is not None
        mm[pos + F.HSIZE:pos + F.HSIZE + len(payload)] = payload
        F.HEADER.pack_into(mm, pos, F.checksum(payload, rtype), len(payload), rtype)
        seg.pos = pos + size
        if sync:
            self._sync(pos, size)

    # -- the life of a batch (hooks called by the producer's parts, lock held) -------------
    def taken(self, first: int, messages: list[bytes]) -> None:
        """The accumulator took messages ``first``.. to build one batch."""
        if self.disabled:
            return
        self._resolve_stale_take()
        if self._remap:
            idx = [self._remap.pop(first + i, first + i) for i in range(len(messages))]
        else:
            idx = list(range(first, first + len(messages)))
        self._take = (idx, messages)

    def _resolve_stale_take(self) -> None:
        # A take that became no batch (its messages were all reported failed) and was not
        # told so by built([]).
        self._built = None
        if self._take is not None:
            idx, _ = self._take
            self._take = None
            self._done(F.DONE_FAILED, idx)

    def built(self, kept: list[bytes] | None) -> None:
        """The last take was built into a batch of ``kept`` (None: all of it; a subsequence:
        the invalid messages were left out and reported failed; empty: no batch)."""
        if self.disabled or self._take is None:
            return
        idx, taken = self._take
        self._take = None
        if kept is None or kept is taken or len(kept) == len(taken):
            self._built = (idx, taken if kept is None else kept)
            return
        keep, dropped = _match(idx, taken, kept)
        self._built = (keep, kept) if keep else None
        self._done(F.DONE_FAILED, dropped)

    def admitted(self, batch: Batch) -> None:
        """The batch just built is registered (sealed now, or parked until renumbered)."""
        if self.disabled:
            return
        if self._take is not None:  # built() was not called: the whole take
            self.built(None)
        if self._built is not None:
            self._live[batch.id] = (self._built[0], batch.messages)
            self._built = None

    def adopt(self, batch: Batch, indexes: list[int]) -> None:
        """A batch replayed from the journal (already sealed)."""
        self._live[batch.id] = (indexes, batch.messages)

    def sealed(self, batches: Sequence[Batch], json_body: bool) -> None:
        """These batches got their (epoch, seq): journaled (one record) before any send.
        Raises :class:`JournalError` if the record cannot be written."""
        if self.disabled or not batches:
            return
        epoch = batches[0].epoch
        entries = []
        for b in batches:
            live = self._live.get(b.id)
            if live is None:
                continue
            entries.append(F.SealEntry(b.seq, json_body, tuple(F.to_runs(live[0]))))
        if not entries:
            return
        ct = self.content_type_of()
        if ct and ct != self.content_type:
            self._write(F.T_META, json.dumps({"content_type": ct}).encode())
            self.content_type = ct
        self._write(F.T_SEAL, F.encode_seal(epoch, entries), sync=True)
        if self.epoch != epoch:
            self.epoch, self.next_seq = epoch, 0
        self.next_seq = max(self.next_seq, max(e.seq for e in entries) + 1)

    def resealed(self, batch: Batch, json_body: bool) -> None:
        """The batch's invalid JSON messages were split off (same epoch and seq)."""
        live = self._live.get(batch.id)
        if self.disabled or live is None:
            return
        keep, dropped = _match(live[0], live[1], batch.messages)
        self._live[batch.id] = (keep, batch.messages)
        self._write(F.T_SEAL, F.encode_seal(batch.epoch, [
            F.SealEntry(batch.seq, json_body, tuple(F.to_runs(keep)))]), sync=True)
        self._done(F.DONE_FAILED, dropped)

    def resolved(self, batch: Batch, *, acked: bool) -> None:
        """The batch was acknowledged, or reported failed."""
        if self.disabled:
            return
        if not acked and self.keep_pending:
            self._live.pop(batch.id, None)  # abandoned by close(): stays journaled
            return
        live = self._live.pop(batch.id, None)
        if live is not None:
            self._done(F.DONE_ACKED if acked else F.DONE_FAILED, live[0])

    def dropped(self, first: int, count: int) -> None:
        """The accumulator's buffer (``first``.., ``count`` messages) was reported failed."""
        if self.disabled or self.keep_pending or not count:
            return
        idx = [self._remap.pop(first + i, first + i) for i in range(count)]
        self._done(F.DONE_FAILED, idx)

    def probed(self, epoch: int, offset: str) -> None:
        """The stream's tail before ``epoch``'s first send (where to look for our batches)."""
        if self.disabled or self.probes.get(epoch) == offset:
            return
        self.probes[epoch] = offset
        for old in sorted(self.probes)[:-4]:
            del self.probes[old]
        try:
            self._write(F.T_PROBE, F.encode_probe(epoch, offset))
        except errors.JournalError as exc:  # only costs a later check its start point
            log.warning("producer journal: could not record a tail probe: %s", exc)

    def _done(self, kind: int, indexes: list[int]) -> None:
        if not indexes:
            return
        indexes = sorted(indexes)
        try:
            self._write(F.T_DONE, F.encode_done(kind, F.to_runs(indexes)))
        except errors.JournalError as exc:
            # Only costs a resend later (the server deduplicates); the records that
            # protect messages (MSG, SEAL) raise instead.
            log.warning("producer journal: could not record %d resolved message(s): %s",
                        len(indexes), exc)
            return
        firsts = self._firsts
        segs = self.segments
        for first, count in F.to_runs(indexes):
            i = first
            end = first + count
            while i < end:
                k = bisect.bisect_right(firsts, i) - 1
                if k < 0:  # compacted already
                    i = firsts[0] if firsts else end
                    continue
                stop = firsts[k + 1] if k + 1 < len(firsts) else end
                n = min(end, stop) - i
                segs[k].unresolved -= n
                i += n
        self._compact()

    # -- end -------------------------------------------------------------------------------
    def set_remap(self, mapping: dict[int, int]) -> None:
        self._remap = dict(mapping)

    def close(self) -> None:
        """Release the files and the lock (idempotent)."""
        self.disabled = True
        for seg in self.segments:
            seg.unmap()
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def after_fork_in_child(self) -> None:
        """The forked child never touches the parent's journal: no write, no unlock (the
        lock belongs to the open file, shared with the parent: closing our copy of the
        descriptor leaves it held)."""
        self.disabled = True
        for seg in self.segments:
            seg.mm = None  # never write through the inherited map
            if seg.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(seg.fd)
                seg.fd = -1
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)
            self._lock_fd = -1


def _match(idx: list[int], taken: Sequence[bytes], kept: Iterable[bytes]
           ) -> tuple[list[int], list[int]]:
    """Split ``idx`` (the indexes of ``taken``) into those of ``kept`` (a subsequence of
    ``taken``, same objects in order) and the others. Equal messages are equally valid,
    so matching by identity in order cannot mix up a valid and an invalid one."""
    keep: list[int] = []
    dropped: list[int] = []
    it = iter(kept)
    want = next(it, None)
    for i, m in zip(idx, taken, strict=False):
        if want is not None and m is want:
            keep.append(i)
            want = next(it, None)
        else:
            dropped.append(i)
    return keep, dropped

