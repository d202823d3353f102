"""The log handler's records that cannot be sent right away: kept in a bounded
:class:`Backlog` until the stream is available, or dropped: counted by :class:`Drops` and
said on stderr (:func:`warn`; not through logging, which could come back to the handler),
never silently and without flooding it.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections import deque

from ._redact import redact_text

#: At most one stderr line per this many seconds about records the producer failed.
REPORT_INTERVAL = 10.0


def warn(message: str) -> None:
    """One line on stderr, like :meth:`logging.Handler.handleError` (secrets redacted)."""
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(f"durable_streams.logging: {redact_text(' '.join(message.split()))}\n")
        stream.flush()
    except (OSError, ValueError):
        pass


class Backlog:
    """Records kept while the stream is not available yet: at most ``limit`` bytes, none
    larger than ``max_record``. Guarded by the handler's lock (every method is called with
    it held)."""

    def __init__(self, limit: int, max_record: int) -> None:
        self.limit = limit
        self.max_record = max_record
        self.records: deque[str] = deque()
        self.nbytes = 0

    def keep(self, text: str, last_error: str | None) -> str | None:
        """Keep ``text``; or say why it cannot be kept (it is then dropped)."""
        size = len(text.encode("utf-8", "surrogatepass")) + 1
        if size - 1 > self.max_record:
            return (f"a record of {size - 1} bytes is larger than max_batch_bytes "
                    f"({self.max_record})")
        if self.nbytes + size > self.limit:
            why = last_error or "it is being checked"
            return (f"the stream is not available yet ({why}) and the records kept "
                    f"meanwhile fill max_buffer_bytes ({self.limit})")
        self.records.append(text)
        self.nbytes += size
        return None

    def take_all(self) -> list[str]:
        """Every kept record, oldest first; the backlog is empty afterwards."""
        records, self.records, self.nbytes = list(self.records), deque(), 0
        return records

    def fresh(self) -> Backlog:
        """An empty backlog with the same bounds (a forked child's)."""
        return Backlog(self.limit, self.max_record)


class Drops:
    """How many records were not and will not be delivered, and when to say so: one line
    per run of refused records, at most one per :data:`REPORT_INTERVAL` about failed ones.

    Its own small lock is taken alone or inside the handler's (never the other way);
    stderr is written with no lock held."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._lock = threading.Lock()
        self.count = 0
        self._dropping = False  # in a run of refused records (reported once)
        self._last_report = -math.inf

    def refused(self, reason: str) -> None:
        """``emit()`` could not take a record."""
        with self._lock:
            self.count += 1
            first, self._dropping = not self._dropping, True
        if first:
            warn(f"dropping log records for {self.where}: {reason}")

    def accepted(self) -> None:
        """A record was taken again: the next refusal starts a new run (a new line)."""
        if self._dropping:
            self._dropping = False

    def lost(self, n: int) -> None:
        """``n`` kept records will never be sent (the caller says why)."""
        with self._lock:
            self.count += n

    def failed(self, n: int, err: BaseException) -> None:
        """The producer failed to deliver ``n`` records (its ``on_error``)."""
        now = time.monotonic()
        with self._lock:
            self.count += n
            report = now - self._last_report >= REPORT_INTERVAL
            if report:
                self._last_report = now
        if report:
            warn(f"{n} log record(s) were not delivered to {self.where}: {err}")

    def after_fork_in_child(self) -> None:
        """A fresh lock (another thread may have held it at the fork); the count stays."""
        self._lock = threading.Lock()
