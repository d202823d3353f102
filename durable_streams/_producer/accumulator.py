"""The producer's buffer: messages waiting to be sealed into batches, and the byte budget.

Every field is guarded by the producer lock (passed in; the accumulator has no lock of its
own). ``room`` is ``max_buffer_bytes`` minus the bytes accepted and not yet acknowledged or
failed (buffered *and* in flight): ``append`` blocks while it would go negative. Methods that
need the time take ``now``; ``append`` reads the injected clock only when the buffer was empty.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import errors
from .reporter import copy_error

if TYPE_CHECKING:
    from .journal import Journal


class Refusal(enum.IntEnum):
    """Why ``append()`` refuses new messages, in order of precedence (see
    :meth:`Accumulator.refuse`)."""

    CLOSED = 1  # close(): ProducerClosedError
    STREAM_CLOSED = 2  # close_stream(): StreamClosedError
    STOPPED = 3  # the sequencer stopped for good (fenced, stream gone, close gave up...)
    FORKED = 4  # this is a forked child's copy: ProducerForkedError


class Accumulator:
    def __init__(self, lock: threading.Lock, *, url: str, where: str, max_batch_bytes: int,
                 max_batch_items: int, max_buffer_bytes: int, linger: float, max_block: float,
                 wake: Callable[[], None], clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = lock
        self.space = threading.Condition(lock)  # appenders wait here for room
        self.url = url
        self.where = where
        self.max_batch_bytes = max_batch_bytes
        self.max_batch_items = max_batch_items  # 0: no limit
        self.capacity = max_buffer_bytes
        self.linger = linger
        self.max_block = max_block
        #: called (lock held) when the buffer becomes non-empty or a batch becomes full:
        #: starts the senders if needed and wakes them
        self.wake = wake
        self.clock = clock
        self.buf: list[bytes] = []
        self.nbytes = 0
        self.first_ts = 0.0  # when the oldest buffered message arrived
        self.start = 0  # index of the first buffered message
        self.seal_upto = 0  # messages with index < this must be sealed without lingering
        self.sealing_from = -1  # first index of messages being built into a batch, or -1
        self.room = max_buffer_bytes
        #: when set, append() raises (a copy of) it: closed, fenced, stream closed, forked.
        #: Written only by :meth:`refuse` (read without a method call on the hot path).
        self.refusal: errors.DurableStreamError | None = None
        self._refused_for: Refusal | None = None
        #: the crash-safe journal (``journal=``), or None: every accepted message is
        #: journaled before append() returns, and takes/drops are reported to it
        self.journal: Journal | None = None

    def refuse(self, err: errors.DurableStreamError, why: Refusal) -> None:
        """(lock held) From now on ``append()`` raises (a copy of) ``err``; appenders blocked
        on a full buffer are woken to raise it too. The one writer of :attr:`refusal`.

        Rule: a refusal replaces the current one only if its ``why`` ranks higher (see
        :class:`Refusal`); with an equal rank the first one stays. So a fatal error during
        ``close()``'s flush is what later appends see, a closed stream beats a closed
        producer, and a forked child's copy always says it was forked."""
        if self._refused_for is not None and why <= self._refused_for:
            return
        self.refusal, self._refused_for = err, why
        self.space.notify_all()

    # -- the hot path ------------------------------------------------------------------------
    def append(self, data: str | bytes | bytearray | memoryview) -> None:
        """Queue one message: what ``IdempotentProducer.append`` documents (its docstring
        says what is accepted and raised). ``IdempotentProducer`` binds its instances'
        ``append`` straight to this method unless a subclass overrides ``append``, so the
        hot path costs one Python call."""
        t = type(data)
        if t is str:
            try:
                raw = data.encode()  # type: ignore[union-attr]
            except UnicodeEncodeError as exc:
                raise ValueError(f"message is not encodable as UTF-8: {exc}") from None
        elif t is bytes:
            raw = data  # type: ignore[assignment,unused-ignore]
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        elif isinstance(data, str):  # a str subclass (StrEnum member, numpy.str_...)
            try:
                raw = str.encode(data)
            except UnicodeEncodeError as exc:
                raise ValueError(f"message is not encodable as UTF-8: {exc}") from None
        else:
            raise TypeError(
                f"IdempotentProducer.append() takes str or bytes, not {t.__name__}; "
                "serialise objects first, e.g. producer.append(json.dumps(obj))"
            )
        n = len(raw)
        if not n or n > self.max_batch_bytes:
            self._reject_size(n)
        lock = self._lock
        contended = not lock.acquire(False)
        if contended:
            lock.acquire()
        try:
            if self.refusal is not None:
                raise copy_error(self.refusal)
            room = self.room - n
            journal = self.journal
            if journal is not None:
                if room < 0 or not journal.add(raw):  # add() wrote it if it fit
                    room = self._room_for(raw, room)
            elif room < 0:
                room = self._room_for(raw, room)
            self.room = room
            buf = self.buf
            buf.append(raw)
            size = self.nbytes + n
            self.nbytes = size
            if len(buf) == 1:
                self.first_ts = self.clock()
                self.wake()
            elif size >= self.max_batch_bytes > size - n:
                self.wake()  # the open batch just became full
        finally:
            lock.release()
        if contended:
            # Several threads queued on the lock: let one of them take it now instead of
            # re-taking it at once, which would keep a lock convoy going (each append then
            # costs a futile wake-up of every waiter).
            time.sleep(0)

    def _reject_size(self, n: int) -> None:
        if not n:
            raise ValueError("cannot append an empty message (the server rejects empty appends)")
        raise ValueError(
            f"message of {n} bytes is larger than max_batch_bytes ({self.max_batch_bytes}); "
            "raise max_batch_bytes or split the message"
        )

    def _room_for(self, raw: bytes, room: int) -> int:
        """(lock held) Wait for buffer room and journal space, then journal ``raw``: a
        message is accepted only once journaled (a JournalError: it is not accepted).
        ``append`` journals directly when there is room (one call on its fast path)."""
        journal = self.journal
        if room < 0:
            room = self._wait_for_space(len(raw))
        if journal is not None and not journal.add(raw):  # add() wrote it if it fits
            room = self._wait_for_space(len(raw))
            if not journal.add(raw):  # pragma: no cover - the wait ends only when it fits
                raise errors.BufferFullError(
                    f"producer journal {journal.directory} is full", url=self.url)
        return room

    def _full(self, n: int) -> bool:
        journal = self.journal
        return ((self.room < n and self.room < self.capacity)
                or (journal is not None and not journal.fits(n)))

    def _wait_for_space(self, n: int) -> int:
        """Block until ``n`` bytes fit (or nothing is pending); return the room left after."""
        deadline = self.clock() + self.max_block
        while self._full(n):
            if self.refusal is not None:
                raise copy_error(self.refusal)
            remaining = deadline - self.clock()
            if remaining <= 0 and self.journal is not None and not self.journal.fits(n):
                j = self.journal
                raise errors.BufferFullError(
                    f"producer journal {j.directory} is full ({j.files.total_bytes} bytes "
                    f"of journal_max_bytes={j.files.max_bytes}) and no acknowledgement freed "
                    f"space within max_block_ms={self.max_block * 1000:.0f}; the server may "
                    "be down or slower than the appends", url=self.url)
            if remaining <= 0:
                raise errors.BufferFullError(
                    f"producer buffer for {self.where} is full "
                    f"({self.capacity - self.room} of {self.capacity} bytes unacknowledged) "
                    f"and no room was freed within max_block_ms={self.max_block * 1000:.0f}; "
                    "the server may be down or slower than the appends",
                    url=self.url,
                )
            self.seal_upto = self.appended  # send what we have: frees space soonest
            self.wake()
            self.space.wait(remaining)
        if self.refusal is not None:  # refused while waiting, even if room came with it
            raise copy_error(self.refusal)
        return self.room - n

    # -- state -------------------------------------------------------------------------------
    @property
    def appended(self) -> int:
        """Messages accepted so far; also the index the next one will get."""
        return self.start + len(self.buf)

    @property
    def pending_bytes(self) -> int:
        return self.capacity - self.room

    def due_in(self, now: float, force: bool = False) -> float:
        """Seconds until the open batch must be sealed (<= 0: now; ``force``: now)."""
        if (force or self.start < self.seal_upto or self.nbytes >= self.max_batch_bytes
                or (self.max_batch_items and len(self.buf) >= self.max_batch_items)):
            return 0.0
        return self.first_ts + self.linger - now

    def seal_all(self, upto: int) -> None:
        """Seal every message with index < ``upto`` without lingering (flush)."""
        if upto > self.seal_upto:
            self.seal_upto = upto

    def take(self, now: float, force: bool = False) -> tuple[list[bytes], int, int] | None:
        """Take up to one batch's messages if due: (messages, bytes, first index)."""
        buf = self.buf
        if not buf or self.due_in(now, force) > 0:
            return None  # another sender took the due messages first
        limit = self.max_batch_bytes
        max_items = self.max_batch_items or len(buf)
        if self.nbytes <= limit and len(buf) <= max_items:
            total, count = self.nbytes, len(buf)  # the whole buffer fits
        else:
            total = count = 0
            for m in buf:
                if count >= max_items or (count and total + len(m) > limit):
                    break
                total += len(m)
                count += 1
        if count == len(buf):
            messages = buf
            self.buf = []
        else:
            messages = buf[:count]
            del buf[:count]
        first = self.start
        if self.journal is not None:
            self.journal.taken(first, messages)
        self.sealing_from = first
        self.start += count
        self.nbytes -= total
        if self.buf:
            self.first_ts = min(self.first_ts, now)
        return messages, total, first

    def sealed(self, kept: list[bytes] | None = None) -> None:
        """The messages taken last are built into a batch of ``kept`` (None: all of them;
        the others were reported failed; empty: no batch)."""
        self.sealing_from = -1
        if self.journal is not None:
            self.journal.built(kept)

    def take_all(self) -> tuple[list[bytes], int]:
        """Empty the buffer (to fail its messages): (messages, bytes)."""
        messages, self.buf = self.buf, []
        nbytes, self.nbytes = self.nbytes, 0
        if self.journal is not None:
            self.journal.dropped(self.start, len(messages))
        self.start += len(messages)
        return messages, nbytes

    def release(self, nbytes: int) -> None:
        """``nbytes`` were acknowledged or failed: room for new appends."""
        self.room += nbytes
        self.space.notify_all()

    def unresolved_below(self, target: int) -> bool:
        """Some buffered (or being sealed) message has an index < ``target``."""
        if self.buf and self.start < target:
            return True
        return 0 <= self.sealing_from < target

    def count_below(self, target: int) -> int:
        return max(0, min(target - self.start, len(self.buf)))

    def after_fork_in_child(self, lock: threading.Lock) -> None:
        """A forked child: the parent's lock may be held by a thread that does not exist."""
        self._lock = lock
        self.space = threading.Condition(lock)

    def restore_pending(self, journal: Journal, start: int, messages: list[bytes],
                        sealed_bytes: int, now: float) -> None:
        """Take over a reopened journal (``journal_attach.attach``): its unsealed
        ``messages`` (indexes from ``start``) are buffered again, to be sealed at once
        without lingering; they and the ``sealed_bytes`` of its pending sealed batches
        count against the buffer (they may exceed it: appends then wait)."""
        self.journal = journal
        self.start = start
        self.buf = list(messages)
        self.nbytes = sum(len(m) for m in self.buf)
        self.first_ts = now
        self.seal_upto = start + len(self.buf)
        self.room -= sealed_bytes + self.nbytes
