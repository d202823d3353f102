"""The log handler's stream check: make sure the stream exists, in the background.

:class:`StreamCheck` owns one daemon thread that calls ``attempt()`` (one HEAD, or one PUT
to create the stream) until it succeeds, waiting longer after each failure, and then calls
``on_ready(content_type)`` once. It never runs on the application's thread: constructing a
:class:`~durable_streams.logging.DurableStreamHandler` (at ``dictConfig`` time) does no
network I/O, so a log server that is down or silent cannot delay or break start-up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from . import _jitter, errors
from ._http import NO_RETRY
from ._redact import redact_url
from .stream import DurableStream

#: Seconds before the second attempt; doubled after each failure up to :data:`MAX_DELAY`.
FIRST_DELAY = 0.5
#: The longest wait between two attempts (seconds).
MAX_DELAY = 30.0
#: The timeout of each attempt when ``request_timeout`` is not given (connect, read).
CHECK_TIMEOUT = (5.0, 5.0)


def retry_delay(failures: int) -> float:
    """The wait after ``failures`` consecutive failed attempts (with jitter)."""
    base = min(MAX_DELAY, FIRST_DELAY * (2.0 ** min(failures - 1, 16)))
    return base / 2 + _jitter.fraction() * base / 2


class StreamCheck:
    """Run ``attempt`` on a background thread until it succeeds or :meth:`stop` is called.

    ``attempt()`` returns the stream's content type (or None) and raises on failure;
    ``on_failure(exc, failures)`` is called after each failed attempt (``failures`` counts
    them, from 1) and ``on_ready(content_type)`` once after the successful one. Both run on
    the check's thread. ``first_delay`` is waited before the first attempt.
    """

    def __init__(self, attempt: Callable[[], str | None], *,
                 on_ready: Callable[[str | None], None],
                 on_failure: Callable[[BaseException, int], None],
                 prepare: Callable[[], None] | None = None,
                 first_delay: float = 0.0, name: str = "durable-streams-log-check") -> None:
        self._attempt = attempt
        self._on_ready = on_ready
        self._on_failure = on_failure
        self._prepare = prepare
        self._first_delay = first_delay
        self._stop = threading.Event()
        #: True while an attempt (a request) is running.
        self.attempting = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> StreamCheck:
        self.thread.start()
        return self

    def stop(self) -> None:
        """No further attempt is started (a running one finishes)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def join(self, timeout: float | None) -> bool:
        """Wait for the thread to end; True if it has."""
        if self.thread is threading.current_thread():
            return False
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _run(self) -> None:
        if self._prepare is not None:
            self._prepare()
        delay = self._first_delay
        failures = 0
        while True:
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            self.attempting = True
            try:
                content_type = self._attempt()
            except Exception as exc:  # every failure is reported; the thread never dies of it
                self.attempting = False
                failures += 1
                self._on_failure(exc, failures)
                delay = retry_delay(failures)
                continue
            self.attempting = False
            self._on_ready(content_type)
            return


def check_stream(url: str, *, handle: DurableStream | None, options: dict[str, Any],
                 create_type: str | None) -> str | None:
    """One attempt: HEAD the stream (or, with ``create_type``, create it with one PUT);
    the stream's content type. Raises on failure, and for a closed stream. ``handle``
    (the handler's DurableStream, if given) brings its headers and params; ``options``
    are the producer options (``headers``, ``request_timeout``, ``session``)."""
    headers = handle.headers if handle is not None else options.get("headers")
    params = handle.params if handle is not None else None
    timeout = options.get("request_timeout") or CHECK_TIMEOUT
    session = options.get("session")
    if create_type is not None:
        created = DurableStream.create(
            url, content_type=create_type, headers=headers, params=params,
            session=session, timeout=timeout, retry=NO_RETRY)
        created.close()
        return created.content_type or create_type
    probe = DurableStream(url, headers=headers, params=params, session=session,
                          timeout=timeout, retry=NO_RETRY)
    try:
        info = probe.head()
    finally:
        probe.close()
    if info.closed:
        raise errors.StreamClosedError(
            f"the stream {redact_url(url)} is closed: appends are refused", url=url)
    return info.content_type
