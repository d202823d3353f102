"""MaterializedState: the in-memory view of a State Protocol stream (no server needed).

Events are applied in stream order (State Protocol §6): ``insert``, ``update`` and
``upsert`` set the value at (type, key), ``delete`` removes it, ``reset`` clears everything,
``snapshot-start``/``snapshot-end`` change nothing (they are boundaries, see
:attr:`MaterializedState.in_snapshot`; :func:`~durable_streams.state.follow_state` uses them
to apply a snapshot at once). This gives the same collections, in the same order, as the
TypeScript package's ``MaterializedState`` driven the way its ``StreamDB`` drives it (a
``reset`` clears the state; a type appears in :attr:`~MaterializedState.types` from its
first change event, a delete included, until the next reset).

Every method takes the state's lock, so one thread may apply while others read; a batch is
applied under one hold of the lock, so readers see all of it or none. Values are stored as
decoded (dicts, lists...): treat what :meth:`~MaterializedState.get` returns as read-only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

from .events import StateEvent, check_event

__all__ = ["MaterializedState"]


class MaterializedState:
    """State materialised from change events: ``{type: {key: value}}``.

    ``apply(event)`` / ``apply_batch(events)`` check every event first
    (:class:`~durable_streams.state.StateEventError` for a malformed one, and then nothing
    of the batch is applied); ``get``, ``collection``, ``types``, ``to_dict`` read.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._data: dict[str, dict[str, Any]] = {}
        self._offset: str | None = None
        self._in_snapshot = False
        self._applied = 0

    # -- applying ----------------------------------------------------------------------
    def apply(self, event: StateEvent) -> None:
        """Apply one event (a change or a control event)."""
        check_event(event)
        with self._lock:
            self._apply(event)
            self._applied += 1

    def apply_batch(self, events: Iterable[StateEvent], *, offset: str | None = None) -> None:
        """Apply events in order, atomically for readers; record ``offset`` if given.

        ``offset`` is the stream offset after these events (what a reader resumes from); it
        is kept as :attr:`offset`.
        """
        checked = [check_event(e, offset=offset) for e in events]
        with self._lock:
            data, apply = self._data, self._apply
            for event in checked:
                # Inline fast path for changes; controls (and new types) go to _apply.
                operation = event["headers"].get("operation")
                collection = data.get(event["type"]) if operation is not None else None
                if collection is None:
                    apply(event)
                elif operation == "delete":
                    collection.pop(event["key"], None)
                else:
                    collection[event["key"]] = event["value"]
            self._applied += len(checked)
            if offset is not None:
                self._offset = offset

    def _apply(self, event: StateEvent) -> None:
        headers = event["headers"]
        operation = headers.get("operation")
        if operation is None:
            control = headers["control"]
            if control == "reset":
                self._data.clear()
            else:
                self._in_snapshot = control == "snapshot-start"
            return
        collection = self._data.get(event["type"])
        if collection is None:
            collection = self._data[event["type"]] = {}
        if operation == "delete":
            collection.pop(event["key"], None)
        else:
            collection[event["key"]] = event["value"]

    def clear(self) -> None:
        """Forget every value and type (the offset is kept)."""
        with self._lock:
            self._data.clear()
            self._in_snapshot = False

    # -- reading -----------------------------------------------------------------------
    def get(self, type: str, key: str, default: Any = None) -> Any:
        """The value at (type, key), or ``default``."""
        with self._lock:
            collection = self._data.get(type)
            if collection is None:
                return default
            return collection.get(key, default)

    def __contains__(self, type_key: object) -> bool:
        """``(type, key) in state``."""
        if not isinstance(type_key, tuple) or len(type_key) != 2:
            return False
        with self._lock:
            collection = self._data.get(type_key[0])
            return collection is not None and type_key[1] in collection

    def collection(self, type: str) -> Mapping[str, Any]:
        """A read-only ``{key: value}`` mapping of one type (a consistent copy; empty if the
        type is unknown). Iterating it is safe while events are being applied."""
        with self._lock:
            return MappingProxyType(dict(self._data.get(type, {})))

    @property
    def types(self) -> list[str]:
        """Type names, in the order of their first change event since the last reset."""
        with self._lock:
            return list(self._data)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{type: {key: value}}``: a consistent copy of the whole state."""
        with self._lock:
            return {t: dict(c) for t, c in self._data.items()}

    def __len__(self) -> int:
        """The number of (type, key) entries."""
        with self._lock:
            return sum(len(c) for c in self._data.values())

    def __iter__(self) -> Iterator[tuple[str, str, Any]]:
        """``(type, key, value)`` for every entry, from a consistent copy."""
        for type_, collection in self.to_dict().items():
            for key, value in collection.items():
                yield type_, key, value

    @property
    def offset(self) -> str | None:
        """The offset given with the last :meth:`apply_batch` (where to resume), or None."""
        with self._lock:
            return self._offset

    @property
    def in_snapshot(self) -> bool:
        """True after a ``snapshot-start`` until its ``snapshot-end``."""
        with self._lock:
            return self._in_snapshot

    @property
    def applied_count(self) -> int:
        """How many events have been applied (controls included)."""
        with self._lock:
            return self._applied

    @contextmanager
    def locked(self) -> Iterator[MaterializedState]:
        """Hold the lock for several consistent reads: ``with state.locked() as s: ...``.

        Nothing is applied meanwhile, so keep the block short.
        """
        with self._lock:
            yield self

    def __repr__(self) -> str:
        with self._lock:
            sizes = ", ".join(f"{t}={len(c)}" for t, c in self._data.items())
        return f"MaterializedState({sizes or 'empty'}, offset={self._offset!r})"
