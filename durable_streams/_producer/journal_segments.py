"""The files of a producer journal: its ``LOCK``, its segments, the mapped tail where records
are written, and compaction (README "Crash-safe journal"; the format is in
``journal_format.py``, what the records mean in ``journal.py``).

A record is copied into a ``MAP_SHARED`` map of a preallocated segment file, so it is the
kernel's as soon as the copy ends and survives the death of the process. With ``fsync`` every
``MSG`` record, and each record written with ``sync=True``, is also flushed to the device
(``msync``) before the call returns, and each new segment file's directory entry too.

Bounded: segments whose messages (and every earlier one's) are all resolved are deleted.
Messages are refused (:meth:`Segments.add` returns False) while the files would exceed
``max_bytes``; control records may go past it, so the senders can always make progress.

The appender's fast path (:meth:`Segments.add`) is a handful of operations per message: no
per-message bookkeeping besides the next index; each segment's count of resolved messages
is kept by runs (:meth:`Segments.resolve`). Called with the producer lock held, like the
rest of the journal.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import mmap
import os
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import errors
from . import journal_format as F

if TYPE_CHECKING:
    from .journal_replay import ReplayBuilder

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("durable_streams.producer")

_MiB = 1024 * 1024
SEGMENT_BYTES = 8 * _MiB
RESERVE = 256 * 1024  # the end of each segment is kept for control records
_PAGE = mmap.PAGESIZE
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# The fast path's constants, bound once (see journal_format for what they are).
_HSIZE = F.HSIZE
_T_MSG = F.T_MSG
_MSG_SEED = F.seed(0, F.T_MSG)  # seed(n, T_MSG) is ((n << 3) & 0xFFFFFFFF) ^ _MSG_SEED
_pack_into = F.HEADER.pack_into
_crc32 = zlib.crc32


class Segment:
    """One segment file: where its messages start, and how many of them are resolved."""

    __slots__ = ("number", "path", "fd", "mm", "size", "first_index", "resolved")

    def __init__(self, number: int, path: str, first_index: int) -> None:
        self.number = number
        self.path = path
        self.fd = -1
        self.mm: mmap.mmap | None = None  # mapped while it is the segment written to
        self.size = 0
        self.first_index = first_index
        self.resolved = 0

    def unmap(self) -> None:
        if self.mm is not None:
            with contextlib.suppress(Exception):
                self.mm.close()
            self.mm = None
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


class Segments:
    """The segment files of one journal directory, and the position the next record takes."""

    def __init__(self, directory: str, *, max_bytes: int, fsync: bool, segment_bytes: int,
                 header: Callable[[int, int], bytes]) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self.reserve = min(RESERVE, segment_bytes // 4) // F.ALIGN * F.ALIGN
        #: the payload of a new segment's header record, given (number, first index)
        self.header = header
        self.segments: list[Segment] = []
        self._firsts: list[int] = []  # first_index of each segment, for bisect
        self.total_bytes = 0
        self.next_index = 0  # the index the next message gets
        # The segment written to (the last one): its map, where the next record goes,
        # where MSG records must end (the rest is the control records' reserve), and where
        # the fast path of add() must end: msg_end, or -1 (closed, or fsync: the slow path).
        self.mm: mmap.mmap | None = None
        self.pos = 0
        self.msg_end = 0
        self.fast_end = -1
        self.disabled = False  # closed, or a forked child's copy
        self._lock_fd = -1

    def io_error(self, what: str, exc: OSError, path: str | None = None
                 ) -> errors.JournalError:
        return errors.JournalError(
            f"producer journal {self.directory}: cannot {what}: {exc.strerror or exc} "
            f"(errno {exc.errno}); check that the directory exists, is writable and its "
            "disk has room", code="JOURNAL_IO", path=path or self.directory)

    # -- opening -------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the directory (created if missing) for this process: an exclusive flock."""
        if fcntl is None:  # pragma: no cover
            raise errors.JournalError("journal= needs a POSIX system (fcntl.flock)",
                                      code="JOURNAL_IO", path=self.directory)
        lock_path = os.path.join(self.directory, "LOCK")
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o600)
        except OSError as exc:
            raise self.io_error("open its LOCK file", exc, lock_path) from None
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
            raise self.io_error("lock its LOCK file", exc, lock_path) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def load(self, builder: ReplayBuilder,
             check: Callable[[F.SegmentInfo, str], None]) -> int:
        """Read every segment into ``builder`` (``check`` vets each header); returns the
        index the next message gets. Then :meth:`resume`."""
        try:
            found = F.list_segments(self.directory)
        except OSError as exc:
            raise self.io_error("list its files", exc) from None
        expect_first: int | None = None
        for k, (number, path) in enumerate(found):
            last = k == len(found) - 1
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
            except OSError as exc:
                raise self.io_error("read a segment", exc, path) from None
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
            check(info, path)
            if info.number != number or (expect_first is not None
                                         and info.first_index != expect_first):
                raise F.corrupt(path, 0, "segments are not contiguous (a segment file "
                                "was removed or renamed by hand?)")
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
            seg = Segment(number, path, info.first_index)
            seg.size = len(data)
            self.segments.append(seg)
            self._firsts.append(info.first_index)
            self.total_bytes += seg.size
            self.pos = end
        self.next_index = expect_first or 0
        return self.next_index

    def resume(self, pending_per_segment: dict[int, int]) -> None:
        """After :meth:`load` (and the replay): count what is resolved, compact, and open
        the last segment for writing (or make the first)."""
        for k, seg in enumerate(self.segments):
            pending = pending_per_segment.get(seg.number, 0)
            seg.resolved = self._count(k) - pending
        self._compact()
        if self.segments:
            self._reopen_last()
        else:
            self.pos = 0
            self._new_segment(self.next_index, F.record_size(0))

    def _count(self, k: int) -> int:
        """How many messages segment ``k`` holds (the last: so far)."""
        end = self._firsts[k + 1] if k + 1 < len(self._firsts) else self.next_index
        return end - self._firsts[k]

    def _reopen_last(self) -> None:
        seg = self.segments[-1]
        try:
            seg.fd = os.open(seg.path, os.O_RDWR | _CLOEXEC)
            seg.mm = mmap.mmap(seg.fd, seg.size)
        except OSError as exc:
            seg.unmap()
            raise self.io_error("open its last segment for writing", exc, seg.path) from None
        mm = self.mm = seg.mm
        assert mm is not None
        # Zero what a torn record left after the last valid one, so the next record
        # written there can never be mistaken for garbage (or garbage for a record).
        tail = mm[self.pos:].rstrip(b"\0")
        if tail:
            mm[self.pos:self.pos + len(tail)] = bytes(len(tail))
            self._sync(self.pos, len(tail))
        self._set_ends(seg.size)

    def _set_ends(self, size: int) -> None:
        self.msg_end = max(size - self.reserve, 0)
        self.fast_end = -1 if self.fsync or self.disabled else self.msg_end

    # -- segments ------------------------------------------------------------------------
    def _new_segment(self, first_index: int, need: int) -> None:
        """Make the next segment (room for a record of ``need`` bytes) and write to it."""
        number = self.segments[-1].number + 1 if self.segments else 0
        path = os.path.join(self.directory, F.segment_name(number))
        size = self._segment_size(need)
        seg = Segment(number, path, first_index)
        try:
            seg.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(seg.fd, 0, size)
            else:  # pragma: no cover - macOS: write the zeros
                os.ftruncate(seg.fd, size)
                os.pwrite(seg.fd, bytes(size), 0)
            seg.mm = mmap.mmap(seg.fd, size)
        except OSError as exc:
            seg.unmap()
            self._unlink(path)
            raise self.io_error(f"make a new segment of {size} bytes", exc, path) from None
        seg.size = size
        old = self.segments[-1] if self.segments else None
        self.segments.append(seg)
        self._firsts.append(first_index)
        self.total_bytes += size
        self.mm, self.pos = seg.mm, 0
        self._set_ends(size)
        self._put(F.T_SEGMENT, self.header(number, first_index), True)
        if self.fsync:
            self._sync_dir()
        if old is not None:
            old.unmap()  # (its unused tail stays zero)

    def _segment_size(self, need: int) -> int:
        size = max(self.segment_bytes, need + self.reserve + 4096)
        return (size + _PAGE - 1) // _PAGE * _PAGE

    def _sync_dir(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise self.io_error("sync its directory", exc) from None

    def _unlink(self, path: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            try:
                os.unlink(path)
            except OSError as exc:
                log.warning("producer journal: could not remove %s: %s", path, exc)

    def resolve(self, runs: F.Runs) -> None:
        """Count these (first, count) runs of messages as resolved, then compact."""
        firsts = self._firsts
        segs = self.segments
        for first, count in runs:
            i = first
            end = first + count
            while i < end:
                k = bisect.bisect_right(firsts, i) - 1
                if k < 0:  # compacted already
                    i = firsts[0] if firsts else end
                    continue
                stop = firsts[k + 1] if k + 1 < len(firsts) else end
                n = min(end, stop) - i
                segs[k].resolved += n
                i += n
        self._compact()

    def _compact(self) -> None:
        """Delete the oldest segments while they (and all before them) are resolved."""
        segs = self.segments
        while len(segs) > 1 and segs[0].resolved >= self._firsts[1] - self._firsts[0]:
            seg = segs.pop(0)
            self._firsts.pop(0)
            seg.unmap()
            self._unlink(seg.path)
            self.total_bytes -= seg.size

    def _sync(self, pos: int, size: int) -> None:
        if not self.fsync:
            return
        mm = self.mm
        assert mm is not None
        start = pos - pos % _PAGE
        try:
            mm.flush(start, min(pos + size, len(mm)) - start)
        except OSError as exc:
            raise self.io_error("flush a record to disk", exc) from None

    # -- writing -------------------------------------------------------------------------
    def fits(self, n: int) -> bool:
        """Can a message of ``n`` bytes be journaled now without passing ``max_bytes``?"""
        size = F.record_size(n)
        if self.pos + size <= self.msg_end:
            return True
        return self.total_bytes + self._segment_size(size) <= self.max_bytes

    def add(self, raw: bytes) -> bool:
        """Journal one accepted message; False (nothing written) when it does not fit
        under ``max_bytes``. Raises :class:`JournalError` (and nothing was journaled) when
        no segment can be made, or the journal is closed."""
        n = len(raw)
        pos = self.pos
        end = pos + _HSIZE + n
        if end > self.fast_end:  # a new segment, fsync, closed (ends are 8-aligned)
            return self._add_slow(raw)
        mm = self.mm
        assert mm is not None
        mm[pos + _HSIZE:end] = raw  # the payload first, the header last
        _pack_into(mm, pos, _crc32(raw, ((n << 3) & 0xFFFFFFFF) ^ _MSG_SEED), n, _T_MSG)
        self.pos = (end + 7) & -8
        self.next_index += 1
        return True

    def _add_slow(self, raw: bytes) -> bool:
        if self.disabled:
            raise errors.JournalError(f"producer journal {self.directory} is closed",
                                      code="JOURNAL_CLOSED", path=self.directory)
        size = F.record_size(len(raw))
        if self.pos + size > self.msg_end:
            if not self.fits(len(raw)):
                return False
            self._new_segment(self.next_index, size)
        self._put(F.T_MSG, raw, True)
        self.next_index += 1
        return True

    def write(self, rtype: int, payload: bytes, *, sync: bool = False) -> None:
        """A control record: may use the reserve, or a new segment beyond ``max_bytes``."""
        size = F.record_size(len(payload))
        if self.pos + size > self.segments[-1].size:
            self._new_segment(self.next_index, size)
        self._put(rtype, payload, sync)

    def _put(self, rtype: int, payload: bytes, sync: bool) -> None:
        pos = self.pos
        mm = self.mm
        assert mm is not None
        n = len(payload)
        mm[pos + _HSIZE:pos + _HSIZE + n] = payload
        _pack_into(mm, pos, F.checksum(payload, rtype), n, rtype)
        self.pos = pos + F.record_size(n)
        if sync:
            self._sync(pos, self.pos - pos)

    # -- end -------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the files and the lock (idempotent)."""
        self.disabled = True
        self.fast_end = -1
        self.mm = None
        for seg in self.segments:
            seg.unmap()
        if self._lock_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    def after_fork_in_child(self) -> None:
        """Never write to the parent's files, never unlock (the lock belongs to the open
        file, shared with the parent: closing our copy of the descriptor leaves it held)."""
        self.disabled = True
        self.fast_end = -1
        self.mm = None
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
