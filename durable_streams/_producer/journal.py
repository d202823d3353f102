"""The crash-safe journal of an :class:`~durable_streams.IdempotentProducer` (``journal=``).

It records the life of every message: accepted (``MSG``, before ``append()`` returns),
sealed into a batch with its (epoch, seq) (``SEAL``, before the batch's first send),
acknowledged or reported failed (``DONE``). A later producer opened on the same directory
replays what is pending: sealed batches with their journaled (epoch, seq, body), so that the
server deduplicates what it stored before the crash, then the unsealed messages. The format
is in ``journal_format.py``; the files, where records are written and compaction in
``journal_segments.py``; what survives what in the README ("Crash-safe journal").

This module is the batch-life half: the hooks the producer's parts call (:meth:`taken`,
:meth:`built`, :meth:`admitted`, :meth:`sealed`, :meth:`resolved`...), which follow each
batch's journal indexes as (first, count) runs, so a batch costs O(runs), not O(messages).
The appender's path is :meth:`Journal.add` (the segments' own method, no extra call).

One owner: an exclusive ``flock`` on ``LOCK`` (released by the kernel when the process
dies) keeps a second producer off the journal, in another process or the same one. After
``os.fork()`` the child's copy is switched off (:meth:`Journal.after_fork_in_child`): it
never writes to the parent's files.

Every method except :meth:`Journal.open` is called with the producer lock held (the
journal has no lock of its own): records are written in the order of the calls.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from .. import errors
from . import journal_format as F
from .journal_replay import Replay, ReplayBuilder, settle_seq
from .journal_segments import RESERVE, SEGMENT_BYTES, Segments

if TYPE_CHECKING:
    from .batch import Batch

__all__ = ["RESERVE", "SEGMENT_BYTES", "Journal", "Replay", "identity_of"]

log = logging.getLogger("durable_streams.producer")

#: a batch's journal indexes, as ascending (first, count) runs, and its messages
_Live = tuple[F.Runs, list[bytes]]


def identity_of(url: str) -> str:
    """The stream's identity on disk: scheme, host, port and path only (no user-info, no
    query, so no secret)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class Journal:
    """One open journal directory (see the module docstring)."""

    def __init__(self, directory: str, *, stream: str, producer_id: str,
                 max_bytes: int, fsync: bool = False,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.stream = stream
        self.producer_id = producer_id
        self.files = Segments(directory, max_bytes=max_bytes, fsync=fsync,
                              segment_bytes=segment_bytes, header=self._segment_header)
        #: journal one accepted message (False: it does not fit under ``max_bytes``);
        #: the segments' method itself, so the appender pays one Python call
        self.add: Callable[[bytes], bool] = self.files.add
        #: can a message of ``n`` bytes be journaled now without passing ``max_bytes``?
        self.fits: Callable[[int], bool] = self.files.fits
        self.epoch: int | None = None
        self.next_seq = 0
        self.probes: dict[int, str] = {}
        self.content_type: str | None = None
        #: the epoch whose server state a 200 proved ours, if it is the latest (``epoch``)
        self.owned: int | None = None
        #: ``epoch``'s holes and highest acknowledged seq (``Replay.holes``)
        self.holes: set[int] = set()
        self.acked_seq = -1
        #: where the stream's content type is read at each seal (set by attach)
        self.content_type_of: Callable[[], str | None] = lambda: None
        #: batch id -> (journal index runs, its message list when registered)
        self._live: dict[int, _Live] = {}
        self._take: _Live | None = None
        self._built: _Live | None = None
        self._remap: dict[int, int] = {}  # accumulator index -> journal index (replay)
        #: set when closing abandons pending messages: they stay journaled (no DONE)
        self.keep_pending = False
        self.replay = Replay()

    @property
    def disabled(self) -> bool:
        """Closed, or a forked child's copy: the hooks do nothing."""
        return self.files.disabled

    # -- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: str | os.PathLike[str], *, stream: str, producer_id: str,
             max_bytes: int, fsync: bool = False, segment_bytes: int = SEGMENT_BYTES
             ) -> Journal:
        """Lock, check and read the journal in ``directory`` (created if missing)."""
        path = os.path.abspath(os.fspath(directory))
        j = cls(path, stream=identity_of(stream), producer_id=producer_id,
                max_bytes=max_bytes, fsync=fsync, segment_bytes=segment_bytes)
        j.files.lock()
        try:
            builder = ReplayBuilder()
            r = j.replay = builder.result(j.files.load(builder, j._check_identity))
            j.epoch, j.next_seq = r.epoch, r.next_seq
            j.content_type = r.content_type
            j.owned = r.epoch if r.owned else None
            j.holes, j.acked_seq = set(r.holes), builder.acked_seq
            if r.epoch is not None and r.probe is not None:
                j.probes[r.epoch] = r.probe
            j.files.resume(builder.pending_per_segment)
        except BaseException:
            j.close()
            raise
        return j

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

    def _segment_header(self, number: int, first_index: int) -> bytes:
        """What a new segment's header records: the numbering and probe at this point."""
        return F.encode_segment(F.SegmentInfo(
            stream=self.stream, producer_id=self.producer_id, number=number,
            first_index=first_index, epoch=self.epoch, next_seq=self.next_seq,
            probe=None if self.epoch is None else self.probes.get(self.epoch),
            content_type=self.content_type,
            owned=self.owned if self.owned == self.epoch else None,
            holes=tuple(F.to_runs(sorted(self.holes))), acked_seq=self.acked_seq))

    # -- the life of a batch (hooks called by the producer's parts, lock held) -------------
    def taken(self, first: int, messages: list[bytes]) -> None:
        """The accumulator took messages ``first``.. to build one batch."""
        if self.files.disabled:
            return
        self._resolve_stale_take()
        n = len(messages)
        if self._remap:
            remap = self._remap
            runs = F.to_runs(remap.pop(first + i, first + i) for i in range(n))
        else:
            runs = [(first, n)] if n else []
        self._take = (runs, messages)

    def _resolve_stale_take(self) -> None:
        # A take that became no batch (its messages were all reported failed) and was not
        # told so by built([]).
        self._built = None
        if self._take is not None:
            runs, _ = self._take
            self._take = None
            self._done(F.DONE_FAILED, runs)

    def built(self, kept: list[bytes] | None) -> None:
        """The last take was built into a batch of ``kept`` (None: all of it; a subsequence:
        the invalid messages were left out and reported failed; empty: no batch)."""
        if self.files.disabled or self._take is None:
            return
        runs, taken = self._take
        self._take = None
        if kept is None or kept is taken or len(kept) == len(taken):
            self._built = (runs, taken if kept is None else kept)
            return
        keep, dropped = _match(runs, taken, kept)
        self._built = (keep, kept) if keep else None
        self._done(F.DONE_FAILED, dropped)

    def admitted(self, batch: Batch) -> None:
        """The batch just built is registered (sealed now, or parked until renumbered)."""
        if self.files.disabled:
            return
        if self._take is not None:  # built() was not called: the whole take
            self.built(None)
        if self._built is not None:
            self._live[batch.id] = (self._built[0], batch.messages)
            self._built = None

    def adopt(self, batch: Batch, indexes: list[int]) -> None:
        """A batch replayed from the journal (already sealed)."""
        self._live[batch.id] = (F.to_runs(indexes), batch.messages)

    def sealed(self, batches: Sequence[Batch], json_body: bool) -> None:
        """These batches got their (epoch, seq): journaled (one record) before any send.
        Raises :class:`JournalError` if the record cannot be written."""
        if self.files.disabled or not batches:
            return
        epoch = batches[0].epoch
        entries = []
        for b in batches:
            live = self._live.get(b.id)
            if live is not None:
                entries.append(F.SealEntry(b.seq, json_body, tuple(live[0])))
        if not entries:
            return
        ct = self.content_type_of()
        if ct and ct != self.content_type:
            self.files.write(F.T_META, json.dumps({"content_type": ct}).encode())
            self.content_type = ct
        self.files.write(F.T_SEAL, F.encode_seal(epoch, entries), sync=True)
        if self.epoch != epoch:
            self.epoch, self.next_seq = epoch, 0
            self.holes, self.acked_seq = set(), -1
        self.next_seq = max(self.next_seq, max(e.seq for e in entries) + 1)

    def resealed(self, batch: Batch, json_body: bool) -> None:
        """The batch's invalid JSON messages were split off (same epoch and seq)."""
        live = self._live.get(batch.id)
        if self.files.disabled or live is None:
            return
        keep, dropped = _match(live[0], live[1], batch.messages)
        self._live[batch.id] = (keep, batch.messages)
        self.files.write(F.T_SEAL, F.encode_seal(batch.epoch, [
            F.SealEntry(batch.seq, json_body, tuple(keep))]), sync=True)
        self._done(F.DONE_FAILED, dropped)

    def resolved(self, batch: Batch, *, acked: bool) -> None:
        """The batch was acknowledged, or reported failed."""
        if self.files.disabled:
            return
        live = self._live.pop(batch.id, None)
        if live is None or (not acked and self.keep_pending):
            return  # (abandoned by close(): it stays journaled)
        if batch.epoch == self.epoch and batch.seq >= 0:
            self.holes, self.acked_seq = settle_seq(self.holes, self.acked_seq, batch.seq,
                                                    acked)
        self._done(F.DONE_ACKED if acked else F.DONE_FAILED, live[0])

    def dropped(self, first: int, count: int) -> None:
        """The accumulator's buffer (``first``.., ``count`` messages) was reported failed."""
        if self.files.disabled or self.keep_pending or not count:
            return
        if self._remap:
            remap = self._remap
            runs = F.to_runs(remap.pop(first + i, first + i) for i in range(count))
        else:
            runs = [(first, count)]
        self._done(F.DONE_FAILED, runs)

    def probed(self, epoch: int, offset: str) -> None:
        """The stream's tail before ``epoch``'s first send (where to look for our batches)."""
        if self.files.disabled or self.probes.get(epoch) == offset:
            return
        self.probes[epoch] = offset
        for old in sorted(self.probes)[:-4]:
            del self.probes[old]
        try:
            self.files.write(F.T_PROBE, F.encode_probe(epoch, offset))
        except errors.JournalError as exc:  # only costs a later check its start point
            log.warning("producer journal: could not record a tail probe: %s", exc)

    def proven(self, epoch: int) -> None:
        """A 200 proved the server's producer state at ``epoch`` ours (every lower seq of
        it acknowledged first): a later producer on this journal may take a 204 for a seq
        of it as ours (``journal_replay.attach``). Recorded for the latest sealed epoch
        only; an older one is left behind already."""
        if self.files.disabled or epoch != self.epoch or self.owned == epoch:
            return
        self.owned = epoch
        try:
            self.files.write(F.T_META, json.dumps({"owned_epoch": epoch}).encode())
        except errors.JournalError as exc:  # only costs the next producer a check
            log.warning("producer journal: could not record the epoch as ours: %s", exc)

    def _done(self, kind: int, runs: F.Runs) -> None:
        if not runs:
            return
        runs = _merged(runs)
        try:
            self.files.write(F.T_DONE, F.encode_done(kind, runs))
        except errors.JournalError as exc:
            # Only costs a resend later (the server deduplicates); the records that
            # protect messages (MSG, SEAL) raise instead.
            log.warning("producer journal: could not record %d resolved message(s): %s",
                        sum(c for _, c in runs), exc)
            return
        self.files.resolve(runs)

    # -- end -------------------------------------------------------------------------------
    def set_remap(self, mapping: dict[int, int]) -> None:
        self._remap = dict(mapping)

    def close(self) -> None:
        """Release the files and the lock (idempotent)."""
        self.files.close()

    def after_fork_in_child(self) -> None:
        """The forked child never touches the parent's journal: no write, no unlock."""
        self.files.after_fork_in_child()


def _merged(runs: F.Runs) -> F.Runs:
    """``runs`` in ascending order, adjacent ones joined (one run per batch, usually)."""
    if len(runs) == 1:
        return runs
    out: F.Runs = []
    for first, count in sorted(runs):
        if out and out[-1][0] + out[-1][1] == first:
            out[-1] = (out[-1][0], out[-1][1] + count)
        else:
            out.append((first, count))
    return out


def _match(runs: F.Runs, taken: Sequence[bytes], kept: Iterable[bytes]
           ) -> tuple[F.Runs, F.Runs]:
    """Split ``runs`` (the indexes of ``taken``) into those of ``kept`` (a subsequence of
    ``taken``, same objects in order) and the others. Equal messages are equally valid,
    so matching by identity in order cannot mix up a valid and an invalid one. (The rare
    path: invalid JSON left out; one pass over the messages.)"""
    keep: list[int] = []
    dropped: list[int] = []
    it = iter(kept)
    want = next(it, None)
    for i, m in zip(F.from_runs(runs), taken, strict=False):
        if want is not None and m is want:
            keep.append(i)
            want = next(it, None)
        else:
            dropped.append(i)
    return F.to_runs(keep), F.to_runs(dropped)
