"""follow_state: a live, thread-safe materialised view of a State Protocol stream.

:func:`follow_state` opens a read of the stream (through :func:`durable_streams.stream`, so
catch-up, long-poll or SSE, retries and offsets are the reader's) and hands it to a
background thread that checks each event, groups chunks with
:class:`~durable_streams.state.blocks.BlockAssembler` (a snapshot block or a reset and what
refills it is applied at once), and applies each group to the store under its lock
(:class:`~durable_streams.state.MaterializedState`, or a
:class:`~durable_streams.state.SqliteState` where the group and its offset are committed in
one transaction).

The first request is sent by :func:`follow_state` itself, so a missing stream raises there.
A failure later (the stream deleted, retention, a malformed event without ``on_invalid``,
an exception in ``on_change``) stops the view; :attr:`StateFollower.error` holds it and
:meth:`~StateFollower.close`, :meth:`~StateFollower.wait_until_up_to_date` and
:meth:`~StateFollower.wait_for_txid` raise it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Generic, Protocol, TypeVar, overload

from .. import _protocol as P
from .._redact import redact_url
from ..reading import LiveMode, StreamResponse, stream
from .blocks import BlockAssembler
from .events import StateEvent, StateEventError, check_event
from .materialized import MaterializedState

__all__ = ["StateFollower", "StateStore", "follow_state"]

_log = logging.getLogger("durable_streams")

#: Called on the follower's thread with each group of events just applied (in order).
ChangeCallback = Callable[[Sequence[StateEvent]], None]
#: Called on the follower's thread with each malformed event's error; the event is skipped.
InvalidCallback = Callable[[StateEventError], None]


class StateStore(Protocol):
    """Where a follower applies events: :class:`MaterializedState`, :class:`SqliteState`."""

    def apply_batch(self, events: Sequence[StateEvent], *, offset: str | None = None) -> None:
        ...

    @property
    def offset(self) -> str | None:
        ...


S = TypeVar("S", bound=StateStore)


class StateFollower(Generic[S]):
    """The running view returned by :func:`follow_state`; a context manager.

    :attr:`state` is the store (read it from any thread), :attr:`offset` the offset after
    the last group applied (resume there), :attr:`up_to_date` whether everything the server
    had was applied at the last chunk.
    """

    def __init__(self, response: StreamResponse, store: S, *, on_change: ChangeCallback | None,
                 on_invalid: InvalidCallback | None, max_txids: int,
                 max_held_events: int | None = None) -> None:
        self._response = response
        self._store = store
        self._on_change = on_change
        self._on_invalid = on_invalid
        self._max_txids = max_txids
        self._assembler = BlockAssembler(max_held_events)
        self._cond = threading.Condition()
        self._txids: OrderedDict[str, None] = OrderedDict()  # guarded by _cond
        self._offset = store.offset if store.offset is not None else response.offset
        self._up_to_date = False
        self._done = False
        self._error: BaseException | None = None
        self._skipped = 0
        self._thread = threading.Thread(target=self._run, name="durable-streams-state-follow",
                                        daemon=True)
        self._thread.start()

    # -- public state ------------------------------------------------------------------
    @property
    def state(self) -> S:
        """The store the events are applied to (a :class:`MaterializedState` by default)."""
        return self._store

    @property
    def url(self) -> str:
        return self._response.url

    @property
    def offset(self) -> str:
        """The stream offset after the last group applied: where a new reader resumes.

        It is the store's offset, recorded with the group under the store's lock (or in
        the same SQLite transaction), so it always matches what :attr:`state` holds.
        """
        stored = self._store.offset
        if stored is not None:
            return stored
        with self._cond:
            return self._offset

    @property
    def up_to_date(self) -> bool:
        """True when the last chunk was up to date and everything received is applied."""
        with self._cond:
            return self._up_to_date

    @property
    def running(self) -> bool:
        """True until the view stops (close(), EOF, the end of a ``live=False`` catch-up,
        or an error)."""
        with self._cond:
            return not self._done

    @property
    def error(self) -> BaseException | None:
        """What stopped the view, if it failed."""
        with self._cond:
            return self._error

    @property
    def skipped(self) -> int:
        """Malformed events passed to ``on_invalid`` and skipped."""
        with self._cond:
            return self._skipped

    # -- waiting -----------------------------------------------------------------------
    def wait_until_up_to_date(self, timeout: float | None = None) -> bool:
        """Block until everything the stream held is applied; False on timeout or if the
        view stopped first. Raises the error that stopped the view, if any."""
        with self._cond:
            self._cond.wait_for(lambda: self._up_to_date or self._done, timeout)
            self._raise_error()
            return self._up_to_date

    def wait_for_txid(self, txid: str, timeout: float | None = None) -> bool:
        """Block until an applied event carried ``headers.txid == txid``; False on timeout
        or if the view stopped without seeing it. Raises the error that stopped the view.

        The most recent ``max_txids`` txids are remembered (see :func:`follow_state`).
        """
        if not isinstance(txid, str) or not txid:
            raise ValueError(f"txid must be a non-empty str, got {txid!r}")
        with self._cond:
            self._cond.wait_for(lambda: txid in self._txids or self._done, timeout)
            if txid in self._txids:
                return True
            self._raise_error()
            return False

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    # -- lifecycle ---------------------------------------------------------------------
    def close(self, timeout: float | None = 10.0) -> None:
        """Stop following (from any thread) and wait for the thread; raise its error."""
        self._response.close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        with self._cond:
            self._raise_error()

    def __enter__(self) -> StateFollower[S]:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            try:
                self.close()
            except Exception:  # the body's exception is the one to see
                _log.debug("state follower error hidden by the block's own", exc_info=True)

    def __repr__(self) -> str:
        return (f"StateFollower({self._response!r}, offset={self.offset!r}, "
                f"up_to_date={self.up_to_date}, running={self.running})")

    # -- the thread ----------------------------------------------------------------------
    def _run(self) -> None:
        assembler = self._assembler
        try:
            for batch in self._response.iter_json_batches():
                events = self._checked(batch.items, batch.offset)
                up_to_date = batch.up_to_date or batch.closed
                split = assembler.split_blocks
                group = assembler.add(events, up_to_date)
                if assembler.split_blocks != split:
                    _log.warning("a snapshot block on %s exceeds max_held_events: it is "
                                 "applied in parts", redact_url(self._response.url))
                if group is None:
                    with self._cond:
                        self._up_to_date = False
                    continue
                if group or batch.offset != self._offset:
                    self._store.apply_batch(group, offset=batch.offset)
                self._applied(group, batch.offset, up_to_date and not assembler.holding)
                if group and self._on_change is not None:
                    self._on_change(group)
        except BaseException as exc:  # noqa: BLE001 - kept and raised to the application
            with self._cond:
                self._error = exc
            _log.debug("state follower for %s stopped: %s", redact_url(self._response.url),
                       type(exc).__name__)
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _checked(self, items: list[Any], offset: str) -> list[StateEvent]:
        out: list[StateEvent] = []
        for item in items:
            try:
                out.append(check_event(item, offset=offset))
            except StateEventError as exc:
                if self._on_invalid is None:
                    raise
                with self._cond:
                    self._skipped += 1
                self._on_invalid(exc)
        return out

    def _applied(self, group: list[StateEvent], offset: str, up_to_date: bool) -> None:
        with self._cond:
            txids = self._txids
            for event in group:
                txid = event["headers"].get("txid")
                if isinstance(txid, str):
                    txids[txid] = None
                    txids.move_to_end(txid)
            while len(txids) > self._max_txids:
                txids.popitem(last=False)
            self._offset = offset
            self._up_to_date = up_to_date
            self._cond.notify_all()


@overload
def follow_state(url: str, *, offset: str | None = ..., live: LiveMode = ...,
                 store: None = ..., on_change: ChangeCallback | None = ...,
                 on_invalid: InvalidCallback | None = ..., max_txids: int = ...,
                 max_held_events: int | None = ...,
                 **read_options: Any) -> StateFollower[MaterializedState]: ...


@overload
def follow_state(url: str, *, offset: str | None = ..., live: LiveMode = ..., store: S,
                 on_change: ChangeCallback | None = ...,
                 on_invalid: InvalidCallback | None = ..., max_txids: int = ...,
                 max_held_events: int | None = ...,
                 **read_options: Any) -> StateFollower[S]: ...


def follow_state(
    url: str,
    *,
    offset: str | None = None,
    live: LiveMode = True,
    store: StateStore | None = None,
    on_change: ChangeCallback | None = None,
    on_invalid: InvalidCallback | None = None,
    max_txids: int = 100_000,
    max_held_events: int | None = 1_000_000,
    **read_options: Any,
) -> StateFollower[Any]:
    """Materialise the State Protocol stream at ``url`` on a background thread.

    Args:
        offset: where to start: ``"-1"`` (the beginning: the default), or an offset saved
            from :attr:`StateFollower.offset`. With a ``store`` that already holds an
            offset (a reopened :class:`SqliteState`), the default is to resume from it.
        live: ``True`` (catch up, then follow: SSE, falling back to long-poll),
            ``"long-poll"``, ``"sse"``, or ``False`` (catch up and stop).
        store: where to apply the events (default: a new :class:`MaterializedState`).
        on_change: called on the follower thread with each group of events just applied.
            An exception in it stops the view (and is raised by :meth:`StateFollower.close`).
        on_invalid: called with a :class:`StateEventError` for each malformed message,
            which is then skipped and counted in :attr:`StateFollower.skipped`. Without it
            a malformed message stops the view with that error.
        max_txids: how many recent txids :meth:`StateFollower.wait_for_txid` remembers.
        max_held_events: the most events held back while a snapshot block is incomplete
            (memory bound); a longer block is applied in parts, with a warning logged.
            ``None``: no bound.
        read_options: passed to :func:`durable_streams.stream` (``headers``, ``params``,
            ``session``, ``timeout``, ``retry``, ``content_type``, ``stop_after``).

    Returns a running :class:`StateFollower`; use it in a ``with`` block or call ``close()``.
    """
    if isinstance(max_txids, bool) or not isinstance(max_txids, int) or max_txids < 0:
        raise ValueError(f"max_txids must be an int >= 0, got {max_txids!r}")
    if "stop_at_up_to_date" in read_options:
        raise TypeError("follow_state() does not take stop_at_up_to_date; use live=False")
    target: StateStore = store if store is not None else MaterializedState()
    if offset is None:
        offset = target.offset or "-1"
    response = stream(url, offset=offset, live=live, **read_options)
    try:
        if response.content_type is not None and not P.is_json(response.content_type):
            raise ValueError(
                f"the stream has content type {response.content_type!r}; State Protocol "
                "streams are JSON streams (application/json)")
        return StateFollower(response, target, on_change=on_change, on_invalid=on_invalid,
                             max_txids=max_txids, max_held_events=max_held_events)
    except BaseException:
        response.close()
        raise

