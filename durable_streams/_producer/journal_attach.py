"""How a new producer opens its journal (:func:`open_journal`: the option checks) and
takes over what the journal holds (:func:`attach`): sealed batches are resent first with
their journaled (epoch, seq, body), then the unsealed messages are batched anew. What is
pending is folded from the records by ``journal_replay.py``."""

from __future__ import annotations

import contextlib
import os
import time
from typing import TYPE_CHECKING

from .. import _protocol as P
from .batch import Batch
from .journal import RESERVE, SEGMENT_BYTES, Journal

if TYPE_CHECKING:
    from .accumulator import Accumulator
    from .sender import SenderPool
    from .sequencer import Sequencer


def attach(journal: Journal, *, acc: Accumulator, seq: Sequencer, pool: SenderPool,
           delivery_timeout: float) -> int:
    """(lock held) Make ``journal`` part of a new producer and take over what it holds:
    the sequencer resumes at the journal's epoch and seq, pending sealed batches are
    queued for resending with their journaled (epoch, seq, body) ahead of anything new,
    and the unsealed messages go back into the buffer. Returns the number of messages
    replayed.

    A 204 for a journaled batch is taken as ours at once only if the journal recorded
    that a 200 proved the server's producer state at its epoch ours (``Replay.owned``):
    otherwise that state may be another writer's (an earlier run of the job without this
    journal, a second copy of it, at the same id and epoch), and the batch is looked for
    in the stream after the epoch's journaled tail probe, as a live producer does. The
    holes of the epoch (``Replay.holes``: seqs reported failed, maybe stored) are known to
    the sequencer again, as the live producer knew them: a later seq's 409 naming one (or
    a 400 for a new epoch after a hole at seq 0) moves the pending batches to a new
    epoch."""
    transport = pool.transport
    journal.content_type_of = lambda: transport.content_type
    r = journal.replay
    json_mode: bool | None = None
    if r.content_type and not transport.content_type:
        # the replayed bodies were built for it: no HEAD needed before resending them
        transport.content_type = r.content_type
        transport.json_mode = P.is_json(r.content_type)
        json_mode = bool(transport.json_mode)
    now = time.monotonic()
    batches = []
    for pb in r.batches:
        b = Batch(list(pb.messages), sum(len(m) for m in pb.messages), pb.indexes[0],
                  pb.body, now + delivery_timeout)
        b.epoch, b.seq = pb.epoch, pb.seq
        batches.append(b)
    seq.take_over(journal, epoch=r.epoch, next_seq=r.next_seq, probe=r.probe,
                  batches=batches, json_mode=json_mode, owned=r.owned, holes=r.holes)
    for b, pb in zip(batches, r.batches, strict=True):
        journal.adopt(b, pb.indexes)
    start = r.next_index - len(r.unsealed)
    acc.restore_pending(journal, start, [m for _, m in r.unsealed],
                        sum(b.nbytes for b in batches), now)
    journal.set_remap({start + n: i for n, (i, _) in enumerate(r.unsealed) if start + n != i})
    if r.batches or r.unsealed:
        with contextlib.suppress(Exception):
            pool.wake()  # deliver the backlog without waiting for an append
    return r.count


#: Test-only internal, not public API (may change or go without notice): when set, the
#: segment size of journals opened afterwards in this process, so that kill tests cross
#: segment rollover and compaction within a few hundred messages.
_test_segment_bytes: int | None = None


def open_journal(path: str | os.PathLike[str] | None, *, url: str, producer_id: str,
                 fsync: bool, max_bytes: int | None, max_buffer_bytes: int,
                 max_batch_bytes: int) -> Journal | None:
    """The producer's journal option checks, then :meth:`Journal.open` (None: no journal).
    ``journal_max_bytes`` defaults to 4 x ``max_buffer_bytes`` (at least 64 MiB)."""
    if path is None:
        if fsync or max_bytes is not None:
            raise ValueError("journal_fsync and journal_max_bytes need journal=DIRECTORY")
        return None
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TypeError(f"journal must be a directory path (str or os.PathLike), got "
                        f"{type(path).__name__}")
    if not isinstance(fsync, bool):
        raise TypeError(f"journal_fsync must be True or False, got {fsync!r}")
    segment = _test_segment_bytes or max(SEGMENT_BYTES, 2 * max_batch_bytes)
    floor = 4 * (segment + RESERVE)
    if max_bytes is None:
        max_bytes = max(4 * max_buffer_bytes, 64 * 1024 * 1024, floor)
    elif isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"journal_max_bytes must be an int, got {max_bytes!r}")
    elif max_bytes < floor:
        raise ValueError(f"journal_max_bytes must be >= {floor} (four segments of "
                         f"{segment} bytes), got {max_bytes}")
    return Journal.open(path, stream=url, producer_id=producer_id, max_bytes=max_bytes,
                        fsync=fsync, segment_bytes=segment)
