"""``flush()``: seal everything appended so far, wait until each message is acknowledged or
reported failed (the ``settled`` wait of ``waits.py``), then report the failures.

Called on the application's thread (or on the reporter's, from ``on_error``); it takes the
producer lock and waits on a Condition built on it.
"""

from __future__ import annotations

import threading
import time

from .accumulator import Accumulator
from .reporter import Reporter
from .sender import SenderPool
from .sequencer import Sequencer


def flush(lock: threading.Lock, *, acc: Accumulator, seq: Sequencer, pool: SenderPool,
          reporter: Reporter, timeout: float | None, where: str) -> str:
    """What ``IdempotentProducer.flush`` documents: the last acknowledged offset."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with lock:
        target = acc.appended
        acc.seal_all(target)
        if acc.buf:
            pool.wake()  # one sender; it passes the baton on
        while unresolved_below(acc, seq, target):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(
                    f"flush timed out after {timeout}s: {count_unresolved(acc, seq, target)} "
                    f"messages for {where} are not acknowledged yet (still retrying)")
            if acc.buf:
                pool.wake()
            pool.waits.settled.wait(remaining)
        if reporter.on_own_thread():
            # on_error already has the failure; the application's own flush() or
            # close() must still see it, so leave it to them.
            return seq.last_offset
        reporter.wait_called()
        reporter.raise_unreported()
        return seq.last_offset


def unresolved_below(acc: Accumulator, seq: Sequencer, target: int) -> bool:
    """(lock held) Some message with an index < ``target`` is neither acked nor failed."""
    return (acc.unresolved_below(target)
            or any(b.first_index < target for b in seq.batches.values()))


def count_unresolved(acc: Accumulator, seq: Sequencer, target: int) -> int:
    n = acc.count_below(target)
    for b in seq.batches.values():
        n += sum(1 for i in range(len(b.messages)) if b.first_index + i < target)
    return n
