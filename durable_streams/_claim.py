"""A pull-wake claim (PROTOCOL §7.2, §7.3): the lease a worker holds on a subscription's
pending work, its heartbeat thread, acks and release."""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any

from . import errors
from ._wake import AckResult, LinkedStream, ack_body, parse_streams

if TYPE_CHECKING:
    from .reading import StreamResponse
    from .subscriptions import Subscription

__all__ = ["Claim"]

log = logging.getLogger("durable_streams.subscriptions")

#: The heartbeat extends the lease every ``lease_ttl_ms / HEARTBEATS_PER_LEASE``.
HEARTBEATS_PER_LEASE = 4


class Claim:
    """The lease on a subscription's pending work, won by :meth:`Subscription.claim`.

    ``streams`` is the server's snapshot of every linked stream (path, acked offset, tail
    offset, has-pending); :attr:`pending` keeps those with work. Read a stream's pending data
    with :meth:`read`, record progress with :meth:`ack`, and end the claim with
    ``ack(..., done=True)`` or :meth:`release`. Used as a context manager the claim ends by
    itself: with ``done`` and every ack given when the block ends normally, with a release
    (the work is offered again) when it raises.

    While the claim is open a heartbeat thread extends the lease ``HEARTBEATS_PER_LEASE``
    times per ``lease_ttl_ms``. If the lease is lost anyway (the process stalled, the
    network failed), :attr:`fenced` becomes true and the next ack, heartbeat or release
    raises :class:`FencedError`: stop working, another worker may have the work now.
    """

    def __init__(self, subscription: Subscription, worker: str, doc: Mapping[str, Any], *,
                 heartbeat: bool = True) -> None:
        self.subscription = subscription
        self.worker = worker
        self.wake_id = str(doc["wake_id"])
        self.generation = int(doc["generation"])
        self.lease_ttl_ms = int(doc.get("lease_ttl_ms") or 30_000)
        self.streams: tuple[LinkedStream, ...] = parse_streams(doc.get("streams"))
        self._token = str(doc["token"])
        self._acks: dict[str, str] = {}
        self._lock = threading.RLock()
        self._finished = False
        self._fenced = threading.Event()
        self._stop = threading.Event()
        self._last_extended = time.monotonic()
        #: ``next_wake`` of the final ack: True when more work was pending at that time.
        self.next_wake: bool | None = None
        self._thread: threading.Thread | None = None
        if heartbeat:
            # The thread holds the claim weakly: a claim its owner dropped without ending
            # it stops being extended, so its lease expires and the work is offered again.
            self._thread = threading.Thread(
                target=_heartbeat_loop, args=(weakref.ref(self), self._stop), daemon=True,
                name=f"ds-heartbeat-{subscription.subscription_id}-{self.generation}",
            )
            self._thread.start()

    # -- state ----------------------------------------------------------------------------
    @property
    def fenced(self) -> bool:
        """True once the server said this lease is no longer current (409 ``FENCED``)."""
        return self._fenced.is_set()

    @property
    def finished(self) -> bool:
        """True after a ``done`` ack, a release, or fencing."""
        return self._finished

    @property
    def pending(self) -> tuple[LinkedStream, ...]:
        """The streams of the snapshot that have data past their acked offset."""
        return tuple(s for s in self.streams if s.has_pending)

    @property
    def acks(self) -> dict[str, str]:
        """The offsets acked through this claim so far, by stream path."""
        return dict(self._acks)

    def wait_fenced(self, timeout: float | None = None) -> bool:
        """Block until the lease is lost (or ``timeout``); True if it was."""
        return self._fenced.wait(timeout)

    def stream(self, path: str) -> LinkedStream:
        """The snapshot entry of ``path``; ``KeyError`` naming the claim's streams if none."""
        for linked in self.streams:
            if linked.path == path:
                return linked
        known = ", ".join(s.path for s in self.streams) or "none"
        raise KeyError(f"{path!r} is not a stream of this claim (its streams: {known})")

    # -- reading --------------------------------------------------------------------------
    def read(self, path: str, **options: Any) -> StreamResponse:
        """Read ``path`` from its acked offset (``"-1"``: the beginning) to its tail.

        A catch-up :func:`durable_streams.stream` read: it ends when it reaches the stream's
        tail, which is at or past the claim's snapshot (data appended since the claim is
        included). After consuming it, ack ``response.offset``. ``options`` go to
        ``stream()`` (not ``offset``/``live``).
        """
        for name in ("offset", "live"):
            if name in options:
                raise TypeError(f"Claim.read() sets {name}= itself (from the acked offset)")
        linked = self.stream(path)
        start = self._acks.get(path, linked.acked_offset)
        return self.subscription._read(path, start, **options)

    # -- acks and release -----------------------------------------------------------------
    def ack(self, acks: Mapping[str, str] | None = None, *,
            done: bool = False) -> AckResult:
        """Record processed offsets and return the server's :class:`AckResult`.

        Args:
            acks: ``{stream path: offset}``, each offset the position *after* the last
                message processed (a ``StreamResponse.offset``), for streams of this claim
                only. ``None`` or ``{}`` acks nothing (a heartbeat). Offsets given here are
                remembered: :meth:`read` starts after them, and the ``done`` ack sent when a
                ``with claim:`` block ends repeats them.
            done: ``False`` (default) records progress and extends the lease;
                ``True`` ends the claim: the lease is released and, if work is left, the
                server wakes a worker again (``result.next_wake`` says whether it did).

        Raises :class:`FencedError` if the lease was lost, :class:`InvalidOffsetError` for an
        offset the server refuses (unknown stream, ``"-1"``, before the acked offset, beyond
        the tail), ``TypeError`` for a non-string path or offset, ``RuntimeError`` when the
        claim already ended. (Before 0.1.0 this returned ``next_wake`` as a bool; using the
        result's truth value still works, with a ``DeprecationWarning``.)
        """
        clean: dict[str, str] = {}
        for path, offset in (acks or {}).items():
            if not isinstance(path, str) or not isinstance(offset, str):
                raise TypeError(f"acks must map stream paths to offset strings, got "
                                f"{path!r}: {offset!r}")
            clean[path] = offset
        with self._lock:
            self._check_open("ack")
            result = self._send_ack(clean, done=done, operation="ack")
            self._acks.update(clean)
            if done:
                self._finish(result.next_wake)
            return result

    def heartbeat(self) -> None:
        """Extend the lease now (an ack without offsets). The heartbeat thread calls this."""
        with self._lock:
            self._check_open("heartbeat")
            self._send_ack({}, done=False, operation="heartbeat")

    def release(self) -> None:
        """Give the lease back without acking more; pending work is woken again."""
        with self._lock:
            self._check_open("release")
            body = json.dumps({"wake_id": self.wake_id, "generation": self.generation}).encode()
            self._request("release", body, idempotent=False)
            self._finish(None)

    def _check_open(self, operation: str) -> None:
        if self._fenced.is_set():
            raise self._fenced_error(operation)
        if self._finished:
            raise RuntimeError(
                f"{operation}: this claim (generation {self.generation}) already ended with a "
                "done ack or a release; claim again for more work"
            )

    def _fenced_error(self, operation: str) -> errors.FencedError:
        return errors.FencedError(
            f"{operation} refused: the lease of worker {self.worker!r} on subscription "
            f"{self.subscription.subscription_id!r} (generation {self.generation}) was lost; "
            "another worker may be processing this work now: stop and do not ack it",
            url=self.subscription.safe_url,
        )

    def _send_ack(self, acks: Mapping[str, str], *, done: bool,
                  operation: str) -> AckResult:
        body = ack_body(self.wake_id, self.generation, acks, done=done)
        response = self._request(operation, body, idempotent=not done)
        self._last_extended = time.monotonic()
        return AckResult.from_body(response.content)

    def _request(self, operation: str, body: bytes, *, idempotent: bool) -> Any:
        suffix = "/release" if operation == "release" else "/ack"
        hint = ""
        if operation == "ack":
            hint = ("Ack offsets of this claim's streams only, not '-1', not before the acked "
                    "offset and not beyond the tail")
        try:
            return self.subscription._call(
                "POST", suffix, operation=operation, data=body, token=self._token,
                idempotent=idempotent, hint=hint,
            )
        except (errors.FencedError, errors.SubscriptionNotFoundError) as exc:
            self._fenced.set()
            self._finish(None)
            raise self._fenced_error(operation) from exc

    def _finish(self, next_wake: bool | None) -> None:
        self._finished = True
        self.next_wake = next_wake
        self._stop.set()

    # -- heartbeat ------------------------------------------------------------------------
    def _stop_heartbeat(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)

    # -- context manager ------------------------------------------------------------------
    def __enter__(self) -> Claim:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self._fenced.is_set() and exc_type is None:
                raise self._fenced_error("done ack")  # the work's acks did not land
            if self._finished:
                return
            if exc_type is None:
                self.ack(self._acks, done=True)
            else:
                try:
                    self.release()
                except errors.DurableStreamError as err:
                    log.warning("release after %s failed: %s", exc_type.__name__, err)
        finally:
            self._stop_heartbeat()

    def close(self) -> None:
        """End the claim as a normal exit of its ``with`` block does (done + acks given)."""
        self.__exit__(None, None, None)

    def __repr__(self) -> str:
        state = "fenced" if self.fenced else "finished" if self._finished else "open"
        return (f"Claim(subscription={self.subscription.subscription_id!r}, "
                f"worker={self.worker!r}, generation={self.generation}, {state}, "
                f"pending={[s.path for s in self.pending]})")


def _heartbeat_loop(ref: weakref.ReferenceType[Claim], stop: threading.Event) -> None:
    claim = ref()
    if claim is None:
        return
    interval = max(claim.lease_ttl_ms / 1000.0 / HEARTBEATS_PER_LEASE, 0.05)
    sub_id = claim.subscription.subscription_id
    del claim
    while not stop.wait(interval):
        claim = ref()
        if claim is None:
            log.warning("a claim on subscription %r was dropped without a done ack or a "
                        "release; its lease will expire", sub_id)
            return
        try:
            claim.heartbeat()
        except errors.FencedError:
            log.warning("claim on subscription %r (generation %d) was fenced: the lease "
                        "was lost", sub_id, claim.generation)
            return
        except RuntimeError:
            return  # ended meanwhile
        except errors.DurableStreamError as exc:
            log.warning("heartbeat for subscription %r failed (will retry): %s", sub_id, exc)
        finally:
            del claim
