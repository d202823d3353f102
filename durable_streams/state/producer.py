"""StateProducer: State Protocol change and control events over an IdempotentProducer.

Each method builds one event, checks it (:func:`~durable_streams.state.events.change_event`)
and queues it as one JSON message on an :class:`~durable_streams.IdempotentProducer`, so the
writes are non-blocking, batched, retried and stored exactly once, and every failure is
reported (``on_error`` and a :class:`~durable_streams.DeliveryError` from ``flush()`` or
``close()``), as for any producer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .. import _protocol as P
from .._producer.options import pass_through_exit_timeout
from ..producer import IdempotentProducer
from ..stream import DurableStream
from .events import _MISSING, StateEvent, change_event, control_event, encode_event

__all__ = ["StateProducer"]

#: ``schemas={"user": fn}``: ``fn(value)`` returns the value to store, or raises.
SchemaFn = Callable[[Any], Any]


class StateProducer:
    """Write State Protocol events to a JSON stream, exactly once, without blocking.

    ``StateProducer(stream, producer_id, schemas=None, **producer_options)``: ``stream``
    and ``producer_id`` and every keyword option (``auto_claim``, ``linger_ms``,
    ``on_error``, ``journal``...) go to :class:`~durable_streams.IdempotentProducer`. The
    stream must be a JSON stream (``application/json``); when the handle or the options name
    no content type, ``application/json`` is assumed (and the server refuses the appends if
    the stream is not JSON).

    ``schemas`` maps a type to a function that takes the value given to ``insert``,
    ``update`` or ``upsert`` (and an ``old_value``) and returns what to store, or raises to
    refuse it: e.g. ``{"user": lambda v: User(**v).model_dump(mode="json")}`` with pydantic,
    or ``dataclasses.asdict`` for dataclass instances.

    ``with StateProducer(...) as state:`` flushes and closes at the end of the block.
    """

    def __init__(self, stream: DurableStream | str, producer_id: str, *,
                 schemas: Mapping[str, SchemaFn] | None = None,
                 **producer_options: Any) -> None:
        if schemas is not None:
            if not isinstance(schemas, Mapping):
                raise TypeError(f"schemas must be a mapping of type name to function, got "
                                f"{type(schemas).__name__}")
            for name, fn in schemas.items():
                if not isinstance(name, str) or not name or not callable(fn):
                    raise TypeError(f"schemas must map non-empty type names to callables; "
                                    f"{name!r} maps to {type(fn).__name__}")
        pass_through_exit_timeout(producer_options, "StateProducer()")
        content_type = producer_options.get("content_type")
        if content_type is None and isinstance(stream, DurableStream):
            content_type = stream.content_type
        if content_type is not None and not P.is_json(content_type):
            raise ValueError(
                f"State Protocol events need a JSON stream (application/json), but the content "
                f"type is {content_type!r}; create the stream with "
                "content_type='application/json'")
        if content_type is None:
            producer_options["content_type"] = "application/json"
        self._schemas: dict[str, SchemaFn] = dict(schemas or {})
        self._producer = IdempotentProducer(stream, producer_id, **producer_options)
        self._snapshot_lock = threading.Lock()
        self._in_snapshot = False

    # -- the underlying producer -------------------------------------------------------
    @property
    def producer(self) -> IdempotentProducer:
        """The :class:`~durable_streams.IdempotentProducer` that carries the events."""
        return self._producer

    @property
    def url(self) -> str:
        return self._producer.url

    @property
    def last_offset(self) -> str:
        """The highest offset acknowledged so far (``''`` before any)."""
        return self._producer.last_offset

    @property
    def closed(self) -> bool:
        return self._producer.closed

    # -- change events -----------------------------------------------------------------
    def insert(self, type: str, key: str, value: Any, *, txid: str | None = None,
               timestamp: object = None) -> StateEvent:
        """Queue an ``insert`` of ``value`` at (type, key); returns the event queued."""
        return self._change("insert", type, key, value, _MISSING, txid, timestamp)

    def update(self, type: str, key: str, value: Any, *, old_value: Any = None,
               txid: str | None = None, timestamp: object = None) -> StateEvent:
        """Queue an ``update`` (``old_value`` is written only when not None)."""
        old = _MISSING if old_value is None else old_value
        return self._change("update", type, key, value, old, txid, timestamp)

    def upsert(self, type: str, key: str, value: Any, *, txid: str | None = None,
               timestamp: object = None) -> StateEvent:
        """Queue an ``upsert``: set the value whether or not the key exists."""
        return self._change("upsert", type, key, value, _MISSING, txid, timestamp)

    def delete(self, type: str, key: str, *, old_value: Any = None, txid: str | None = None,
               timestamp: object = None) -> StateEvent:
        """Queue a ``delete`` of (type, key) (``old_value`` is written only when not None)."""
        old = _MISSING if old_value is None else old_value
        return self._change("delete", type, key, _MISSING, old, txid, timestamp)

    def _change(self, operation: str, type: str, key: str, value: Any, old_value: Any,
                txid: str | None, timestamp: object) -> StateEvent:
        schema = self._schemas.get(type) if isinstance(type, str) else None
        if schema is not None:
            if value is not _MISSING:
                value = schema(value)
            if old_value is not _MISSING:
                old_value = schema(old_value)
        event = change_event(operation, type, key, value, old_value=old_value, txid=txid,
                             timestamp=timestamp)
        self._producer.append(encode_event(event))
        return event

    # -- control events ----------------------------------------------------------------
    def reset(self) -> None:
        """Queue a ``reset``: readers clear their state (then usually a snapshot follows)."""
        self._producer.append(encode_event(control_event("reset")))

    @contextmanager
    def snapshot(self, *, reset: bool = False) -> Iterator[StateProducer]:
        """``with state.snapshot(): ...`` writes ``snapshot-start``, the block's events, then
        ``snapshot-end``; :func:`~durable_streams.state.follow_state` applies the block at
        once. With ``reset=True`` a ``reset`` follows ``snapshot-start``: the block replaces
        the whole state, and readers go from the old state to the new one in one step (a
        bare :meth:`reset` followed by a snapshot may reach an up-to-date reader alone, which
        then shows the emptied state until the snapshot arrives).

        If the block raises, ``snapshot-end`` is still written (the events already queued
        cannot be withdrawn, and readers must not wait for the end forever) and the
        exception propagates. Snapshots do not nest."""
        with self._snapshot_lock:
            if self._in_snapshot:
                raise RuntimeError("snapshot() blocks do not nest: this producer is already "
                                   "writing a snapshot")
            self._in_snapshot = True
        try:
            self._producer.append(encode_event(control_event("snapshot-start")))
            if reset:
                self._producer.append(encode_event(control_event("reset")))
            try:
                yield self
            finally:
                self._producer.append(encode_event(control_event("snapshot-end")))
        finally:
            with self._snapshot_lock:
                self._in_snapshot = False

    # -- flush / close -----------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> str:
        """Wait until every queued event is stored; returns the offset after the last one
        (resume a reader there). Raises :class:`~durable_streams.DeliveryError` for
        undelivered events, ``TimeoutError`` after ``timeout`` seconds."""
        return self._producer.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Flush and release the producer (the stream stays open)."""
        self._producer.close(timeout)

    def __enter__(self) -> StateProducer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateProducer({self._producer.producer_id!r}, {self._producer._where!r})"
