"""IdempotentProducer: a non-blocking append buffer with background sender threads.

Messages go into a thread-safe buffer; up to ``max_in_flight`` sender threads seal batches
(by size, by linger time, or on flush) and POST them with ``Producer-Id``/``-Epoch``/``-Seq``
headers, retrying with the same (epoch, seq, body) so that the server deduplicates.
See PROTOCOL.md §5.2.1 and the README's design decisions 3, 5–8. The parts live in ``_producer/``:
the accumulator (buffer), the sequencer (every protocol decision, pure), the sender pool and
the delivery of one batch, the transport (all HTTP), the reporter (``on_error`` and
``DeliveryError``), lifecycle (exit flush, fork), flushing and closing; ``assembly`` builds
and wires them.

Locks. One producer lock guards all mutable state: the accumulator's fields (buffer, byte
budget, refusal), the sequencer's (epochs, seqs, batches, phase, probes, last offset), the
counters, the sender pool's flags and the reporter's queues. Every Condition is built on it,
one per wait: ``waits.py`` lists the senders' and ``flush()``/``close_stream()``'s waits with
each one's predicate and the events that notify it; the accumulator owns ``space``
(appenders), the reporter its two. The pool's ``seal_lock`` (one sealer at a time, so seqs
follow buffer order) is taken *before* the producer lock, never while holding it: lock order
is ``seal_lock`` -> producer lock. No HTTP call is made while either lock is held; the only
lock taken during an HTTP call is the producer lock, briefly, when the request body has been
written (``MarkedBody``). Fields read without the lock: ``closed``, ``_forked`` and the
properties (a snapshot). The refusal that ``append()`` raises has one writer,
``Accumulator.refuse`` (the highest-ranked reason wins: closed < stream closed < stopped <
forked).
"""

from __future__ import annotations

import os
import threading
import time

import requests

from . import errors
from ._http import HeadersLike, RetryPolicy, TimeoutLike
from ._producer import assembly, closing, flushing, lifecycle
from ._producer.accumulator import Refusal
from ._producer.journal_attach import attach, open_journal
from ._producer.options import EXIT_TIMEOUT_MS, ProducerStats, check_all, check_wait, encode_final
from ._producer.reporter import ErrorCallback
from ._redact import redact_url
from ._renamed import _MISSING
from .stream import DurableStream

__all__ = ["IdempotentProducer", "ProducerStats"]

_MiB = 1024 * 1024


class IdempotentProducer:
    """Exactly-once, fire-and-forget appends from ordinary synchronous code.

    ``append()`` only puts the message in a buffer and returns; sender threads (started as
    the work needs them, the first one at the first append) batch and send in the
    background, keep up to ``max_in_flight`` requests in flight, and retry transient
    failures (connection errors, timeouts, 5xx, 429) with the same producer headers and
    body until ``delivery_timeout_ms``, so the server stores each batch once (PROTOCOL.md
    §5.2.1). The constructor does no network I/O.

    Every message is either acknowledged by the server or reported: to ``on_error`` (called
    on a dedicated thread, with the failed messages in ``err.undelivered``) and as a
    :class:`DeliveryError` from the next :meth:`flush` or :meth:`close`. A failure that
    concerns one message or one batch (invalid JSON, a 400 or 413, an exception raised by
    the application's session hooks or header callables) fails only those messages; the
    producer goes on. ``err.maybe_stored`` is True whenever the request may have reached
    the server (re-appending such messages may duplicate them).

    ``close()`` (and leaving a ``with`` block) flushes and releases the producer but leaves
    the stream open; :meth:`close_stream` ends the stream for everyone.

    Every option is checked here (``TypeError``/``ValueError`` naming the option and the
    fix), never at send time.

    Args:
        stream: the stream, as a :class:`DurableStream` handle (its headers, params,
            session, retry policy and content type are used unless given here) or an
            ``http(s)://`` URL. The stream must exist (create it first).
        producer_id: this writer's stable name, sent as ``Producer-Id``: non-empty,
            printable (no CR/LF or control characters), Latin-1. Use the same id across
            restarts of the same job; two live writers must not share one.
        epoch: the producer epoch to start with (an int in 0..2**53-1). Default: 0, or
            with ``auto_claim`` the current time in milliseconds (each run then writes
            with a higher epoch than the previous one). A higher epoch fences writers with
            the same id and a lower epoch.
        auto_claim: on a fence (403 naming a higher epoch) or a "duplicate" for data this
            producer never stored (an earlier run's), move to a higher epoch and resend
            instead of failing. Repeated claims without an acknowledgement in between are
            spaced out (0.25 s doubling to 5 s, or the retry policy's delay if longer) and
            bounded by ``delivery_timeout_ms``: a server that fences every request gets a
            few requests a second, and the messages are then reported. Without it, a fence
            is a :class:`StaleEpochError` that stops the producer. Default False.
        linger_ms: how long (milliseconds, >= 0) a batch may wait for more messages before
            it is sent. Default 5. ``flush()`` sends at once.
        max_batch_bytes: the largest request body (bytes, >= 1); a larger single message
            is refused by ``append()``. Lower it if a proxy answers 413. Default 1 MiB.
        max_batch_items: at most this many messages per batch (>= 1), or None for no
            limit (default).
        max_in_flight: batches on the wire at once, 1..64 (each needs a sender thread;
            threads start only when every running one is busy). Default 5. With
            ``auto_claim``, one at a time until the epoch is confirmed.
        max_buffer_bytes: bytes accepted and not yet acknowledged or failed (buffered and
            in flight), >= ``max_batch_bytes``; ``append()`` blocks when it is spent.
            Default 64 MiB.
        max_block_ms: how long (milliseconds, >= 0) ``append()`` blocks on a full buffer
            before raising :class:`BufferFullError`; 0 raises at once. Default 60 000.
        delivery_timeout_ms: how long (milliseconds, >= 0) a batch is retried, from when
            it was sealed: every retry loop (transient errors, claims, duplicates) stops
            there and the messages are reported. Default 120 000.
        request_timeout: seconds per HTTP request, as one number or ``(connect, read)``;
            finite and > 0. Default (10, 60). Seconds, not milliseconds like the
            ``*_ms`` options, on purpose: it follows the ``timeout`` convention of
            ``requests`` (a number or a (connect, read) tuple), so one value fits both.
        retry: a :class:`RetryPolicy` for the waits between retries (the producer retries
            until ``delivery_timeout_ms``, whatever ``max_retries`` says). Default: the
            stream handle's, else ``RetryPolicy()``.
        validate_json: in JSON mode, check each message is one JSON value before sending
            (invalid ones are reported alone, valid ones of the batch sent). The check has
            no depth or size limit of Python's. False: the server decides (a 400 then
            fails the batch's invalid messages only). Default True.
        content_type: the stream's content type; when None (and the handle has none) the
            first sender HEADs the stream to learn it.
        headers: extra request headers: a mapping of names to str values (or zero-argument
            callables returning one, evaluated per request, e.g. for tokens), or a
            callable returning such a mapping. Values must not contain CR/LF or control
            characters. ``Producer-*`` headers cannot be overridden.
        session: a ``requests.Session`` to send with (its hooks, adapters, auth). Default:
            the handle's, else the library's pooled transport.
        on_error: called with each failure (a :class:`DurableStreamError` whose
            ``undelivered`` holds the messages) on the producer's own callback thread;
            exceptions it raises are logged. Default: failures are logged and raised from
            ``flush()``/``close()``.
        flush_at_exit: at interpreter exit, close the producer if messages are pending
            (waiting up to ``exit_timeout_ms``); undelivered ones are logged (or written to
            stderr when logging is not configured). Default True.
        exit_timeout_ms: milliseconds (finite, >= 0) the exit flush may take, in the same
            unit as the other ``*_ms`` options. Default 10 000.
        exit_timeout: deprecated old spelling of ``exit_timeout_ms``, in seconds: still
            works, with a :class:`DeprecationWarning`; giving both is a :class:`TypeError`.
        journal: a directory (created if missing) where every accepted message is
            recorded before ``append()`` returns, so that it survives the death of the
            process: the next producer opened on it (same stream and producer id)
            resends the pending batches with their journaled (epoch, seq, body) first, so
            the server stores each message exactly once. With history, the producer
            resumes at the journal's epoch and seq (``epoch`` applies to a new journal
            only). One live producer per journal (an OS lock). See the README, "Crash-safe
            journal". Default None: no journal, memory only.
        journal_fsync: also flush each accepted message (and each batch's seal) to the
            device before ``append()`` returns: survives power loss and kernel crashes,
            at the cost of one device flush per message. Default False.
        journal_max_bytes: the journal's size limit in bytes; ``append()`` blocks (then
            raises ``BufferFullError``) like on a full buffer. Default 4 x
            ``max_buffer_bytes``, at least 64 MiB.
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
        exit_timeout_ms: float = EXIT_TIMEOUT_MS,
        exit_timeout: float = _MISSING,
        journal: str | os.PathLike[str] | None = None,
        journal_fsync: bool = False,
        journal_max_bytes: int | None = None,
    ) -> None:
        exit_timeout_s, epoch, fresh_epoch = check_all(
            producer_id=producer_id, headers=headers, request_timeout=request_timeout,
            exit_timeout_ms=exit_timeout_ms, exit_timeout=exit_timeout, retry=retry,
            content_type=content_type, session=session, auto_claim=auto_claim,
            validate_json=validate_json, flush_at_exit=flush_at_exit, epoch=epoch,
            max_batch_bytes=max_batch_bytes, max_batch_items=max_batch_items,
            max_in_flight=max_in_flight, max_buffer_bytes=max_buffer_bytes,
            linger_ms=linger_ms, max_block_ms=max_block_ms,
            delivery_timeout_ms=delivery_timeout_ms, on_error=on_error)
        target = assembly.resolve_stream(stream, content_type=content_type, session=session,
                                         retry=retry)
        self.url = url = target.url
        self.producer_id = producer_id
        self.auto_claim = auto_claim
        self._where = redact_url(url)
        self._max_batch_bytes = max_batch_bytes
        self._delivery_timeout = float(delivery_timeout_ms) / 1000.0
        self._validate_json = validate_json
        self._flush_at_exit = flush_at_exit
        self._exit_timeout = exit_timeout_s
        self._token = object()  # identifies this producer's threads (lifecycle)
        parts = assembly.build(
            self, target, producer_id=producer_id, token=self._token, headers=headers,
            request_timeout=request_timeout, epoch=epoch, fresh_epoch=fresh_epoch,
            auto_claim=auto_claim, linger_ms=linger_ms, max_batch_bytes=max_batch_bytes,
            max_batch_items=max_batch_items, max_in_flight=max_in_flight,
            max_buffer_bytes=max_buffer_bytes, max_block_ms=max_block_ms,
            delivery_timeout=self._delivery_timeout, validate_json=validate_json,
            on_error=on_error)
        self._lock, self._counters, self._transport = parts.lock, parts.counters, parts.transport
        self._reporter, self._acc, self._pool = parts.reporter, parts.acc, parts.pool
        self._seq = parts.seq
        self._closed = False
        self._close_result: str | None = None
        self._close_done = threading.Event()
        self._pid = os.getpid()
        self._forked = False
        self._journal = open_journal(
            journal, url=url, producer_id=producer_id, fsync=journal_fsync,
            max_bytes=journal_max_bytes, max_buffer_bytes=max_buffer_bytes,
            max_batch_bytes=max_batch_bytes)
        lifecycle.register(self)
        #: message indexes continue the journal's: those below are not this producer's
        self._index_base = 0
        if self._journal is not None:
            r = self._journal.replay
            self._index_base = r.next_index - r.count  # replayed messages count as ours
            with self._lock:
                attach(self._journal, acc=self._acc, seq=self._seq, pool=self._pool,
                       delivery_timeout=self._delivery_timeout)
        if type(self).append is IdempotentProducer.append:
            # Not overridden: skip one Python call per message (the buffer's method does
            # exactly what append() documents).
            self.append = self._acc.append  # type: ignore[method-assign]

    # -- public properties -------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """The epoch the producer currently writes with."""
        return self._seq.epoch

    @property
    def next_seq(self) -> int:
        """The sequence number the next sealed batch will get."""
        return self._seq.next_seq

    @property
    def pending_count(self) -> int:
        """Messages in the buffer, not yet sealed into a batch."""
        return len(self._acc.buf)

    @property
    def pending_bytes(self) -> int:
        """Bytes accepted and not yet acknowledged or failed (buffered + in flight)."""
        return self._acc.pending_bytes

    @property
    def in_flight_count(self) -> int:
        """Sealed batches not yet acknowledged or failed."""
        return len(self._seq.batches)

    @property
    def last_offset(self) -> str:
        """The highest stream offset acknowledged to this producer ('' before any)."""
        return self._seq.last_offset

    @property
    def closed(self) -> bool:
        return self._closed

    def owns_current_thread(self) -> bool:
        """True when called on one of this producer's own threads (senders, on_error)."""
        return lifecycle.is_producer_thread(self._token)

    def stats(self) -> ProducerStats:
        with self._lock:
            c, acc = self._counters, self._acc
            return ProducerStats(
                messages_appended=acc.appended - self._index_base, messages_acked=c.acked,
                messages_failed=c.failed, bytes_acked=c.bytes_acked, batches_sent=c.batches,
                requests_sent=c.requests, retries=c.retries, duplicates=c.duplicates,
                failures=c.failures, epoch_claims=c.claims, buffered_messages=len(acc.buf),
                buffered_bytes=acc.nbytes, pending_bytes=acc.pending_bytes,
                in_flight=len(self._seq.batches))

    # -- append ------------------------------------------------------------------------
    def append(self, data: str | bytes | bytearray | memoryview) -> None:
        """Queue one message; returns at once without touching the network.

        ``data`` is ``str`` (sent as UTF-8; in JSON mode, the text of one JSON value) or
        bytes-like. Raises ``TypeError`` for anything else (serialise objects first, e.g.
        ``json.dumps(obj)``), ``ValueError`` for an empty message, one larger than
        ``max_batch_bytes`` or a ``str`` that is not encodable as UTF-8 (a lone surrogate),
        :class:`~durable_streams.BufferFullError` when the buffer stayed full for
        ``max_block_ms``, and the producer's terminal error once it was closed, fenced or
        its stream closed. Invalid JSON in JSON mode is not refused here: it is reported
        through ``on_error`` and ``flush()`` (with ``validate_json``, before it is sent).
        With ``journal=``, the message is journaled before this returns.

        A subclass may override it (and call ``super().append(data)``). Without an
        override, each instance's ``append`` is bound straight to the buffer's own method
        (see ``__init__``), so the hot path costs one Python call per message.
        """
        self._acc.append(data)

    # -- flush / close -----------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> str:
        """Send everything appended so far and wait until each message is acknowledged.

        ``timeout``: seconds to wait (finite, >= 0), or None (default) to wait as long as
        the messages are retried (at most ``delivery_timeout_ms`` after each was sealed).

        Returns the stream offset just after the last acknowledged message (the same as
        :attr:`last_offset` afterwards; ``''`` if nothing was ever acknowledged): the
        natural point to fork the stream at, or to resume reading after this writer.
        Raises :class:`DeliveryError` if any message failed since the last report (the
        failures also went to ``on_error``), and ``TimeoutError`` if ``timeout`` seconds
        pass first (the messages stay queued and keep being retried). Called from
        ``on_error`` (the callback thread), it does not raise the failure being reported.
        """
        timeout = check_wait("flush", timeout)
        self._check_fork()
        return flushing.flush(self._lock, acc=self._acc, seq=self._seq, pool=self._pool,
                              reporter=self._reporter, timeout=timeout, where=self._where)

    def close(self, timeout: float | None = None) -> None:
        """Flush, stop the sender threads and release the session. The stream stays open.

        ``timeout``: seconds (finite, >= 0) the whole close may take, or None (default):
        as long as the flush takes. It returns within ``timeout``: messages still
        unacknowledged then are given up (reported to ``on_error`` as undelivered; a
        request already on the wire is left to finish on its daemon thread and may still
        store its batch, which the report then says may have been stored).

        Idempotent; afterwards ``append()`` raises :class:`ProducerClosedError`. Raises
        :class:`DeliveryError` if messages could not be delivered, and ``TimeoutError`` if
        the flush did not finish within ``timeout``.
        """
        timeout = check_wait("close", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._forked:
            self._closed = True
            return
        with self._lock:
            already, self._closed = self._closed, True
            self._acc.refuse(errors.ProducerClosedError(
                f"producer {self.producer_id!r} for {self._where} is closed", url=self.url),
                Refusal.CLOSED)
        if already:
            # Another thread is closing (or closed) it: wait for that to finish.
            if not self._reporter.on_own_thread() and not self._close_done.wait(timeout):
                raise TimeoutError(f"close() of the producer for {self._where} is still "
                                   f"running in another thread after {timeout}s")
            with self._lock:
                self._reporter.raise_unreported()
            return
        flush_error: BaseException | None = None
        try:
            # Keep a little of the time for giving up: senders waiting to retry then
            # fail their batches (reported) before close() returns.
            self.flush(None if timeout is None else timeout - min(timeout * 0.1, 0.25))
        except (TimeoutError, errors.DeliveryError) as exc:
            flush_error = exc
        try:
            closing.shutdown(self._lock, self, seq=self._seq, pool=self._pool,
                             reporter=self._reporter, transport=self._transport,
                             journal=self._journal, producer_id=self.producer_id,
                             where=self._where, url=self.url,
                             abandon=isinstance(flush_error, TimeoutError), deadline=deadline)
        finally:
            self._close_done.set()
        if not isinstance(flush_error, errors.DeliveryError):
            with self._lock:  # failures reported meanwhile come before a TimeoutError
                self._reporter.raise_unreported()
        if flush_error is not None:
            raise flush_error

    def __enter__(self) -> IdempotentProducer:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close()

    # -- close_stream ----------------------------------------------------------------
    def close_stream(self, final_message: str | bytes | None = None,
                     timeout: float | None = None) -> str:
        """Flush, then close the stream for everyone (EOF) and return its final offset.

        The close carries the producer headers, so a retried close is deduplicated by the
        server; calling this again returns the same offset. ``final_message`` (str or
        bytes, not empty; in JSON mode one JSON value) is appended atomically with the
        close. ``timeout`` (seconds, finite, >= 0, or None) bounds the flush; the closing
        request itself is retried (and, with ``auto_claim``, re-claimed) until
        ``delivery_timeout_ms``. Afterwards ``append()`` raises
        :class:`StreamClosedError`; call :meth:`close` to release the producer.
        """
        timeout = check_wait("close_stream", timeout)
        self._check_fork()
        if self._close_result is not None:
            return self._close_result
        body = encode_final(final_message)
        self.flush(timeout)
        with self._lock:
            self._acc.refuse(errors.StreamClosedError(
                f"producer {self.producer_id!r} closed the stream {self._where}",
                url=self.url), Refusal.STREAM_CLOSED)
        if body is not None:
            body = self._transport.final_body(body, validate=self._validate_json)
        self._close_result = closing.close_stream(
            self._lock, seq=self._seq, pool=self._pool, transport=self._transport, body=body,
            delivery_timeout=self._delivery_timeout)
        return self._close_result

    # -- process life -------------------------------------------------------------------
    def _check_fork(self) -> None:
        if self._forked:
            raise lifecycle.forked_error(self.producer_id, self._pid, self.url)

    def _after_fork_in_child(self) -> None:
        """In a forked child: fresh locks (a parent thread may have held one), no threads,
        and every use refused — the buffer and seqs belong to the parent."""
        self._forked = True
        if self._journal is not None:
            self._journal.after_fork_in_child()  # the child never touches it
        self._lock = lock = threading.Lock()
        for part in (self._acc, self._pool, self._reporter):
            part.after_fork_in_child(lock)
        self._close_done = threading.Event()
        with lock:
            self._acc.refuse(lifecycle.forked_error(self.producer_id, self._pid, self.url,
                                                    refusal=True), Refusal.FORKED)

    def _flush_at_exit_now(self) -> None:
        if self._forked or self._closed or not self._flush_at_exit:
            return
        with self._lock:
            c = self._counters
            pending = self._acc.appended - self._index_base - c.acked - c.failed
            unreported = bool(self._reporter.unreported)
        if pending > 0 or unreported:
            lifecycle.close_at_exit(lambda: self.close(timeout=self._exit_timeout),
                                    self.producer_id, self._where)
