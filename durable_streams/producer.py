"""IdempotentProducer: a non-blocking append buffer with background sender threads.

Messages go into a thread-safe buffer; up to ``max_in_flight`` sender threads seal batches
(by size, by linger time, or on flush) and POST them with ``Producer-Id``/``-Epoch``/``-Seq``
headers, retrying with the same (epoch, seq, body) so that the server deduplicates.
See PROTOCOL.md §5.2.1 and design.md decisions 3, 5–8.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests

from . import _protocol as P
from . import errors
from ._http import (
    DEFAULT_RETRY,
    NO_RETRY,
    HeadersLike,
    HttpClient,
    RetryPolicy,
    TimeoutLike,
    error_from,
    merge_headers,
    resolve,
)
from ._redact import redact_url
from .stream import DurableStream

__all__ = ["IdempotentProducer", "ProducerStats"]

log = logging.getLogger("durable_streams")

ErrorCallback = Callable[[errors.DurableStreamError], Any]

_MiB = 1024 * 1024
_live_producers: weakref.WeakSet[IdempotentProducer] = weakref.WeakSet()
_batch_ids = itertools.count()


@dataclass(frozen=True)
class ProducerStats:
    """A snapshot of a producer's counters (see :meth:`IdempotentProducer.stats`)."""

    messages_appended: int
    messages_acked: int
    messages_failed: int
    bytes_acked: int
    batches_sent: int
    requests_sent: int
    retries: int
    duplicates: int
    failures: int
    epoch_claims: int
    buffered_messages: int
    buffered_bytes: int
    pending_bytes: int
    in_flight: int


class _Batch:
    __slots__ = (
        "id", "messages", "nbytes", "first_index", "epoch", "seq", "gen", "body",
        "deadline", "attempts", "maybe_stored", "ambiguous", "state", "last_expected",
    )

    def __init__(self, messages: list[bytes], nbytes: int, first_index: int, body: bytes,
                 deadline: float) -> None:
        self.id = next(_batch_ids)
        self.messages = messages
        self.nbytes = nbytes
        self.first_index = first_index
        self.body = body
        self.deadline = deadline
        self.epoch = -1
        self.seq = -1
        self.gen = -1
        self.attempts = 0
        #: a send of the current (epoch, seq) may have been stored (no definite answer):
        #: only then can a 204 "duplicate" be ours
        self.maybe_stored = False
        #: some send of this batch had an unknown outcome (at-least-once if re-sequenced)
        self.ambiguous = False
        #: "active" (held by a sender), "parked" (waiting for re-sequencing), "done"
        self.state = "active"
        #: Producer-Expected-Seq of the last 409 that found no earlier batch in flight
        self.last_expected = -1


class _MarkedBody:
    """A request body that reports when its last byte has been handed to the socket.

    ``__len__`` makes requests send ``Content-Length`` (no chunked framing), so once the
    iterator is exhausted the whole request has been written.
    """

    __slots__ = ("body", "on_written")

    def __init__(self, body: bytes, on_written: Callable[[], None]) -> None:
        self.body = body
        self.on_written = on_written

    def __len__(self) -> int:
        return len(self.body)

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        self.on_written()


class _Park(Exception):
    """Internal: the batch must wait for re-sequencing in a new epoch."""


def _validate_int(name: str, py_name: str, value: Any, *, minimum: int,
                  maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{py_name} ({name}) must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{py_name} ({name}) must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{py_name} ({name}) must be <= {maximum}, got {value}")
    return value


class IdempotentProducer:
    """Exactly-once, fire-and-forget appends from ordinary synchronous code.

    ``append()`` only puts the message in a buffer and returns; sender threads (started on
    the first append) batch and send in the background, keep up to ``max_in_flight``
    requests in flight, and retry transient failures (connection errors, timeouts, 5xx,
    429) with the same producer headers and body until ``delivery_timeout_ms``, so the
    server stores each batch once.

    Every message is either acknowledged by the server or reported: to ``on_error`` (called
    on a dedicated thread, with the failed messages in ``err.undelivered``) and as a
    :class:`DeliveryError` from the next :meth:`flush` or :meth:`close`.

    ``close()`` (and leaving a ``with`` block) flushes and releases the producer but leaves
    the stream open; :meth:`close_stream` ends the stream for everyone.
    """

    def __init__(
        self,
        stream: DurableStream | str,
        producer_id: str,
        *,
        epoch: int | None = None,
        auto_claim: bool = False,
        linger_ms: float = 5,
        max_batch_bytes: int = _MiB,
        max_batch_items: int | None = None,
        max_in_flight: int = 5,
        max_buffer_bytes: int = 64 * _MiB,
        max_block_ms: float = 60_000,
        delivery_timeout_ms: float = 120_000,
        request_timeout: TimeoutLike = None,
        retry: RetryPolicy | None = None,
        validate_json: bool = True,
        content_type: str | None = None,
        headers: HeadersLike = None,
        session: requests.Session | None = None,
        on_error: ErrorCallback | None = None,
        flush_at_exit: bool = True,
        exit_timeout: float = 10.0,
    ) -> None:
        if not isinstance(producer_id, str) or not producer_id.strip():
            raise ValueError(
                f"producer_id must be a non-empty string identifying this writer, got "
                f"{producer_id!r}"
            )
        if epoch is None:
            # With auto_claim and no epoch of the caller's, start from the clock: a new run
            # then never reuses the (id, epoch, seq) of an earlier run of the same job, so a
            # "duplicate" answer can only be about our own data. Epochs only need to grow.
            epoch = int(time.time() * 1000) if auto_claim else 0
            self._fresh_epoch = bool(auto_claim)
        else:
            self._fresh_epoch = False
        _validate_int("epoch", "epoch", epoch, minimum=0, maximum=P.MAX_SAFE_INTEGER)
        _validate_int("maxBatchBytes", "max_batch_bytes", max_batch_bytes, minimum=1)
        if max_batch_items is not None:
            _validate_int("maxBatchItems", "max_batch_items", max_batch_items, minimum=1)
        _validate_int("maxInFlight", "max_in_flight", max_in_flight, minimum=1)
        _validate_int("maxBufferBytes", "max_buffer_bytes", max_buffer_bytes, minimum=1)
        if max_buffer_bytes < max_batch_bytes:
            raise ValueError(
                f"max_buffer_bytes ({max_buffer_bytes}) must be >= max_batch_bytes "
                f"({max_batch_bytes})"
            )
        for name, py_name, value in (
            ("lingerMs", "linger_ms", linger_ms),
            ("maxBlockMs", "max_block_ms", max_block_ms),
            ("deliveryTimeoutMs", "delivery_timeout_ms", delivery_timeout_ms),
        ):
            if (isinstance(value, bool) or not isinstance(value, (int, float))
                    or not math.isfinite(value) or value < 0):
                raise ValueError(
                    f"{py_name} ({name}) must be a finite number >= 0, got {value!r}")
        if on_error is not None and not callable(on_error):
            raise TypeError("on_error must be a callable taking one exception")

        if isinstance(stream, DurableStream):
            self.url = stream.url
            stream_headers: HeadersLike = stream.headers
            self._params = stream.params
            self._content_type = content_type or stream.content_type
            if session is None:
                session = stream._client.session
            self._retry_policy = retry or stream.retry
        elif isinstance(stream, str):
            if not stream.startswith(("http://", "https://")):
                raise ValueError(f"stream must be a DurableStream or an http(s) URL, got "
                                 f"{redact_url(stream)!r}")
            self.url = stream
            stream_headers = None
            self._params = None
            self._content_type = content_type
            self._retry_policy = retry or DEFAULT_RETRY
        else:
            raise TypeError(
                f"stream must be a DurableStream handle or a URL string, got "
                f"{type(stream).__name__}"
            )
        self.producer_id = producer_id
        self.auto_claim = bool(auto_claim)
        self._stream_headers = stream_headers
        self._headers = headers
        self._linger = float(linger_ms) / 1000.0
        self._max_batch_bytes = max_batch_bytes
        self._max_batch_items = max_batch_items or 0
        self._max_in_flight = max_in_flight
        self._max_buffer_bytes = max_buffer_bytes
        self._max_block = float(max_block_ms) / 1000.0
        self._delivery_timeout = float(delivery_timeout_ms) / 1000.0
        self._request_timeout = request_timeout
        self._validate_json = validate_json
        self._on_error = on_error
        self._flush_at_exit = flush_at_exit
        self._exit_timeout = exit_timeout
        self._client = HttpClient(session, pool_size=max_in_flight + 2, timeout=request_timeout)
        self._json_mode: bool | None = P.is_json(self._content_type) if self._content_type else None

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # senders wait here
        self._space = threading.Condition(self._lock)  # appenders wait for buffer room
        self._done = threading.Condition(self._lock)  # flush/close wait here
        self._seal_lock = threading.Lock()  # one sealer at a time keeps seq order

        # buffer
        self._buf: list[bytes] = []
        self._buf_bytes = 0
        self._buf_first_ts = 0.0
        self._buf_start = 0  # index of the first buffered message
        self._seal_upto = 0  # messages with index < this must be sealed without lingering
        self._sealing_from = -1  # first index of messages being built into a batch, or -1
        self._room = max_buffer_bytes  # max_buffer_bytes - (buffered + unresolved bytes)

        # sequencing
        self._epoch = epoch
        self._next_seq = 0
        self._gen = 0
        self._confirmed = not self.auto_claim  # auto-claim: one batch alone until a success
        self._highest_sent: dict[int, int] = {}  # gen -> highest seq sent
        self._stored_gen = -1  # the latest generation in which a batch got a 200
        # (generation, seq) of batches that failed with an unknown outcome
        self._doubtful: set[tuple[int, int]] = set()
        self._claim_fenced = False
        # (generation, stream tail offset) read just before the generation's first send:
        # the place to look for our own data when a 204 is otherwise ambiguous.
        self._probes: dict[int, str] = {}
        self._verify = False  # parked in-doubt batches must be looked for before renumbering
        self._early_probe_gen = -1
        self._early_probe: tuple[int, threading.Event] | None = None
        self._probe_wait = (float(request_timeout) if isinstance(request_timeout, (int, float))
                            else 10.0)
        # Seq N starts writing its request only once every lower unresolved seq has its
        # latest attempt on the wire, so the server sees pipelined batches in order instead
        # of answering 409 and wasting the upload (seqs must arrive in order, §5.2.1).
        # These are the current generation's seqs whose next attempt is not written yet.
        self._unwritten: set[int] = set()
        # How many batches may be on the wire ahead of the oldest unacknowledged one. The
        # server answers 409 to a batch that overtakes an earlier one (as happens when
        # several requests race on separate connections), which wastes the upload: halve
        # the window on such a 409, grow it back by one per window of acknowledgements.
        self._window = float(min(2, max_in_flight))
        self._batches: dict[int, _Batch] = {}  # unresolved sealed batches by id
        self._in_flight = 0
        self._draining = False
        self._parked: list[_Batch] = []
        self._resend: deque[_Batch] = deque()

        # lifecycle and reporting
        self._threads: list[threading.Thread] = []
        self._started = False
        self._stopping = False
        self._closed = False
        self._refusal: errors.DurableStreamError | None = None  # append raises this
        self._fatal: errors.DurableStreamError | None = None
        self._unreported: list[errors.DurableStreamError] = []
        self._callbacks: deque[errors.DurableStreamError] = deque()
        self._callback_thread: threading.Thread | None = None
        self._callbacks_enqueued = 0
        self._callbacks_done = 0
        self._close_result: str | None = None
        self._close_done = threading.Event()
        self._last_offset = ""
        self._pid = os.getpid()
        self._forked = False

        self._n_acked = 0
        self._n_failed = 0
        self._bytes_acked = 0
        self._n_batches = 0
        self._n_requests = 0
        self._n_retries = 0
        self._n_duplicates = 0
        self._n_failures = 0
        self._n_claims = 0
        _live_producers.add(self)

    # -- public properties -------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the producer currently writes with."""
        return self._epoch

    @property
    def next_seq(self) -> int:
        """The sequence number the next sealed batch will get."""
        return self._next_seq

    @property
    def pending_count(self) -> int:
        """Messages in the buffer, not yet sealed into a batch."""
        return len(self._buf)

    @property
    def pending_bytes(self) -> int:
        """Bytes accepted and not yet acknowledged or failed (buffered + in flight)."""
        return self._max_buffer_bytes - self._room

    @property
    def in_flight_count(self) -> int:
        """Sealed batches not yet acknowledged or failed."""
        return len(self._batches)

    @property
    def last_offset(self) -> str:
        """The highest stream offset acknowledged to this producer ('' before any)."""
        return self._last_offset

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> ProducerStats:
        with self._lock:
            return ProducerStats(
                messages_appended=self._appended,
                messages_acked=self._n_acked,
                messages_failed=self._n_failed,
                bytes_acked=self._bytes_acked,
                batches_sent=self._n_batches,
                requests_sent=self._n_requests,
                retries=self._n_retries,
                duplicates=self._n_duplicates,
                failures=self._n_failures,
                epoch_claims=self._n_claims,
                buffered_messages=len(self._buf),
                buffered_bytes=self._buf_bytes,
                pending_bytes=self._max_buffer_bytes - self._room,
                in_flight=len(self._batches),
            )

    # -- append ------------------------------------------------------------------------
    def append(self, data: str | bytes | bytearray | memoryview) -> None:
        """Queue one message; returns at once without touching the network.

        ``data`` is ``str`` (UTF-8; JSON text in JSON mode) or bytes-like. Raises
        ``TypeError`` for anything else, ``ValueError`` for an empty message or one larger
        than ``max_batch_bytes``, :class:`BufferFullError` when the buffer stayed full for
        ``max_block_ms``, and the producer's terminal error after it was closed or fenced.
        """
        t = type(data)
        if t is str:
            try:
                raw = data.encode()  # type: ignore[union-attr]
            except UnicodeEncodeError as exc:
                raise ValueError(f"message is not encodable as UTF-8: {exc}") from None
        elif t is bytes:
            raw = data  # type: ignore[assignment,unused-ignore]
        elif isinstance(data, (bytes, bytearray, memoryview)):
            raw = bytes(data)
        elif isinstance(data, str):  # a str subclass (StrEnum member, numpy.str_...)
            try:
                raw = str.encode(data)
            except UnicodeEncodeError as exc:
                raise ValueError(f"message is not encodable as UTF-8: {exc}") from None
        else:
            raise TypeError(
                f"IdempotentProducer.append() takes str or bytes, not {t.__name__}; "
                "serialise objects first, e.g. producer.append(json.dumps(obj))"
            )
        n = len(raw)
        if not n or n > self._max_batch_bytes:
            self._reject_size(n)
        lock = self._lock
        contended = not lock.acquire(False)
        if contended:
            lock.acquire()
        try:
            if self._refusal is not None:
                raise self._copy_error(self._refusal)
            room = self._room - n
            if room < 0:
                room = self._wait_for_space(n)
            self._room = room
            buf = self._buf
            buf.append(raw)
            size = self._buf_bytes + n
            self._buf_bytes = size
            if len(buf) == 1:
                self._buf_first_ts = time.monotonic()
                if not self._started:
                    self._start_locked()
                self._cond.notify_all()
            elif size >= self._max_batch_bytes > size - n:
                self._cond.notify_all()  # the open batch just became full
        finally:
            lock.release()
        if contended:
            # Several threads queued on the lock: let one of them take it now instead of
            # re-taking it at once, which would keep a lock convoy going (each append then
            # costs a futile wake-up of every waiter).
            time.sleep(0)

    def _reject_size(self, n: int) -> None:
        if not n:
            raise ValueError("cannot append an empty message (the server rejects empty appends)")
        raise ValueError(
            f"message of {n} bytes is larger than max_batch_bytes ({self._max_batch_bytes}); "
            "raise max_batch_bytes or split the message"
        )

    @property
    def _appended(self) -> int:
        """Messages accepted so far; also the index the next one will get."""
        return self._buf_start + len(self._buf)

    def _wait_for_space(self, n: int) -> int:
        """Block until ``n`` bytes fit (or nothing is pending); return the room left after."""
        deadline = time.monotonic() + self._max_block
        while self._room < n and self._room < self._max_buffer_bytes:
            if self._refusal is not None:
                raise self._copy_error(self._refusal)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.BufferFullError(
                    f"producer buffer for {self.url} is full "
                    f"({self._max_buffer_bytes - self._room} of "
                    f"{self._max_buffer_bytes} bytes unacknowledged) and no room was freed "
                    f"within max_block_ms={self._max_block * 1000:.0f}; the server may be down "
                    "or slower than the appends",
                    url=self.url,
                )
            if not self._started:
                self._start_locked()
            self._seal_upto = self._appended  # send what we have: frees space soonest
            self._cond.notify_all()
            self._space.wait(remaining)
        return self._room - n

    # -- flush / close -----------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> None:
        """Send everything appended so far and wait until each message is acknowledged.

        Raises :class:`DeliveryError` if any message failed since the last report (the
        failures also went to ``on_error``), and ``TimeoutError`` if ``timeout`` seconds
        pass first (the messages stay queued and keep being retried).
        """
        self._check_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._appended
            self._seal_upto = max(self._seal_upto, target)
            self._cond.notify_all()
            while self._unresolved_below(target):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"flush timed out after {timeout}s: {self._count_unresolved(target)} "
                        f"messages for {redact_url(self.url)} are not acknowledged yet "
                        "(still retrying)"
                    )
                if not self._started and self._buf:
                    self._start_locked()
                self._done.wait(remaining)
            if threading.current_thread() is self._callback_thread:
                # on_error already has the failure; the application's own flush() or
                # close() must still see it, so leave it to them.
                return
            cb_target = self._callbacks_enqueued
            while self._callbacks_done < cb_target:
                self._ensure_callback_thread_locked()
                self._done.wait(0.5)
            self._raise_unreported()

    def _unresolved_below(self, target: int) -> bool:
        if self._buf and self._buf_start < target:
            return True
        if 0 <= self._sealing_from < target:
            return True  # taken from the buffer, not yet registered as a batch
        return any(b.first_index < target for b in self._batches.values())

    def _count_unresolved(self, target: int) -> int:
        n = sum(1 for i in range(len(self._buf)) if self._buf_start + i < target)
        for b in self._batches.values():
            n += sum(1 for i in range(len(b.messages)) if b.first_index + i < target)
        return n

    def _raise_unreported(self) -> None:
        if not self._unreported:
            return
        errs, self._unreported = self._unreported, []
        count = sum(len(e.undelivered) for e in errs)
        raise errors.DeliveryError(
            f"{count} message(s) for {self.url} were not delivered ({len(errs)} failure(s)); "
            f"first: {errs[0]}",
            errors=errs,
            url=self.url,
        )

    def close(self, timeout: float | None = None) -> None:
        """Flush, stop the sender threads and release the session. The stream stays open.

        Idempotent. Raises :class:`DeliveryError` if messages could not be delivered, and
        ``TimeoutError`` if the flush did not finish within ``timeout`` (then the remaining
        messages are reported as undelivered).
        """
        if self._forked:
            self._closed = True
            return
        with self._lock:
            already = self._closed
            self._closed = True
            if self._refusal is None:
                self._refusal = errors.ProducerClosedError(
                    f"producer {self.producer_id!r} for {self.url} is closed", url=self.url
                )
        if already:
            # Another thread is closing (or closed) it: wait for that to finish.
            if (threading.current_thread() is not self._callback_thread
                    and not self._close_done.wait(timeout)):
                raise TimeoutError(f"close() of the producer for {self.url} is still running "
                                   f"in another thread after {timeout}s")
            with self._lock:
                self._raise_unreported()
            return
        flush_error: BaseException | None = None
        try:
            self.flush(timeout)
        except (TimeoutError, errors.DeliveryError) as exc:
            flush_error = exc
        try:
            self._shutdown(abandon=isinstance(flush_error, TimeoutError))
        finally:
            self._close_done.set()
        if isinstance(flush_error, TimeoutError):
            with self._lock:
                self._raise_unreported()
            raise flush_error
        if flush_error is not None:
            raise flush_error
        with self._lock:
            self._raise_unreported()

    def _shutdown(self, *, abandon: bool) -> None:
        with self._lock:
            self._stopping = True
            if abandon:
                self._fail_everything_locked(errors.ProducerClosedError(
                    f"producer {self.producer_id!r} for {self.url} was closed before these "
                    "messages were acknowledged", url=self.url))
            self._cond.notify_all()
            self._space.notify_all()
            threads = list(self._threads)
        # Idle senders exit at once. When abandoning, a sender may be inside a request
        # (up to the request timeout): it is a daemon thread, so do not wait long for it.
        deadline = time.monotonic() + (2.0 if abandon else 30.0)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._drain_callbacks()
        self._client.close()
        _live_producers.discard(self)

    def __enter__(self) -> IdempotentProducer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    # -- close_stream ----------------------------------------------------------------
    def close_stream(self, final_message: str | bytes | None = None,
                     timeout: float | None = None) -> str:
        """Flush, then close the stream for everyone (EOF) and return its final offset.

        The close carries the producer headers, so a retried close is deduplicated by the
        server; calling this again returns the same offset. ``final_message`` is appended
        atomically with the close. Afterwards ``append()`` raises.
        """
        self._check_fork()
        if self._close_result is not None:
            return self._close_result
        body: bytes | None = None
        if final_message is not None:
            if isinstance(final_message, str):
                body = final_message.encode()
            elif isinstance(final_message, (bytes, bytearray, memoryview)):
                body = bytes(final_message)
            else:
                raise TypeError("final_message must be str or bytes (use json.dumps for objects)")
            if not body:
                raise ValueError("final_message must not be empty (pass None to close only)")
        self.flush(timeout)
        with self._lock:
            if self._refusal is None or isinstance(self._refusal, errors.ProducerClosedError):
                self._refusal = errors.StreamClosedError(
                    f"producer {self.producer_id!r} closed the stream {self.url}", url=self.url
                )
        json_mode = self._is_json_mode()
        if body is not None and json_mode:
            if self._validate_json:
                try:
                    P.check_json_text(body)
                except ValueError as exc:
                    raise ValueError(f"final_message is not valid JSON: {exc}") from None
            body = b"[" + body + b"]"
        deadline = time.monotonic() + self._delivery_timeout
        retry_n = 0
        while True:
            with self._lock:
                epoch, seq = self._epoch, self._next_seq
                self._n_requests += 1
            extra = {
                P.PRODUCER_ID: self.producer_id,
                P.PRODUCER_EPOCH: str(epoch),
                P.PRODUCER_SEQ: str(seq),
                P.STREAM_CLOSED: "true",
            }
            if body is not None:
                extra[P.CONTENT_TYPE] = self._resolved_content_type()
            try:
                response = self._post(body, extra, operation="close")
            except errors.TransportError:
                if time.monotonic() >= deadline:
                    raise
                self._sleep_backoff(retry_n, None)
                retry_n += 1
                continue
            status = response.status_code
            if status in (200, 204):
                offset = response.headers.get(P.STREAM_NEXT_OFFSET, "")
                with self._lock:
                    self._next_seq = seq + 1
                    self._close_result = offset
                    if offset > self._last_offset:
                        self._last_offset = offset
                return offset
            if status == 403 and self.auto_claim:
                current = P.parse_int_header(response.headers, P.PRODUCER_EPOCH)
                with self._lock:
                    self._epoch = max(self._epoch + 1, (current or 0) + 1)
                    self._next_seq = 0
                    self._n_claims += 1
                continue
            if status == 403:
                current = P.parse_int_header(response.headers, P.PRODUCER_EPOCH)
                raise self._stale_epoch(epoch, current, response)
            if self._retry_policy.is_retryable_status(status) and time.monotonic() < deadline:
                self._sleep_backoff(retry_n, P.parse_retry_after(
                    response.headers.get(P.RETRY_AFTER)))
                retry_n += 1
                continue
            raise error_from(response, url=self.url, operation="close")

    # -- threads -----------------------------------------------------------------------
    def _check_fork(self) -> None:
        if self._forked:
            raise errors.ProducerForkedError(
                f"producer {self.producer_id!r} was created in process {self._pid} and cannot "
                f"be used in the forked process {os.getpid()}; create producers after fork "
                "(e.g. in gunicorn's post_fork hook or lazily on first use)",
                url=self.url,
            )

    def _start_locked(self) -> None:
        if self._started or self._stopping:
            return
        self._started = True
        ref = weakref.ref(self)
        for i in range(self._max_in_flight):
            thread = threading.Thread(
                target=_sender_main, args=(ref,), name=f"ds-producer-{self.producer_id}-{i}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()

    def _next_batch(self) -> _Batch | None:
        """Block until there is a batch to send (sealing one when due); None = stop."""
        while True:
            ready = self._wait_for_work()
            if ready is None or isinstance(ready, _Batch):
                return ready
            if ready == "probe":
                probing = self._early_probe
                assert probing is not None
                try:
                    self._take_probe(probing[0], early=True)
                except errors.DurableStreamError as exc:
                    log.debug("producer %s: early tail probe failed: %s", self.producer_id, exc)
                finally:
                    probing[1].set()
                continue
            if ready == "verify":
                try:
                    self._verify_parked()
                finally:
                    with self._lock:
                        self._in_flight -= 1
                        self._verify = False
                        self._maybe_resequence_locked()
                        self._cond.notify_all()
                        self._done.notify_all()
                continue
            sealed: _Batch | None = None
            try:
                sealed = self._seal()
            finally:
                if sealed is None:  # nothing to send after all: give the slot back
                    with self._lock:
                        self._in_flight -= 1
                        self._maybe_resequence_locked()
                        self._cond.notify_all()
                        self._done.notify_all()
            if sealed is not None:
                return sealed

    def _wait_for_work(self) -> _Batch | bool | str | None:
        """A batch to resend, True when the caller should seal one (slot reserved),
        "verify" when parked in-doubt batches must be looked for, or None to stop."""
        while True:
            with self._lock:
                if self._verify and self._draining and self._in_flight == 0:
                    self._in_flight += 1
                    return "verify"
                if self._resend and not self._draining and self._may_send_locked():
                    batch = self._resend.popleft()
                    batch.state = "active"
                    self._in_flight += 1
                    return batch
                if self._buf and not self._draining:
                    due = self._due_in_locked()
                    if due <= 0:
                        if self._fatal is not None:
                            self._fail_buffer_locked(self._fatal)
                            continue
                        if self._may_send_locked():
                            self._in_flight += 1  # reserve the slot before sealing
                            return True
                        self._cond.wait()
                        continue
                    if self._early_probe_gen != self._gen and self._gen not in self._probes:
                        # Note the tail now, while the first batch fills, rather than on
                        # the send path (it settles ambiguous answers; see _on_204).
                        self._early_probe_gen = self._gen  # once: the send path retries
                        self._early_probe = (self._gen, threading.Event())
                        return "probe"
                    self._cond.wait(due)
                    continue
                if self._stopping and not self._resend and not self._parked:
                    return None
                self._cond.wait()

    def _due_in_locked(self) -> float:
        """Seconds until the open batch must be sealed (<= 0: now)."""
        if (self._buf_start < self._seal_upto or self._stopping or self._fatal
                or self._buf_bytes >= self._max_batch_bytes
                or (self._max_batch_items and len(self._buf) >= self._max_batch_items)):
            return 0.0
        return self._buf_first_ts + self._linger - time.monotonic()

    def _may_send_locked(self) -> bool:
        # Until an epoch is confirmed by a success (auto-claim), one request at a time.
        return self._confirmed or self._in_flight == 0

    def _seal(self) -> _Batch | None:
        """Take up to one batch of messages from the buffer and give it the next seq."""
        if self._json_mode is None and not self._learn_content_type():
            return None
        with self._seal_lock:
            with self._lock:
                buf = self._buf
                if not buf or self._due_in_locked() > 0:
                    return None  # another sender took the due messages first
                limit = self._max_batch_bytes
                max_items = self._max_batch_items or len(buf)
                if self._buf_bytes <= limit and len(buf) <= max_items:
                    total, count = self._buf_bytes, len(buf)  # the whole buffer fits
                else:
                    total = count = 0
                    for m in buf:
                        if count >= max_items or (count and total + len(m) > limit):
                            break
                        total += len(m)
                        count += 1
                if count == len(buf):
                    messages = buf
                    self._buf = []
                else:
                    messages = buf[:count]
                    del buf[:count]
                first = self._buf_start
                self._sealing_from = first
                self._buf_start += count
                self._buf_bytes -= total
                if self._buf:
                    self._buf_first_ts = min(self._buf_first_ts, time.monotonic())
            try:
                good, bad, body = self._build(messages)
            except BaseException as exc:  # pragma: no cover - never lose taken messages
                with self._lock:
                    self._sealing_from = -1
                    self._fail_messages_locked(messages, errors.ProducerError(
                        f"could not build a batch for {self.url}: {exc!r}", url=self.url),
                        total)
                raise
            good_bytes = total if not bad else sum(len(m) for m in good)
            with self._lock:
                self._sealing_from = -1
                if bad:
                    err = errors.BadRequestError(
                        f"{len(bad)} message(s) for the JSON stream {self.url} are not valid "
                        f"JSON and were not sent (first: {bad[0][1]}); each message must be "
                        "one JSON value, e.g. json.dumps(obj)",
                        url=self.url, code="INVALID_JSON",
                    )
                    self._fail_messages_locked([m for m, _ in bad], err,
                                               sum(len(m) for m, _ in bad))
                if not good:
                    return None
                batch = _Batch(good, good_bytes, first, body,
                               time.monotonic() + self._delivery_timeout)
                self._batches[batch.id] = batch
                self._n_batches += 1
                if self._draining:
                    # An epoch change is under way: this batch gets its seq after the
                    # older unacknowledged ones are renumbered, to keep the order.
                    batch.state = "parked"
                    self._parked.append(batch)
                    return None
                self._assign_seq_locked(batch)
                return batch

    def _learn_content_type(self) -> bool:
        """HEAD the stream once to learn its content type; False if not known yet."""
        try:
            self._resolved_content_type()
            return True
        except errors.DurableStreamError as exc:
            with self._lock:
                if isinstance(exc, (errors.TransportError, errors.ServerError,
                                    errors.RateLimitedError)):
                    self._n_retries += 1
                    self._done.wait(self._retry_policy.delay(3))
                else:
                    self._fatal_locked(exc)
            return False

    def _build(self, messages: list[bytes]) -> tuple[list[bytes], list[tuple[bytes, str]], bytes]:
        if not self._is_json_mode():
            return messages, [], b"".join(messages)
        body = b"[" + b",".join(messages) + b"]"
        if not self._validate_json:
            return messages, [], body
        try:
            parsed = P.load_json(body)
            if isinstance(parsed, list) and len(parsed) == len(messages):
                return messages, [], body
        except ValueError:
            pass
        good, bad = self._split_json(messages)
        return good, bad, b"[" + b",".join(good) + b"]"

    @staticmethod
    def _split_json(messages: list[bytes]) -> tuple[list[bytes], list[tuple[bytes, str]]]:
        good: list[bytes] = []
        bad: list[tuple[bytes, str]] = []
        for m in messages:
            try:
                P.check_json_text(m)
            except ValueError as exc:
                bad.append((m, f"{m[:60]!r}: {exc}"))
            else:
                good.append(m)
        return good, bad

    def _assign_seq_locked(self, batch: _Batch) -> None:
        batch.epoch = self._epoch
        batch.gen = self._gen
        batch.seq = self._next_seq
        batch.maybe_stored = False
        self._next_seq += 1
        self._unwritten.add(batch.seq)

    def _is_json_mode(self) -> bool:
        if self._json_mode is None:
            self._resolved_content_type()
        return bool(self._json_mode)

    def _resolved_content_type(self) -> str:
        if not self._content_type:
            # Learn the stream's content type once: sending the wrong one is a 409.
            handle = DurableStream(self.url, headers=self._stream_headers, params=self._params,
                                   session=self._client.session, retry=self._retry_policy,
                                   timeout=self._request_timeout)
            try:
                handle.head()
            finally:
                handle.close()
            self._content_type = handle.content_type or P.DEFAULT_CONTENT_TYPE
        if self._json_mode is None:
            self._json_mode = P.is_json(self._content_type)
        return self._content_type

    # -- sending ------------------------------------------------------------------------
    def _post(self, body: bytes | _MarkedBody | None, extra: dict[str, str], *, operation: str
              ) -> requests.Response:
        user = merge_headers(resolve(self._stream_headers), resolve(self._headers))
        headers = merge_headers(
            {k: v for k, v in user.items() if k.lower() not in P.PROTECTED_PRODUCER_HEADERS},
            extra,
        )
        query = sorted(resolve(self._params).items())
        return self._client.send("POST", self.url, operation=operation, headers=headers,
                                 params=query, data=body, timeout=self._request_timeout)

    def _sleep_backoff(self, retry_n: int, retry_after: float | None) -> None:
        wait = self._retry_policy.delay(min(retry_n, 30), retry_after)
        with self._lock:
            self._n_retries += 1
            if self._stopping and self._fatal is not None:
                return
            self._done.wait(wait)

    def _deliver(self, batch: _Batch) -> None:
        """Send one batch until it is acknowledged, failed, or parked for re-sequencing."""
        try:
            self._deliver_loop(batch)
        except _Park:
            pass
        except Exception as exc:  # pragma: no cover - a bug; never lose the batch silently
            log.exception("producer %s: unexpected error sending a batch", self.producer_id)
            err = errors.ProducerError(f"unexpected error sending to {self.url}: {exc!r}",
                                       url=self.url)
            with self._lock:
                self._fail_batch_locked(batch, err)
        finally:
            with self._lock:
                self._in_flight -= 1
                self._maybe_resequence_locked()
                self._cond.notify_all()
                self._done.notify_all()

    def _deliver_loop(self, batch: _Batch) -> None:
        content_type = self._resolved_content_type()
        retry_n = 0
        while True:
            if batch.seq == 0 and self._probe_missing(batch.gen):
                try:
                    self._take_probe(batch.gen)
                except errors.DurableStreamError as exc:
                    if not isinstance(exc, (errors.TransportError, errors.ServerError,
                                            errors.RateLimitedError)):
                        with self._lock:
                            self._fatal_locked(exc)
                            self._fail_batch_locked(batch, exc)
                        return
                    self._transient(batch, exc, retry_n, getattr(exc, "retry_after", None))
                    retry_n += 1
                    continue
            with self._lock:
                self._check_batch_locked(batch)
                if not self._turn_ok_locked(batch):
                    self._wait_turn_locked(batch)
                epoch, seq = batch.epoch, batch.seq
                gen = batch.gen
                batch.attempts += 1
                self._n_requests += 1
                high = self._highest_sent.get(batch.gen, -1)
                if seq > high:
                    self._highest_sent[batch.gen] = seq
                if batch.attempts > 1:
                    self._n_retries += 1
            extra = {
                P.CONTENT_TYPE: content_type,
                P.PRODUCER_ID: self.producer_id,
                P.PRODUCER_EPOCH: str(epoch),
                P.PRODUCER_SEQ: str(seq),
            }
            try:
                response = self._post(self._body_then_mark(batch.body, gen, seq), extra,
                                      operation="append")
            except errors.TransportError as exc:
                self._mark_written(gen, seq)
                if getattr(exc, "reached_server", True):
                    batch.ambiguous = batch.maybe_stored = True
                self._transient(batch, exc, retry_n, None)
                retry_n += 1
                continue
            status = response.status_code
            headers = response.headers
            if status == 200:
                if (P.STREAM_NEXT_OFFSET not in headers
                        and headers.get(P.PRODUCER_SEQ) != str(seq)):
                    # Not an answer from a Durable Streams server (a captive portal, a
                    # misrouted proxy): nothing says the batch was stored. Retrying the
                    # same tuple is safe; give up at the delivery deadline.
                    bogus = errors.TransportError(
                        f"append to {self.url} got a 200 without Stream-Next-Offset or a "
                        "Producer-Seq echo: not a Durable Streams answer",
                        status=200, code="PROTOCOL_ERROR", url=self.url)
                    batch.maybe_stored = True
                    self._transient(batch, bogus, retry_n, None)
                    retry_n += 1
                    continue
                self._acked(batch, headers.get(P.STREAM_NEXT_OFFSET, ""), duplicate=False)
                return
            if status == 204:
                self._on_204(batch, response)
                return
            if status == 403:
                self._on_403(batch, response)
                return
            if status == 409:
                if self._on_409(batch, response):
                    retry_n = 0
                    continue
                return
            if self._retry_policy.is_retryable_status(status):
                if status >= 500:
                    batch.maybe_stored = True  # a proxy's 5xx says nothing about the origin
                err = error_from(response, url=self.url, operation="append")
                ra = P.parse_retry_after(headers.get(P.RETRY_AFTER))
                self._transient(batch, err, retry_n, ra)
                retry_n += 1
                continue
            err = error_from(response, url=self.url, operation="append")
            if status == 400 and self._drop_invalid_json(batch, err):
                retry_n = 0
                continue  # same seq: a rejected request does not consume it
            with self._lock:
                if status in (400, 413):
                    self._fail_batch_locked(batch, err, hole=True)
                else:
                    self._fatal_locked(err)
                    self._fail_batch_locked(batch, err)
            return

    def _turn_ok_locked(self, batch: _Batch) -> bool:
        if batch.gen != self._gen:
            return True
        seq = batch.seq
        if any(s < seq for s in self._unwritten):
            return False
        lowest = min((b.seq for b in self._batches.values()
                      if b.gen == batch.gen and b.seq >= 0), default=batch.seq)
        return batch.seq - lowest < int(self._window)

    def _drop_invalid_json(self, batch: _Batch, err: errors.DurableStreamError) -> bool:
        """After a 400 in JSON mode, report the invalid messages and keep the valid ones.

        True when the batch still has messages to send (with the same seq).
        """
        if not self._is_json_mode() or len(batch.messages) < 2:
            return False
        good, bad = self._split_json(batch.messages)
        if not bad or not good:
            return False
        with self._lock:
            self._check_batch_locked(batch)
            reason = err.reason if isinstance(err, errors.BadRequestError) else str(err)
            self._fail_messages_locked(
                [m for m, _ in bad],
                errors.BadRequestError(
                    f"{len(bad)} message(s) for {self.url} were rejected as invalid JSON "
                    f"({reason}; first: {bad[0][1]})", status=400, url=self.url,
                    code="INVALID_JSON"),
                sum(len(m) for m, _ in bad),
            )
            batch.messages = good
            batch.nbytes = sum(len(m) for m in good)
            batch.body = b"[" + b",".join(good) + b"]"
        return True

    def _wait_turn_locked(self, batch: _Batch) -> None:
        """Wait (bounded) until the previous seq is written and the window has room."""
        end = time.monotonic() + 2.0
        while not self._turn_ok_locked(batch):
            remaining = end - time.monotonic()
            if remaining <= 0:
                return
            self._done.wait(remaining)
            self._check_batch_locked(batch)

    def _body_then_mark(self, body: bytes, gen: int, seq: int) -> _MarkedBody:
        return _MarkedBody(body, lambda: self._mark_written(gen, seq))

    def _mark_written(self, gen: int, seq: int) -> None:
        with self._lock:
            if gen == self._gen and seq in self._unwritten:
                self._unwritten.discard(seq)
                self._done.notify_all()

    def _check_batch_locked(self, batch: _Batch) -> None:
        if self._fatal is not None:
            self._fail_batch_locked(batch, self._fatal)
            raise _Park
        if batch.gen != self._gen:
            self._park_locked(batch)
            raise _Park

    def _transient(self, batch: _Batch, err: errors.DurableStreamError, retry_n: int,
                   retry_after: float | None) -> None:
        """Retry later with the same (epoch, seq, body), or give up at the deadline."""
        now = time.monotonic()
        if now >= batch.deadline or (self._stopping and self._fatal is not None):
            note = (" (it may have been stored: the last attempts got no response)"
                    if batch.ambiguous else "")
            err = type(err)(
                f"delivery to {self.url} timed out after "
                f"{self._delivery_timeout:.0f}s and {batch.attempts} attempt(s): {err}{note}",
                status=err.status, url=self.url, code=err.code,
            )
            with self._lock:
                self._fail_batch_locked(batch, err, hole=True)
            raise _Park
        wait = self._retry_policy.delay(min(retry_n, 30), retry_after)
        wait = min(wait, max(batch.deadline - now, 0.0))
        with self._lock:
            if batch.gen == self._gen:
                self._unwritten.add(batch.seq)  # later seqs wait for this retry
        log.debug("producer %s: seq %d %s; retrying in %.3fs", self.producer_id, batch.seq,
                  err, wait)
        with self._lock:
            end = time.monotonic() + wait
            while True:
                self._check_batch_locked(batch)
                remaining = end - time.monotonic()
                if remaining <= 0:
                    break
                self._done.wait(remaining)

    def _acked(self, batch: _Batch, offset: str, *, duplicate: bool) -> None:
        with self._lock:
            if batch.state == "done":
                return
            batch.state = "done"
            self._batches.pop(batch.id, None)
            if batch.gen == self._gen:
                self._confirmed = True
                self._unwritten.discard(batch.seq)
            self._n_acked += len(batch.messages)
            self._bytes_acked += batch.nbytes
            self._room += batch.nbytes
            if duplicate:
                self._n_duplicates += 1
            if offset > self._last_offset:
                self._last_offset = offset
            if not duplicate and batch.gen > self._stored_gen:
                self._stored_gen = batch.gen
            if not duplicate and self._window < self._max_in_flight:
                self._window = min(float(self._max_in_flight), self._window + 1 / self._window)
            self._space.notify_all()

    def _on_204(self, batch: _Batch, response: requests.Response) -> None:
        """A duplicate. Believe it only if this (epoch, seq) can have been stored by us."""
        server_seq = P.parse_int_header(response.headers, P.PRODUCER_SEQ)
        with self._lock:
            high = self._highest_sent.get(batch.gen, -1)
            stored_here = self._stored_gen == batch.gen
        # Ours only if an earlier send of this very tuple may have been stored, the server's
        # last seq is one we sent, and the server has already stored something of ours in
        # this epoch. Without that last condition the previous run of the same job (same
        # id, same epoch) is indistinguishable from our own first attempt; we then prefer a
        # loud error or a fresh epoch over silently dropping this batch.
        plausible = batch.maybe_stored and (server_seq is None or server_seq <= high)
        # An epoch taken from the clock by this producer was never used before: a duplicate
        # answer for it can only be about our own earlier attempt.
        fresh = self._fresh_epoch and batch.gen == 0 and batch.epoch == self._epoch
        found = (None if not plausible or stored_here or fresh
                 else self._found_after_probe(batch))
        ours = plausible and (stored_here or fresh or found is True)
        if found is False:
            batch.maybe_stored = False  # looked: it is not in the stream
        if ours:
            self._acked(batch, response.headers.get(P.STREAM_NEXT_OFFSET, ""), duplicate=True)
            return
        # Someone else already wrote this (id, epoch, seq): typically an earlier run of the
        # same job with the same producer id. Believing the 204 would drop our data.
        if self.auto_claim:
            with self._lock:
                self._begin_claim_locked(batch, batch.epoch, fenced=True)
                self._park_or_fail_locked(batch)
            return
        err = errors.StaleEpochError(
            f"producer id {self.producer_id!r} at epoch {batch.epoch} was already used by "
            f"another writer of {self.url}: the server reports seq {batch.seq} as a "
            "duplicate although this producer has not stored it"
            + (" (an earlier attempt got no clear answer, so it may or may not be stored)"
               if batch.maybe_stored else "")
            + "; use auto_claim=True or a higher epoch so this run's messages are not "
            "mistaken for an earlier run's",
            current_epoch=batch.epoch, status=204, url=self.url, headers=response.headers,
        )
        with self._lock:
            self._fatal_locked(err)
            self._fail_batch_locked(batch, err)

    def _probe_missing(self, gen: int) -> bool:
        with self._lock:
            return self._needs_probe(gen)

    def _needs_probe(self, gen: int) -> bool:
        if gen in self._probes:
            return False
        probing = self._early_probe
        if probing is not None and probing[0] == gen and not probing[1].is_set():
            # The early probe is under way: wait for it rather than sending another HEAD.
            self._lock.release()
            try:
                probing[1].wait(self._probe_wait)
            finally:
                self._lock.acquire()
        return gen not in self._probes

    def _take_probe(self, gen: int, *, early: bool = False) -> None:
        """Note the stream's tail before the first send of a generation (one HEAD).

        Seq 0 is not sent before this succeeds: without it a lost first response could not
        be told apart from another writer's batch.
        """
        handle = DurableStream(self.url, headers=self._stream_headers, params=self._params,
                               session=self._client.session, retry=NO_RETRY,
                               timeout=self._request_timeout)
        try:
            offset = handle.head().offset
        finally:
            handle.close()
        with self._lock:
            # First result wins: a probe answered later may postdate our first send. An early
            # probe is kept only if nothing of this generation was sent meanwhile.
            sent = self._highest_sent.get(gen, -1) >= 0
            if gen == self._gen and gen not in self._probes and not (early and sent):
                self._probes[gen] = offset
                for old in [g for g in self._probes if g < gen - 8]:
                    del self._probes[old]

    def _found_after_probe(self, batch: _Batch) -> bool | None:
        """Is this batch's data in the stream after the tail noted before our first send?

        Settles the one ambiguous case: a 204 "duplicate" for a batch whose earlier send
        got no clear answer, before anything of ours was acknowledged in this epoch. It is
        either our own first attempt (stored, response lost) or someone else's batch with
        the same (id, epoch, seq), such as the previous run of the same job. None when it
        could not be checked.
        """
        start = self._probes.get(batch.gen)
        if start is None:
            return None
        from .reading import stream as read_stream

        try:
            with read_stream(self.url, offset=start, headers=self._stream_headers,
                             params=self._params, content_type=self._content_type,
                             retry=self._retry_policy, _client=self._client) as res:
                data = res.read_bytes()
        except errors.DurableStreamError as exc:
            log.warning("producer %s: could not check whether seq %d was stored: %s",
                        self.producer_id, batch.seq, exc)
            return None
        if not self._is_json_mode():
            return batch.body in data
        try:
            stored = P.load_json(data) if data else []
            ours = [P.load_json(m) for m in batch.messages]
        except ValueError:
            return None
        if not isinstance(stored, list):
            return None
        n = len(ours)
        return any(stored[i:i + n] == ours for i in range(len(stored) - n + 1))

    def _on_403(self, batch: _Batch, response: requests.Response) -> None:
        current = P.parse_int_header(response.headers, P.PRODUCER_EPOCH)
        if current is None:
            err = error_from(response, url=self.url, operation="append")
            with self._lock:
                self._fatal_locked(err)
                self._fail_batch_locked(batch, err)
            return
        with self._lock:
            if self.auto_claim:
                self._begin_claim_locked(batch, current, fenced=True)
                self._park_or_fail_locked(batch)
                return
            err = self._stale_epoch(batch.epoch, current, response)
            self._fatal_locked(err)
            self._fail_batch_locked(batch, err)

    def _stale_epoch(self, epoch: int, current: int | None, response: requests.Response
                     ) -> errors.StaleEpochError:
        return errors.StaleEpochError(
            f"producer {self.producer_id!r} at epoch {epoch} was fenced by a newer producer "
            f"with the same id (server epoch {current}) on {self.url}; stop this writer, or "
            "restart it with auto_claim=True or epoch > the server's",
            current_epoch=current, status=403, url=self.url, headers=response.headers,
        )

    def _on_409(self, batch: _Batch, response: requests.Response) -> bool:
        """True when the batch should be sent again (an earlier seq was still on its way)."""
        headers = response.headers
        if P.header_true(headers.get(P.STREAM_CLOSED)):
            err = error_from(response, url=self.url, operation="append")
            with self._lock:
                self._fatal_locked(err)
                self._fail_batch_locked(batch, err)
            return False
        expected = P.parse_int_header(headers, P.PRODUCER_EXPECTED_SEQ)
        if expected is None:
            err = error_from(response, url=self.url, operation="append")
            with self._lock:
                self._fatal_locked(err)
                self._fail_batch_locked(batch, err)
            return False
        with self._lock:
            gen = batch.gen
            if (gen, expected) in self._doubtful and gen == self._gen:
                # The server confirms the in-doubt batch was not stored: now later batches
                # can safely move to a new epoch (none of them can have been stored).
                self._doubtful.discard((gen, expected))
                self._begin_claim_locked(None, self._epoch)
                self._park_or_fail_locked(batch)
                return False
            earlier = range(expected, batch.seq)
            in_flight = any(self._seq_pending_locked(gen, s) for s in earlier)
            # The seqs the server is missing must be ours and recent: either still in
            # flight, or acknowledged just after the server answered this request. The
            # same answer twice with nothing in flight means the server lost our state.
            known = gen == self._gen and len(earlier) > 0 and (
                in_flight or batch.last_expected != expected)
            if not in_flight:
                batch.last_expected = expected
            if not known:
                received = P.parse_int_header(headers, P.PRODUCER_RECEIVED_SEQ)
                err = errors.SequenceGapError(
                    f"producer sequence gap on {self.url}: the server expects seq {expected}, "
                    f"received {received if received is not None else batch.seq}; its "
                    "producer state no longer matches this producer (restart it with a new "
                    "epoch or auto_claim=True)",
                    expected_seq=expected, received_seq=received, status=409, url=self.url,
                    headers=headers,
                )
                self._check_batch_locked(batch)
                self._fail_batch_locked(batch, err, hole=True)
                return False
            # An earlier batch of ours is still on its way: wait for it, then resend. If it
            # fails instead, the epoch changes and this batch is parked for re-sequencing.
            # Meanwhile later batches wait for this one's resend to be written first.
            self._window = max(1.0, self._window / 2)
            self._unwritten.add(batch.seq)
            while any(self._seq_pending_locked(gen, s) for s in earlier):
                self._check_batch_locked(batch)
                self._done.wait(1.0)
            self._check_batch_locked(batch)
            return True

    def _seq_pending_locked(self, gen: int, seq: int) -> bool:
        """True when a batch of ours with this (generation, seq) is not resolved yet."""
        return any(b.gen == gen and b.seq == seq for b in self._batches.values())

    # -- failures, fencing and re-sequencing -----------------------------------------------
    def _fatal_locked(self, err: errors.DurableStreamError) -> None:
        if self._fatal is None:
            self._fatal = err
            self._refusal = err
            log.warning("producer %s: stopping: %s", self.producer_id, err)
            for parked in self._parked:
                self._fail_batch_locked(parked, err, notify=False)
            self._parked.clear()
            while self._resend:
                self._fail_batch_locked(self._resend.popleft(), err, notify=False)
            self._fail_buffer_locked(err)
            self._cond.notify_all()
            self._space.notify_all()

    def _fail_buffer_locked(self, err: errors.DurableStreamError) -> None:
        if not self._buf:
            return
        messages, self._buf = self._buf, []
        nbytes = self._buf_bytes
        self._buf_bytes = 0
        self._buf_start += len(messages)
        self._fail_messages_locked(messages, err, nbytes)

    def _fail_everything_locked(self, err: errors.DurableStreamError) -> None:
        # Batches held by senders see the fatal error at their next step and fail.
        self._fatal_locked(err)
        self._done.notify_all()

    def _fail_messages_locked(self, messages: list[bytes], err: errors.DurableStreamError,
                              nbytes: int) -> None:
        failure = self._copy_error(err)
        failure.undelivered = tuple(messages)
        self._room += nbytes
        self._n_failed += len(messages)
        self._n_failures += 1
        self._unreported.append(failure)
        self._queue_callback_locked(failure)
        self._space.notify_all()
        self._done.notify_all()

    def _fail_batch_locked(self, batch: _Batch, err: errors.DurableStreamError, *,
                           hole: bool = False, notify: bool = True) -> None:
        if batch.state == "done":
            return
        batch.state = "done"
        self._batches.pop(batch.id, None)
        if batch.gen == self._gen:
            self._unwritten.discard(batch.seq)
        self._fail_messages_locked(batch.messages, err, batch.nbytes)
        if hole and self._fatal is None and batch.gen == self._gen:
            if batch.maybe_stored:
                # It may have been stored after all (its answers were lost). Re-numbering
                # later batches now could store one of them twice; keep their (epoch, seq)
                # until the server confirms the hole with a 409 naming this seq.
                self._doubtful.add((batch.gen, batch.seq))
                return
            # Later batches of this epoch can never be accepted after the hole: move them
            # to a fresh epoch (we own the id, so epoch + 1 is ours to claim).
            self._begin_claim_locked(None, self._epoch)

    @staticmethod
    def _copy_error(err: errors.DurableStreamError) -> errors.DurableStreamError:
        clone = type(err).__new__(type(err))
        clone.__dict__.update(err.__dict__)
        clone.args = err.args
        return clone

    def _begin_claim_locked(self, batch: _Batch | None, server_epoch: int, *,
                            fenced: bool = False) -> None:
        """Move to a higher epoch: drain, then re-sequence every unacknowledged batch."""
        if batch is not None and batch.gen != self._gen:
            return  # a transition is already under way
        if server_epoch + 1 > P.MAX_SAFE_INTEGER:
            err = errors.ProducerError(f"epoch overflow for {self.url}", url=self.url)
            self._fatal_locked(err)
            return
        self._epoch = max(self._epoch + 1, server_epoch + 1)
        self._gen += 1
        # After a hole (a batch the server confirmed it did not store) no later batch can
        # have been stored. After being fenced (403, or another writer's 204), a batch whose
        # answer was lost may already be in the stream under the old epoch.
        self._claim_fenced = fenced
        self._unwritten = set()
        while self._resend:
            queued = self._resend.popleft()
            queued.state = "parked"
            self._parked.append(queued)
        self._next_seq = 0
        self._confirmed = False
        self._draining = True
        self._n_claims += 1
        log.info("producer %s: claiming epoch %d for %s", self.producer_id, self._epoch,
                 self.url)
        self._cond.notify_all()
        self._done.notify_all()

    def _park_or_fail_locked(self, batch: _Batch) -> None:
        if self._fatal is not None:  # the claim could not start (e.g. epoch overflow)
            self._fail_batch_locked(batch, self._fatal)
        else:
            self._park_locked(batch)

    def _park_locked(self, batch: _Batch) -> None:
        if batch.state != "active":
            return
        batch.state = "parked"
        self._parked.append(batch)
        self._done.notify_all()

    def _verify_parked(self) -> None:
        """For each parked batch whose answer was lost before we were fenced: acknowledge it
        if it is in the stream after its generation's tail probe, re-send it if it is not,
        and report it as in doubt if that cannot be told."""
        with self._lock:
            doubtful = [b for b in self._parked if b.maybe_stored]
        for batch in doubtful:
            found = self._found_after_probe(batch)
            with self._lock:
                if batch not in self._parked:
                    continue  # failed meanwhile (the producer stopped)
                if found is False:
                    batch.maybe_stored = False
                    continue
                self._parked.remove(batch)
                batch.state = "active"
                if found is None:
                    self._fail_batch_locked(batch, errors.ProducerError(
                        f"producer {self.producer_id!r} lost its epoch on {self.url} while "
                        "the outcome of this batch was unknown (its answer was lost) and the "
                        "stream could not be checked: it may or may not be stored, so it is "
                        "not re-sent", url=self.url, code="IN_DOUBT"))
            if found:
                self._acked(batch, "", duplicate=True)

    def _maybe_resequence_locked(self) -> None:
        """When no old-epoch request is in flight, renumber the parked batches in order."""
        if not self._draining or self._in_flight > 0:
            return
        if self._claim_fenced and any(b.maybe_stored for b in self._parked):
            # Fenced while some answers were lost: those batches may already be in the
            # stream under the old epoch. A sender looks for them first (_verify_parked).
            self._verify = True
            self._cond.notify_all()
            return
        parked = sorted(self._parked, key=lambda b: b.first_index)
        self._parked = []
        for batch in parked:
            self._assign_seq_locked(batch)
            self._resend.append(batch)
        self._draining = False
        self._cond.notify_all()

    # -- callbacks ---------------------------------------------------------------------
    def _queue_callback_locked(self, err: errors.DurableStreamError) -> None:
        if self._on_error is None:
            log.error("producer %s: %d message(s) not delivered: %s", self.producer_id,
                      len(err.undelivered), err)
            return
        self._callbacks.append(err)
        self._callbacks_enqueued += 1
        self._ensure_callback_thread_locked()
        self._cond.notify_all()

    def _ensure_callback_thread_locked(self) -> None:
        if not self._callbacks or self._callback_thread is not None or self._forked:
            return
        ref = weakref.ref(self)
        self._callback_thread = threading.Thread(
            target=_callback_main, args=(ref,), daemon=True,
            name=f"ds-producer-{self.producer_id}-callbacks",
        )
        self._callback_thread.start()

    def _drain_callbacks(self) -> None:
        with self._lock:
            self._ensure_callback_thread_locked()
            if threading.current_thread() is self._callback_thread:
                return
            deadline = time.monotonic() + 30
            while self._callbacks_done < self._callbacks_enqueued:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._done.wait(min(remaining, 0.5))

    def _callback_step(self) -> bool:
        with self._lock:
            while not self._callbacks:
                if self._stopping and not self._threads_alive():
                    self._callback_thread = None
                    return False
                self._cond.wait(0.5)
            err = self._callbacks.popleft()
        try:
            assert self._on_error is not None
            self._on_error(err)
        except Exception:
            log.exception("producer %s: on_error callback raised", self.producer_id)
        finally:
            with self._lock:
                self._callbacks_done += 1
                self._done.notify_all()
        return True

    def _threads_alive(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # -- process life -------------------------------------------------------------------
    def _after_fork_in_child(self) -> None:
        self._forked = True
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._space = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._seal_lock = threading.Lock()
        self._close_done = threading.Event()
        self._threads = []
        self._callback_thread = None
        self._refusal = errors.ProducerForkedError(
            f"producer {self.producer_id!r} was created in process {self._pid} and cannot be "
            f"used in the forked process {os.getpid()}: its buffer and sequence numbers "
            "belong to the parent; create producers after fork (gunicorn post_fork hook, or "
            "lazily on first use in each worker)",
            url=self.url,
        )

    def _flush_at_exit_now(self) -> None:
        if self._forked or self._closed or not self._flush_at_exit:
            return
        with self._lock:
            pending = self._appended - self._n_acked - self._n_failed
        if pending <= 0 and not self._unreported:
            return
        try:
            self.close(timeout=self._exit_timeout)
        except Exception as exc:
            text = (f"durable_streams: producer {self.producer_id!r}: at interpreter exit, "
                    f"messages for {self.url} were not delivered: {exc}")
            log.error("%s", text)
            if not _has_real_handler(log):
                # Nobody configured logging: the library's NullHandler would swallow this,
                # and undelivered data must never vanish without a trace.
                with contextlib.suppress(Exception):
                    sys.stderr.write(text + "\n")
                    sys.stderr.flush()


def _has_real_handler(logger: logging.Logger) -> bool:
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def _sender_main(ref: weakref.ReferenceType[IdempotentProducer]) -> None:
    while True:
        producer = ref()
        if producer is None:
            return
        try:
            batch = producer._next_batch()
            if batch is None:
                return
            producer._deliver(batch)
        except Exception as exc:  # pragma: no cover - a bug: fail loudly, never hang
            log.exception("producer sender thread crashed")
            with producer._lock:
                producer._fatal_locked(errors.ProducerError(
                    f"producer {producer.producer_id!r} stopped after an internal error: "
                    f"{exc!r}", url=producer.url))
                producer._done.notify_all()
            return
        finally:
            del producer


def _callback_main(ref: weakref.ReferenceType[IdempotentProducer]) -> None:
    while True:
        producer = ref()
        if producer is None or not producer._callback_step():
            return
        del producer


def _at_exit() -> None:
    for producer in list(_live_producers):
        producer._flush_at_exit_now()


def _after_fork() -> None:
    for producer in list(_live_producers):
        producer._after_fork_in_child()
    _live_producers.clear()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
