"""When a reader may apply what it received: whole chunks, and never half a snapshot.

A reader receives a stream in *chunks* (one per server response or SSE control event), each
ending at an offset it can resume from. :class:`BlockAssembler` decides, chunk by chunk,
when the events received so far can be applied as one atomic group:

- never inside a snapshot block: from a ``snapshot-start`` the chunks are held until the
  chunk that carries its ``snapshot-end`` (a ``reset`` inside the block, as
  :meth:`StateProducer.snapshot(reset=True) <durable_streams.state.StateProducer.snapshot>`
  writes it, is part of the block: the state is replaced at once);
- never right after a ``reset`` that ends a chunk while more data is known to follow (the
  chunk is not up to date): what follows, usually the snapshot that refills the state, is
  applied together with it, so no reader sees the emptied state in between (a reset that
  reaches an up-to-date reader alone is applied at once: nothing else is known to follow);
- otherwise at the end of every chunk.

Groups always end at a chunk boundary, so the offset stored with a group is exact: a reader
that resumes from it re-reads nothing it applied and skips nothing. Pure; no I/O, no locks.

Memory is bounded by ``max_held``: a block that grows beyond it (a huge snapshot, or one that
never ends) is released at the next chunk boundary anyway, in parts (:attr:`split_blocks`
counts them): the events are applied, not dropped, but readers may see that block in parts.
"""

from __future__ import annotations

from collections.abc import Sequence

from .events import StateEvent

__all__ = ["BlockAssembler"]


class BlockAssembler:
    """Collect chunks; :meth:`add` returns the events to apply now, or ``None`` to hold."""

    def __init__(self, max_held: int | None = None) -> None:
        if max_held is not None and (isinstance(max_held, bool) or not isinstance(max_held, int)
                                     or max_held < 1):
            raise ValueError(f"max_held must be a positive int or None, got {max_held!r}")
        self._max_held = max_held
        self.split_blocks = 0
        self._held: list[StateEvent] = []
        self._held_chunks = 0
        self._in_snapshot = False
        self._ends_with_reset = False

    @property
    def held_events(self) -> int:
        """Events received but held back (inside an unfinished block)."""
        return len(self._held)

    @property
    def holding(self) -> bool:
        """True while chunks are held back."""
        return self._held_chunks > 0

    def add(self, events: Sequence[StateEvent], up_to_date: bool) -> list[StateEvent] | None:
        """Take one chunk's (checked) events; return the group to apply now, or None."""
        for event in events:
            control = event["headers"].get("control")
            if control == "snapshot-start":
                self._in_snapshot = True
            elif control == "snapshot-end":
                self._in_snapshot = False
        if events:
            self._ends_with_reset = events[-1]["headers"].get("control") == "reset"
        self._held.extend(events)
        self._held_chunks += 1
        if self._in_snapshot or (self._ends_with_reset and not up_to_date):
            if self._max_held is None or len(self._held) <= self._max_held:
                return None
            self.split_blocks += 1
        group, self._held = self._held, []
        self._held_chunks = 0
        self._ends_with_reset = False
        return group
