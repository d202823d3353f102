"""Stopping a read from another thread: ``close()``, the ``stop_after`` deadline, backoffs.

A :class:`StopSignal` belongs to one read. Any thread may call :meth:`StopSignal.interrupt`;
the reading thread then ends quietly at its next check (:class:`Stopped`), and is woken at
once wherever it may be blocked:

- waiting for a live request's answer, on the default transport (:meth:`StopSignal.send`):
  the transport hands over the request's socket once it is written, and that socket is shut
  down, which ends the wait at once; no extra thread;
- waiting for a live request's answer through a user's ``requests.Session``, where no socket
  is reachable before the response headers arrive: the request runs on a short-lived helper
  thread (:meth:`StopSignal.call`); the reader stops waiting and the abandoned response is
  closed when it comes;
- reading an SSE body: the watched response (:meth:`StopSignal.watch`) is shut down
  (urllib3's ``HTTPResponse.shutdown()``), which wakes a blocked ``recv`` (closing it from
  another thread does not);
- sleeping between retries (:meth:`StopSignal.sleep`).

Lock order: :attr:`StopSignal.lock` is the only lock of a read and is never held while a
request is made, a body is read or a socket is shut down. A socket is shut down only while
its request is pending or its response is watched: the reading thread forgets it (under the
lock) before looking at :attr:`StopSignal.reason`, and closes the response when stopping, so
a connection that was shut down never goes back to the shared pool.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ._response import Response

__all__ = ["OnSent", "StopSignal", "Stopped"]

#: The transport's hook: called with a request's socket once the request is written.
OnSent = Callable[[socket.socket], None]


class Stopped(Exception):
    """Internal: the response was closed or its deadline passed; end quietly."""


class _Call:
    """A request run on a helper thread so that the caller can stop waiting for it."""

    __slots__ = ("done", "outcome", "abandoned")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: tuple[bool, Any] | None = None
        self.abandoned = False


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the reading thread: nothing to do
        sock.shutdown(socket.SHUT_RDWR)


def _close_if_response(value: Any) -> None:
    if isinstance(value, Response):
        value.close()


class StopSignal:
    """The cross-thread stop state of one read (see the module docstring).

    ``reason`` is ``None`` while reading, then ``"closed"`` or ``"deadline"``; it is set
    once. ``lock`` also guards the owner's own cross-thread fields (the consumer guard).
    """

    __slots__ = ("lock", "reason", "_event", "_waiter", "_sock", "_watched", "_timer", "_done")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reason: str | None = None
        self._event = threading.Event()
        self._waiter: _Call | None = None
        self._sock: socket.socket | None = None  # of the pending request (send())
        self._watched: Response | None = None
        self._timer: threading.Timer | None = None
        self._done = False  # no deadline timer may start any more

    # -- any thread -----------------------------------------------------------------------
    def interrupt(self, reason: str) -> None:
        """Stop the read (first reason wins) and wake the reading thread wherever it waits."""
        with self.lock:
            if self.reason is None:
                self.reason = reason
            call = self._waiter
            sock = self._sock
            watched = self._watched
        self._event.set()
        if call is not None:
            call.done.set()
        if sock is not None:
            _shutdown(sock)
        if watched is not None:
            watched.shutdown()

    def start_deadline(self, deadline: float) -> None:
        """Interrupt with ``"deadline"`` at ``deadline`` (a ``time.monotonic()`` value)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.interrupt("deadline")
            return
        timer = threading.Timer(remaining, self.interrupt, args=("deadline",))
        timer.daemon = True
        with self.lock:
            if self._done:
                return
            self._timer = timer
        timer.start()

    def finish(self) -> None:
        """The read is over: cancel the deadline timer (no new one starts)."""
        with self.lock:
            self._done = True
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    # -- the reading thread ---------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self.reason is not None

    def check(self) -> None:
        """Raise :class:`Stopped` once the read was interrupted."""
        if self.reason is not None:
            raise Stopped

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; raise :class:`Stopped` at once if interrupted meanwhile."""
        if self._event.wait(seconds):
            raise Stopped

    def watch(self, response: Response) -> None:
        """Let :meth:`interrupt` wake a read of ``response``'s body (closed if stopping)."""
        with self.lock:
            if self.reason is not None:
                response.close()
                raise Stopped
            self._watched = response

    def unwatch(self) -> None:
        with self.lock:
            self._watched = None

    def call(self, fn: Callable[[], Response]) -> Response:
        """Run ``fn`` on a helper thread and wait for it unless :meth:`interrupt` intervenes.

        A live request blocks until the server answers (up to the long-poll hold) and no
        socket is reachable before the response headers arrive, so this is the one way to
        let another thread stop the wait. An abandoned request finishes in the background
        and its response is closed then.
        """
        call = _Call()

        def run() -> None:
            outcome: tuple[bool, Any]
            try:
                outcome = (True, fn())
            except BaseException as exc:  # handed over to the waiting thread
                outcome = (False, exc)
            with self.lock:
                abandoned = call.abandoned
                if not abandoned:
                    call.outcome = outcome
            if abandoned:
                _close_if_response(outcome[1])
            call.done.set()

        with self.lock:
            if self.reason is not None:
                raise Stopped
            self._waiter = call
        threading.Thread(target=run, name="durable-streams-read", daemon=True).start()
        try:
            call.done.wait()
        except BaseException:  # e.g. KeyboardInterrupt: let the helper clean up after itself
            with self.lock:
                self._waiter = None
                call.abandoned = call.outcome is None
                outcome = call.outcome
            if outcome is not None:
                _close_if_response(outcome[1])
            raise
        with self.lock:
            self._waiter = None
            outcome = call.outcome
            if outcome is None:
                call.abandoned = True
                raise Stopped
        ok, value = outcome
        if not ok:
            raise value
        if self.reason is not None:
            value.close()
            raise Stopped
        response: Response = value
        return response

    def send(self, fn: Callable[[OnSent], Response]) -> Response:
        """Run ``fn(on_sent)`` on this thread; :meth:`interrupt` ends the wait for its answer.

        ``fn`` makes one request and passes ``on_sent`` to a transport that calls it with
        the request's socket once the request is written (``HttpClient.send(on_sent=...)``
        on the default path). :meth:`interrupt` shuts that socket down, so ``fn`` fails at
        once, which ends the read quietly; when already stopping, ``on_sent`` shuts it down
        itself. A response that arrives while stopping is closed.
        """
        self.check()
        try:
            response = fn(self._sent)
        except Exception:
            if self.reason is not None:
                raise Stopped from None
            raise
        finally:
            with self.lock:
                self._sock = None
        if self.reason is not None:  # read after forgetting the socket (see module doc)
            response.close()
            raise Stopped
        return response

    def _sent(self, sock: socket.socket) -> None:
        with self.lock:
            self._sock = sock
            stopping = self.reason is not None
        if stopping:
            _shutdown(sock)
