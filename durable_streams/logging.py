"""A :mod:`logging` handler that ships every record to a durable stream.

Each record becomes one JSON object (see :meth:`DurableStreamHandler.record_to_dict`), sent
through an :class:`~durable_streams.IdempotentProducer`: ``emit()`` only puts the record in a
buffer, background threads check the stream, batch and send, and retries are deduplicated by
the server. Constructing the handler does no network I/O, so a log server that is down, slow
or silent never delays or breaks the application's start-up. ``close()`` flushes;
:func:`logging.shutdown` calls it at interpreter exit.

Works with :func:`logging.config.dictConfig`::

    logging.config.dictConfig({
        "version": 1,
        "handlers": {
            "stream": {
                "class": "durable_streams.logging.DurableStreamHandler",
                "url": "https://streams.example.com/v1/stream/app-logs",
                "producer_id": "web-1",
                "level": "INFO",
            },
        },
        "root": {"handlers": ["stream"], "level": "INFO"},
    })

(This module is ``durable_streams.logging``; it imports the standard library's ``logging``
with an absolute import, so the two never shadow each other.)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import socket
import threading
import time
import uuid
from typing import Any

from . import _protocol as P
from . import errors
from ._log_backlog import Backlog, Drops, warn
from ._log_record import JsonRecords
from ._log_startup import MAX_DELAY, StreamCheck, check_stream, retry_delay
from ._producer.options import pass_through_exit_timeout
from ._redact import redact_text, redact_url
from .producer import IdempotentProducer
from .stream import DurableStream

__all__ = ["DurableStreamHandler"]

_LIBRARY_LOGGER = "durable_streams"
_DEFAULT_BUFFER = 64 * 1024 * 1024

# Taken by the first thread of a forked child that notices the fork (a handler's own lock
# may have been held by another thread at fork time, so it cannot be used for that).
_fork_lock = threading.Lock()


def _reset_fork_lock() -> None:
    global _fork_lock
    _fork_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_fork_lock)


def _one_line(exc: BaseException) -> str:
    return redact_text(" ".join(str(exc).split()) or type(exc).__name__)


def _check_arguments(url: object, producer_id: str | None, create: object,
                     content_type: object, close_timeout: object,
                     producer_options: dict[str, Any],
                     ) -> tuple[DurableStream | None, str, dict[str, Any], Any]:
    """The handler's arguments checked (``TypeError``/``ValueError`` naming the bad one):
    (the handle or None, the producer id, the producer options with the handler's
    defaults, the application's ``on_error`` or None)."""
    handle = url if isinstance(url, DurableStream) else None
    if handle is None and not isinstance(url, str):
        raise TypeError(f"url must be a URL string or a DurableStream, got "
                        f"{type(url).__name__}")
    if isinstance(url, str) and not url.startswith(("http://", "https://")):
        raise ValueError(f"url must be an http:// or https:// URL, got "
                         f"{redact_url(url)!r}")
    if producer_id is None:
        producer_id = f"log-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if not isinstance(producer_id, str) or not producer_id.strip():
        raise ValueError(f"producer_id must be a non-empty string, got {producer_id!r}")
    if not isinstance(create, bool):
        raise TypeError(f"create must be True or False, got {create!r}")
    if content_type is not None and (not isinstance(content_type, str)
                                     or not content_type.strip()):
        raise ValueError(f"content_type must be a non-empty string such as "
                         f"'application/json', got {content_type!r}")
    if (isinstance(close_timeout, bool) or not isinstance(close_timeout, (int, float))
            or not math.isfinite(close_timeout) or close_timeout < 0):
        raise ValueError(f"close_timeout must be a finite number of seconds >= 0, got "
                         f"{close_timeout!r}")
    options: dict[str, Any] = dict(producer_options)
    # stacklevel: the warning points at the caller of DurableStreamHandler()
    pass_through_exit_timeout(options, "DurableStreamHandler()", stacklevel=5)
    user_on_error = options.pop("on_error", None)
    if user_on_error is not None and not callable(user_on_error):
        raise TypeError("on_error must be a callable taking one exception")
    options.setdefault("auto_claim", True)
    options.setdefault("max_block_ms", 0)
    options.setdefault("flush_at_exit", False)
    return handle, producer_id, options, user_on_error


class DurableStreamHandler(JsonRecords, logging.Handler):
    """Ship log records, one JSON object each, to a durable stream.

    Constructing the handler never touches the network and never waits: it only checks its
    arguments (a bad one raises ``TypeError``/``ValueError`` at once, naming it, and leaves
    nothing behind). A background thread then checks that the stream exists (one ``HEAD``)
    or creates it (``create``), retrying with growing waits (from about 0.5 s, doubling,
    up to 30 s) while the server is down, silent or refusing, or the stream is missing,
    closed or of another type. Until the check succeeds, records are kept in memory (at most
    ``max_buffer_bytes``); then they are sent, in order, before any later record.

    Args:
        url: the stream URL (``http://`` or ``https://``), or a
            :class:`~durable_streams.DurableStream` handle, whose headers, params, retry
            policy and session are used for sending (the check uses its headers and params).
        producer_id: the writer id (``Producer-Id``, PROTOCOL.md §5.2.1). Reusing the same
            id after a restart is fine: the producer claims a new epoch (``auto_claim``
            defaults to True here). Default: ``log-<hostname>-<pid>-<random>``. After
            ``os.fork()`` the child uses ``<producer_id>-<child pid>``.
        create: True to create the stream if it does not exist (``PUT``, PROTOCOL.md §5.1)
            as ``content_type``; an existing stream with the same content type is used as
            is, one with another type is reported (see below) and never written to.
            Default False: the stream must exist (checked with ``HEAD``).
        content_type: the content type to create the stream with (default
            ``application/json``); giving it implies ``create=True``. A JSON stream
            stores one message per record; any other stream gets one JSON line (the
            object followed by ``\\n``) per record. Without ``create`` the stream's own
            type, learned by the check, decides.
        level: the handler's level (a number or a name such as ``"INFO"``); default
            ``NOTSET`` (every record that reaches the handler).
        close_timeout: seconds (a finite number >= 0; default 10) that :meth:`flush` and
            :meth:`close` each wait: for the stream check to succeed, then for the records
            to be acknowledged. At exit, :func:`logging.shutdown` calls both.
        **producer_options: passed to :class:`~durable_streams.IdempotentProducer` and
            checked at construction: ``linger_ms``, ``max_batch_bytes``,
            ``max_in_flight``, ``delivery_timeout_ms``, ``headers``, ``session``,
            ``retry``, ``epoch``... The handler changes some defaults and uses some:

            - ``max_block_ms`` (default **0** here): how long ``emit()`` may wait for room
              in a full buffer; 0 drops the record instead of blocking the logging thread.
            - ``max_buffer_bytes`` (default 64 MiB): bounds the records kept while the
              stream is not available yet, and then the producer's buffer.
            - ``max_batch_bytes`` (default 1 MiB): a record larger than this is dropped
              (and counted), as one message cannot be split.
            - ``auto_claim`` (default **True** here) and ``flush_at_exit`` (default
              **False** here: :func:`logging.shutdown` closes the handler at exit).
            - ``request_timeout``: also the timeout of each stream check (default 5 s to
              connect, 5 s to read).
            - ``on_error``: called as usual with each delivery failure, after the handler
              has counted and reported it.

    Nothing is dropped silently. Every record that is not delivered is counted in
    :attr:`dropped` and reported on stderr (like :meth:`logging.Handler.handleError`, not
    through logging, which could loop): records refused by ``emit()`` (buffer full, too
    large, handler closed: one line per run of drops), records the producer failed to
    deliver (at most one line per 10 s), and records still waiting for the stream when
    :meth:`close` gives up (one line, with the check's last error). The first failed check
    is reported once, and so is the recovery.

    If the producer stops for good (for example the stream was deleted), the handler starts
    a new one and checks the stream again (keeping new records meanwhile), so logging
    resumes by itself once the stream is back; the failed records are counted and reported.

    Records of the ``durable_streams`` loggers, records emitted on this handler's own
    threads (e.g. ``urllib3`` debug lines about its requests) and records emitted while
    this handler is emitting on the same thread are dropped without counting, so that
    shipping logs never feeds itself.

    After ``os.fork()`` (gunicorn ``--preload``, multiprocessing) the child gets a fresh
    producer on its first record: the parent's buffer and sequence numbers stay with the
    parent.
    """

    def __init__(
        self,
        url: str | DurableStream,
        producer_id: str | None = None,
        *,
        create: bool = False,
        content_type: str | None = None,
        level: int | str = logging.NOTSET,
        close_timeout: float = 10.0,
        **producer_options: Any,
    ) -> None:
        # Every argument is checked before logging.Handler.__init__ registers the handler
        # for logging.shutdown(): a construction that raises leaves nothing behind.
        handle, producer_id, options, user_on_error = _check_arguments(
            url, producer_id, create, content_type, close_timeout, producer_options)
        options["on_error"] = self._on_producer_error

        self.url: str = handle.url if handle is not None else str(url)
        self._where = redact_url(self.url)
        self.producer_id = producer_id
        self.close_timeout = float(close_timeout)
        self._create = create or content_type is not None
        self._create_type = (content_type or "application/json") if self._create else None
        #: The stream's content type: known from ``content_type``/``create`` or the handle,
        #: otherwise learned by the stream check (None until then).
        self.content_type: str | None = self._create_type or (
            handle.content_type if handle is not None else None)
        self._json_mode = P.is_json(self.content_type)
        self._options = options
        self._user_on_error = user_on_error
        self._given_handle = handle
        self._origin_pid = self._pid = os.getpid()
        self._current_id = producer_id
        # The producer checks every option here (no network I/O, no thread).
        producer = self._new_producer(producer_id)
        self._backlog = Backlog(int(options.get("max_buffer_bytes", _DEFAULT_BUFFER)),
                                int(options.get("max_batch_bytes", 1024 * 1024)))
        try:
            super().__init__(level)
        except BaseException:
            with contextlib.suppress(Exception):
                producer.close(timeout=0)
            raise

        self._local = threading.local()
        # Guards the fields below (not the counters' readers) and the backlog: held only
        # briefly, never during a request. Lock order: logging's handler lock -> this ->
        # producer lock; the drop counter's own lock (_log_backlog.Drops) is taken last.
        self._lock = threading.Lock()
        self._producer: IdempotentProducer | None = producer
        self._ready = False  # the stream was checked: records go to the producer
        self._ready_event = threading.Event()
        self._closed = False
        self._abandoned = False  # close() gave up on the kept records
        self._drops = Drops(self._where)
        self._last_error: str | None = None
        self._reported_unavailable = False
        self._restarts = 0
        self._check: StreamCheck | None = self._start_check(0.0)

    # -- the stream check (on its own thread) ------------------------------------------
    def _start_check(self, first_delay: float,
                     retire: IdempotentProducer | None = None) -> StreamCheck:
        def prepare() -> None:
            self._local.emitting = True  # this thread's own records never come back here
            if retire is not None:
                with contextlib.suppress(Exception):
                    retire.close(timeout=0)

        attempt = functools.partial(check_stream, self.url, handle=self._given_handle,
                                    options=self._options, create_type=self._create_type)
        return StreamCheck(attempt, on_ready=self._on_ready,
                           on_failure=self._on_check_failure, prepare=prepare,
                           first_delay=first_delay,
                           name=f"durable-streams-log-check-{self._current_id}").start()

    def _on_check_failure(self, exc: BaseException, failures: int) -> None:
        text = _one_line(exc)
        with self._lock:
            self._last_error = text
            first = not self._reported_unavailable and not self._closed
            self._reported_unavailable = True
        if first:
            warn(f"the log stream {self._where} is not available yet ({text}); "
                 f"records are kept (up to {self._backlog.limit} bytes) and it is checked "
                       f"again, at least every {MAX_DELAY:.0f} s")

    def _on_ready(self, content_type: str | None) -> None:
        with self._lock:
            if self._abandoned or self._pid != os.getpid() or self._producer is None:
                return
            self.content_type = content_type or self._create_type or P.DEFAULT_CONTENT_TYPE
            self._json_mode = P.is_json(self.content_type)
            producer = self._producer
            sent = lost = 0
            for text in self._backlog.take_all():
                try:
                    producer.append(self._framed(text))
                    sent += 1
                except (errors.DurableStreamError, ValueError):
                    lost += 1
            self._drops.lost(lost)
            self._ready = True
            self._check = None
            self._ready_event.set()
            recovered, self._reported_unavailable = self._reported_unavailable, False
        if recovered:
            warn(f"the log stream {self._where} is available; {sent} kept record(s) sent")
        if lost:
            warn(f"dropping log records for {self._where}: {lost} kept record(s) did not "
                 "fit in the producer's buffer")

    # -- producer management ----------------------------------------------------------
    def _new_producer(self, producer_id: str) -> IdempotentProducer:
        options = dict(self._options)
        options["content_type"] = self.content_type
        handle = self._given_handle
        if handle is not None and os.getpid() == self._origin_pid:
            target: str | DurableStream = handle
        elif handle is not None:
            # After a fork: not the parent's session (its pooled sockets are shared).
            target = handle.url
            options.setdefault("headers", handle.headers)
        else:
            target = self.url
        return IdempotentProducer(target, producer_id, **options)

    def _check_fork(self) -> None:
        if self._pid == os.getpid():
            return
        with _fork_lock:
            if self._pid == os.getpid():
                return
            # Forked: the inherited producer, check and kept records belong to the parent.
            self._lock = threading.Lock()
            self._backlog = self._backlog.fresh()
            self._drops.after_fork_in_child()
            self._ready_event = threading.Event()
            self._check = None
            self._current_id = f"{self.producer_id}-{os.getpid()}"
            if self._closed:
                self._producer = None
            else:
                self._producer = self._new_producer(self._current_id)
                if self._ready:
                    self._ready_event.set()
                else:
                    self._check = self._start_check(0.0)
            self._pid = os.getpid()

    def _restart(self, stale: IdempotentProducer, text: str, exc: BaseException) -> None:
        """The producer stopped for good: a new one, after the stream is checked again."""
        with self._lock:
            if self._producer is stale and self._ready and not self._closed:
                acked = stale.stats().messages_acked
                self._restarts = 1 if acked else self._restarts + 1
                self._ready = False
                self._ready_event.clear()
                self._last_error = _one_line(exc)
                self._producer = self._new_producer(self._current_id)
                self._check = self._start_check(retry_delay(self._restarts), retire=stale)
        self._hold(text)

    @property
    def producer(self) -> IdempotentProducer | None:
        """The producer currently used by this process (``None`` once closed)."""
        return self._producer if self._pid == os.getpid() else None

    @property
    def available(self) -> bool:
        """True once the stream check succeeded and records go to the producer."""
        return self._ready and self._pid == os.getpid() and not self._closed

    @property
    def dropped(self) -> int:
        """Records that were not and will not be delivered (see the class docs): refused
        by ``emit()``, failed by the producer, or still waiting for the stream at close."""
        return self._drops.count

    # -- logging.Handler ----------------------------------------------------------------
    def filter(self, record: logging.LogRecord) -> bool:
        # Runs before Handler.handle() takes the handler lock: records the handler itself
        # causes are dropped here, so a producer thread never waits for that lock.
        if getattr(self._local, "emitting", False):
            return False
        name = record.name
        if name == _LIBRARY_LOGGER or name.startswith(_LIBRARY_LOGGER + "."):
            return False
        # Records logged on the producer's own threads (the HTTP client's debug lines while
        # sending, on_error) must not come back here.
        producer = self._producer
        if producer is not None and producer.owns_current_thread():
            return False
        return super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        local = self._local
        local.emitting = True
        try:
            text = self.format(record)
            self._check_fork()
            producer = self._producer
            if self._ready and producer is not None:
                self._deliver(producer, text)
            else:
                self._hold(text)
        except RecursionError:  # as logging's own handlers do
            raise
        except Exception:
            self.handleError(record)
        finally:
            local.emitting = False

    def _framed(self, text: str) -> str:
        return text if self._json_mode else text + "\n"

    def _deliver(self, producer: IdempotentProducer, text: str) -> None:
        try:
            producer.append(self._framed(text))
        except errors.BufferFullError as exc:
            self._drops.refused(str(exc))
            return
        except ValueError as exc:  # larger than max_batch_bytes
            self._drops.refused(str(exc))
            return
        except errors.DurableStreamError as exc:  # the producer stopped or was closed
            if self._closed:
                self._drops.refused(f"the log handler for {self._where} is closed")
            else:
                self._restart(producer, text, exc)
            return
        self._drops.accepted()

    def _hold(self, text: str) -> None:
        """Keep a record until the stream is available (or send it, if it now is)."""
        reason = None
        with self._lock:
            producer = self._producer
            if self._closed or producer is None:
                reason = f"the log handler for {self._where} is closed"
            elif not self._ready:
                reason = self._backlog.keep(text, self._last_error)
                if reason is None:
                    self._drops.accepted()
                    return
        if reason is not None:
            self._drops.refused(reason)
        elif producer is not None:
            self._deliver(producer, text)

    def _on_producer_error(self, err: errors.DurableStreamError) -> None:
        # On the producer's callback thread, for every delivery failure.
        self._drops.failed(len(getattr(err, "undelivered", ()) or ()), err)
        if self._user_on_error is not None:
            self._user_on_error(err)

    def flush(self) -> None:
        """Wait up to ``close_timeout`` until every record so far is acknowledged.

        While the stream is not available yet, this first waits for the check to succeed;
        records still kept after the timeout stay kept (:meth:`close` reports them).
        """
        self._check_fork()
        deadline = time.monotonic() + self.close_timeout
        if self._closed or not self._ready_event.wait(self.close_timeout):
            return
        producer = self.producer
        if producer is None or producer.closed:
            return
        try:
            producer.flush(timeout=max(0.0, deadline - time.monotonic()))
        except (errors.DurableStreamError, TimeoutError) as exc:
            warn(f"log records for {self._where} were not delivered: {exc}")

    def close(self) -> None:
        """Flush (up to ``close_timeout``) and close the producer; the stream stays open.

        Records still waiting for the stream are counted in :attr:`dropped` and reported.
        Idempotent.
        """
        self._check_fork()
        deadline = time.monotonic() + self.close_timeout
        with self._lock:
            already, self._closed = self._closed, True
            check = self._check
        try:
            if not already:
                self._close_once(check, deadline)
        finally:
            super().close()

    def _close_once(self, check: StreamCheck | None, deadline: float) -> None:
        if check is not None:
            check.stop()  # no new attempt; one already running may still succeed
            if check.attempting:
                check.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            ready = self._ready
            lost = 0
            if not ready:
                self._abandoned = True
                lost = len(self._backlog.take_all())
                self._drops.lost(lost)
            producer, self._producer = self._producer, None
            last = self._last_error
        if lost:
            why = (f"the stream was not available (last error: {last})" if last
                   else "the stream check did not finish within close_timeout")
            warn(f"{lost} log record(s) were not delivered to {self._where}: {why}")
        if producer is None:
            return
        try:
            producer.close(timeout=max(0.0, deadline - time.monotonic()) if ready else 0.0)
        except (errors.DurableStreamError, TimeoutError) as exc:
            if ready:
                warn(f"log records for {self._where} were not delivered: {exc}")

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<{type(self).__name__} {self._where} ({level})>"
