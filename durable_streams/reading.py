"""Reading streams: catch-up, long-poll and SSE from any offset, up to EOF.

PROTOCOL.md §5.6 (catch-up), §5.7 (long-poll), §5.8 (SSE), §8 (offsets, ``-1``, ``now``),
§9.1 (JSON mode) and §10 (cursor echo).

How a read proceeds
-------------------
:func:`stream` sends the first request at once, so a missing stream or a bad offset raises
from :func:`stream` itself, and :attr:`StreamResponse.content_type` is known before any
consumption. The body is read when you consume the response.

With ``live=False``, ``True``/``"auto"`` and ``"long-poll"``, catch-up ``GET`` requests
continue from ``Stream-Next-Offset`` until a response says ``Stream-Up-To-Date``. With
``live=False`` the read ends there; the live modes then follow the stream (long-poll
requests, or an SSE connection) until the stream is closed (EOF), the response is closed, or
the ``stop_after`` deadline passes. ``live="sse"`` reads everything, the backlog included,
over SSE from the first request (an SSE response does not carry the stream's content type,
so a ``HEAD`` asks for it first unless ``content_type`` was given or the read goes through a
:class:`~durable_streams.DurableStream` that knows it). An SSE connection the server ends is
re-opened from the last control event's offset. ``read_bytes()``/``read_text()``/
``read_json()`` always end at the first up-to-date signal.

Chunks
------
Everything is delivered in *chunks*, one per server response (catch-up or long-poll) or, with
SSE, one per ``control`` event: the ``data`` events that precede a control event form one
chunk, released only when the control event gives the offset after them. A connection that
drops between a data event and its control event therefore loses nothing and repeats
nothing: the half-received data is discarded and re-read from the last control offset.

A chunk that carries no data is delivered by :meth:`StreamResponse.iter_events` and
:meth:`StreamResponse.iter_json_batches` only when it is a pure notification, i.e. its
``up_to_date`` or ``closed`` flag is set (an empty catch-up response at the tail, a long-poll
``204``, an SSE control event without data); its ``data`` is then ``b""`` (``items`` is
``[]``). ``iter_bytes``/``iter_text``/``iter_json`` skip such chunks. A quiet live stream
thus produces one such notification per long-poll hold (or SSE keep-alive), which doubles as
a heartbeat.

Transports
----------
``live=True``/``"auto"`` follows with SSE; if SSE fails before it ever delivered a control
event for any reason other than a 404 (e.g. a 400 "not supported", a response that is not
``text/event-stream``, connections that end without any event), the response switches to
long-poll for good. Live requests use a read timeout of at least :data:`LIVE_READ_TIMEOUT`
(90 s): longer than the server's long-poll hold, so a quiet stream is not taken for a dead
connection.

Stopping
--------
:meth:`StreamResponse.close` may be called from any thread. A live request waiting for the
server's answer runs on a short-lived helper thread, so the consumer stops waiting at once
(the abandoned request is closed when it returns); an SSE body read is woken by shutting the
socket down. The iteration then ends normally, and :attr:`StreamResponse.offset` is the
offset after the last chunk delivered. ``stop_after`` works the same way, from a timer.

Failures
--------
Connection errors, timeouts, ``5xx`` and ``429`` are retried with the
:class:`~durable_streams.RetryPolicy` backoff (``Retry-After`` is honoured); the count of
consecutive failures is reset by every successfully processed response or control event.
Other statuses raise at once with the stream URL in the message (404
:class:`StreamNotFoundError`, 400 :class:`InvalidOffsetError`/:class:`BadRequestError`, 410
:class:`RetentionGoneError`...). A JSON body or SSE event that does not parse raises
:class:`ParseError` and is never retried.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import requests

from . import _protocol as P
from . import errors
from ._http import (
    DEFAULT_RETRY,
    HeadersLike,
    HttpClient,
    ParamsLike,
    RetryPolicy,
    TimeoutLike,
    build_query,
    error_from,
    merge_headers,
    normalize_timeout,
    resolve,
    transport_error,
)
from ._sse import SSEParser

__all__ = [
    "LIVE_READ_TIMEOUT",
    "JsonBatch",
    "LiveMode",
    "StreamEvent",
    "StreamResponse",
    "stream",
]

log = logging.getLogger("durable_streams")

#: ``False`` (catch-up only), ``True``/``"auto"`` (SSE, falling back to long-poll),
#: ``"long-poll"`` or ``"sse"``.
LiveMode = bool | Literal["auto", "long-poll", "sse"]

#: The smallest read timeout (seconds) used for live requests: longer than any server's
#: long-poll hold or SSE keep-alive interval we know of (the reference server holds 30 s and
#: sends an SSE control event at least that often; §10.2 suggests closing SSE after ~60 s).
LIVE_READ_TIMEOUT = 90.0

_SSE_READ_SIZE = 64 * 1024
_SSE_HEADERS = {"Accept": "text/event-stream"}


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One chunk of a read: what one server response (or SSE control event) delivered.

    ``data`` is the raw content (for JSON streams: a JSON array text); ``offset`` is the
    offset *after* this chunk, to resume from; ``up_to_date`` means the reader had caught up
    with the stream when the server answered; ``closed`` means EOF; ``cursor`` is the
    server's last ``Stream-Cursor``. ``data`` is empty only for pure up-to-date/EOF
    notifications.
    """

    data: bytes
    offset: str
    up_to_date: bool
    closed: bool
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class JsonBatch:
    """The messages of one chunk of a JSON stream, with the offset to resume after them."""

    items: list[Any]
    offset: str
    up_to_date: bool
    cursor: str | None
    closed: bool


class _Chunk(NamedTuple):
    event: StreamEvent
    items: list[Any] | None


_Chunks = Generator[_Chunk, None, None]


class _Stopped(Exception):
    """Internal: the response was closed or its deadline passed; end quietly."""


class _RetryableStatus(Exception):
    def __init__(self, error: errors.DurableStreamError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _Call:
    """A request run on a helper thread so that the caller can stop waiting for it."""

    __slots__ = ("done", "outcome", "abandoned")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.outcome: tuple[bool, Any] | None = None
        self.abandoned = False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json_array(data: bytes, *, where: str, url: str | None = None) -> list[Any]:
    """Decode a JSON-mode body (§9.1.5): exactly one JSON array. Raise :class:`ParseError`."""
    try:
        value = _JSON_DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.ParseError(
            f"{where}: the server sent JSON that does not parse ({exc}); "
            f"first bytes: {data[:120]!r}",
            url=url,
        ) from exc
    if not isinstance(value, list):
        raise errors.ParseError(
            f"{where}: expected a JSON array of messages (PROTOCOL §9.1.5), got "
            f"{type(value).__name__}",
            url=url,
        )
    return value


def join_json_arrays(arrays: list[bytes]) -> bytes:
    """Concatenate the texts of several valid JSON arrays into one array text."""
    if len(arrays) == 1:
        return arrays[0]
    inner = []
    for text in arrays:
        body = text.strip()[1:-1].strip()
        if body:
            inner.append(body)
    return b"[" + b",".join(inner) + b"]"


def decode_sse_base64(text: str, *, where: str = "SSE data", url: str | None = None) -> bytes:
    """Decode base64 SSE data (§5.8): drop CR/LF inserted between lines, then decode strictly."""
    compact = text.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.ParseError(f"{where}: invalid base64 data ({exc})", url=url) from exc


def _shutdown_socket(response: requests.Response) -> None:
    """Wake a thread blocked reading ``response`` by shutting its socket down.

    Closing a socket from another thread does not interrupt a blocked ``recv`` on Linux;
    ``shutdown`` does. Only the socket is touched here; the reading thread closes the response.
    """
    raw = getattr(response, "raw", None)
    conn = getattr(raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    if sock is None:  # fall back to the socket behind the body's file object
        fp = getattr(getattr(raw, "_fp", None), "fp", None)
        sock = getattr(getattr(fp, "raw", None), "_sock", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _normalize_live(live: Any) -> tuple[str | None, bool]:
    if live is False:
        return None, False
    if live is True or live == "auto":
        return "sse", True
    if live in ("long-poll", "sse"):
        return str(live), False
    raise ValueError(
        f"live must be False, True, 'auto', 'long-poll' or 'sse', got {live!r}"
    )


class StreamResponse:
    """The result of :func:`stream`: a one-shot reader, also a context manager.

    Consume it once, with one of ``iter_events()``, ``iter_bytes()``, ``iter_text()``,
    ``iter_json()``, ``iter_json_batches()``, ``read_bytes()``, ``read_text()`` or
    ``read_json()``; a second consumption raises :class:`RuntimeError`. Iteration ends by
    itself at EOF, at the first up-to-date signal in catch-up mode, at the ``stop_after``
    deadline, or when :meth:`close` is called (from any thread: a blocked long-poll or SSE
    read ends promptly, and the iteration then ends without an error).

    Properties reflect the last chunk delivered: :attr:`offset` is where to resume,
    :attr:`up_to_date`, :attr:`closed` (EOF seen), :attr:`cursor`, :attr:`content_type`.
    With ``iter_json()``, :attr:`offset` already points after the whole chunk while its items
    are being yielded; checkpoint with ``iter_json_batches()`` for per-chunk precision.
    """

    def __init__(
        self,
        url: str,
        *,
        offset: str,
        live: LiveMode,
        headers: HeadersLike,
        params: ParamsLike,
        client: HttpClient,
        owns_client: bool,
        retry: RetryPolicy,
        timeout: TimeoutLike,
        content_type: str | None,
        stop_after: float | None,
        stop_at_up_to_date: bool,
    ) -> None:
        self._url = url
        self._live = live
        self._transport, self._auto = _normalize_live(live)
        self._offset = offset
        self._cursor: str | None = None
        self._up_to_date = False
        self._eof = False
        # live="sse" reads everything over SSE, from the first request; the other modes
        # catch up with plain GETs first.
        self._live_phase = self._transport == "sse" and not self._auto
        self._content_type = content_type
        self._headers = headers
        self._params = params
        self._client = client
        self._owns_client = owns_client
        self._retry = retry
        connect, read = normalize_timeout(timeout) if timeout is not None else client.timeout
        self._timeout = (connect, read)
        self._live_timeout = (connect, max(read, LIVE_READ_TIMEOUT))
        self._stop_after = stop_after
        self._stop_at_up_to_date = stop_at_up_to_date
        self._created = time.monotonic()
        self._failures = 0
        self._sse_idle_connections = 0
        self._sse_worked = False
        self._stop_when_current = False  # set by the consumption method
        # Cross-thread state, guarded by _lock.
        self._lock = threading.Lock()
        self._stop_reason: str | None = None
        self._stop_event = threading.Event()
        self._waiter: _Call | None = None
        self._sse_response: requests.Response | None = None
        self._pending: requests.Response | None = None
        self._consumer: str | None = None
        self._released = False
        self._timer: threading.Timer | None = None

    # -- public state ---------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._url

    @property
    def live(self) -> LiveMode:
        """The ``live`` mode this response was opened with."""
        return self._live

    @property
    def offset(self) -> str:
        """The offset to resume from: after the last chunk delivered (the start offset before)."""
        return self._offset

    @property
    def up_to_date(self) -> bool:
        """True when the last chunk said the reader had caught up with the stream."""
        return self._up_to_date

    @property
    def closed(self) -> bool:
        """True once EOF was seen: the stream is closed and everything was delivered."""
        return self._eof

    @property
    def cursor(self) -> str | None:
        """The last ``Stream-Cursor`` from the server (echoed on the following requests)."""
        return self._cursor

    @property
    def content_type(self) -> str | None:
        """The stream's content type, from the first response."""
        return self._content_type

    # -- consumption ----------------------------------------------------------------------
    def iter_events(self) -> Iterator[StreamEvent]:
        """Yield every chunk, including empty up-to-date/EOF notifications."""
        chunks = self._consume("iter_events", until_up_to_date=False)
        return _events(chunks)

    def iter_bytes(self) -> Iterator[bytes]:
        """Yield the data of each non-empty chunk (for JSON streams: JSON array texts)."""
        chunks = self._consume("iter_bytes", until_up_to_date=False)
        return _data(chunks)

    def iter_text(self) -> Iterator[str]:
        """Yield the data of each non-empty chunk decoded as UTF-8.

        A multi-byte character split across chunks is kept whole. Bytes that are not UTF-8
        raise :class:`ParseError` (use :meth:`iter_bytes` for binary streams).
        """
        chunks = self._consume("iter_text", until_up_to_date=False)
        return _text(chunks, self)

    def iter_json(self) -> Iterator[Any]:
        """Yield the messages of a JSON stream one by one (each chunk's array is flattened)."""
        self._require_json("iter_json")
        chunks = self._consume("iter_json", until_up_to_date=False)
        return _items(chunks)

    def iter_json_batches(self) -> Iterator[JsonBatch]:
        """Yield one :class:`JsonBatch` per chunk of a JSON stream (empty ones included)."""
        self._require_json("iter_json_batches")
        chunks = self._consume("iter_json_batches", until_up_to_date=False)
        return _batches(chunks)

    def read_bytes(self) -> bytes:
        """Everything up to the first up-to-date signal (or EOF), as one bytes object."""
        chunks = self._consume("read_bytes", until_up_to_date=True)
        with contextlib.closing(chunks):
            return b"".join(chunk.event.data for chunk in chunks)

    def read_text(self) -> str:
        """Like :meth:`read_bytes`, decoded as UTF-8 (:class:`ParseError` if it is not)."""
        chunks = self._consume("read_text", until_up_to_date=True)
        with contextlib.closing(chunks):
            data = b"".join(chunk.event.data for chunk in chunks)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise errors.ParseError(
                f"read of {self._url}: the data is not UTF-8 text ({exc}); use read_bytes()",
                url=self._url,
            ) from exc

    def read_json(self) -> list[Any]:
        """All messages of a JSON stream up to the first up-to-date signal (or EOF)."""
        self._require_json("read_json")
        chunks = self._consume("read_json", until_up_to_date=True)
        out: list[Any] = []
        with contextlib.closing(chunks):
            for chunk in chunks:
                if chunk.items:
                    out.extend(chunk.items)
        return out

    # -- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        """Stop reading and release the connection. Safe from any thread, and idempotent.

        A consumer blocked in a long-poll or SSE read wakes up promptly and its iteration
        ends normally. The stream itself is not affected (this is not ``close_stream``).
        """
        self._interrupt("closed")
        self._release()

    def __enter__(self) -> StreamResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"StreamResponse({self._url!r}, live={self._live!r}, offset={self._offset!r}, "
            f"up_to_date={self._up_to_date}, closed={self._eof})"
        )

    # -- internals: consumption guard -----------------------------------------------------
    def _is_json(self) -> bool:
        return P.is_json(self._content_type)

    def _require_json(self, method: str) -> None:
        if not self._is_json():
            raise TypeError(
                f"{method}() needs a JSON stream (application/json); {self._url} has content "
                f"type {self._content_type!r}: use iter_bytes()/iter_text()/read_bytes()"
            )

    def _consume(self, method: str, *, until_up_to_date: bool) -> _Chunks:
        with self._lock:
            if self._consumer is not None:
                raise RuntimeError(
                    f"this StreamResponse was already consumed with {self._consumer}(); a "
                    "response can be consumed once: call stream() again (from .offset) to "
                    "read more"
                )
            if self._stop_reason == "closed" or self._released:
                raise RuntimeError("this StreamResponse is closed; call stream() again")
            self._consumer = method
        return self._chunks(until_up_to_date)

    # -- internals: stopping --------------------------------------------------------------
    def _interrupt(self, reason: str) -> None:
        with self._lock:
            if self._stop_reason is None:
                self._stop_reason = reason
            call = self._waiter
            sse = self._sse_response
        self._stop_event.set()
        if call is not None:
            call.done.set()
        if sse is not None:
            _shutdown_socket(sse)

    def _check_stop(self) -> None:
        if self._stop_reason is not None:
            raise _Stopped

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            pending, self._pending = self._pending, None
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        if pending is not None:
            pending.close()
        if self._owns_client:
            self._client.close()

    def _start_deadline(self) -> None:
        if self._stop_after is None:
            return
        remaining = self._created + self._stop_after - time.monotonic()
        if remaining <= 0:
            self._interrupt("deadline")
            return
        timer = threading.Timer(remaining, self._interrupt, args=("deadline",))
        timer.daemon = True
        with self._lock:
            if self._released:
                return
            self._timer = timer
        timer.start()

    def _sleep(self, seconds: float) -> None:
        if self._stop_event.wait(seconds):
            raise _Stopped

    # -- internals: requests --------------------------------------------------------------
    def _open(self) -> None:
        """Send the first request (from :func:`stream`); raise on 4xx or exhaustion.

        That is a catch-up GET, or, for ``live="sse"``, the SSE connection itself; its
        response (``text/event-stream``) does not tell the stream's content type, so when
        none was given a ``HEAD`` asks for it first (JSON mode changes how data parses).
        """
        if self._live_phase and not self._content_type:
            head = self._client.request(
                "HEAD", self._url, operation="read", headers=self._headers,
                params=self._params, retry=self._retry, timeout=self._timeout,
            )
            self._content_type = head.headers.get(P.CONTENT_TYPE) or P.DEFAULT_CONTENT_TYPE
        live = "sse" if self._live_phase else None
        while True:
            try:
                response = self._fetch(live)
            except errors.TransportError as exc:
                failure: errors.DurableStreamError = exc
                retry_after = None
            except _RetryableStatus as exc:
                failure, retry_after = exc.error, exc.retry_after
            else:
                content_type = response.headers.get(P.CONTENT_TYPE)
                if content_type and live is None:
                    self._content_type = content_type
                self._pending = response
                return
            self._backoff(failure, retry_after)

    def _backoff(self, failure: errors.DurableStreamError, retry_after: float | None) -> None:
        """Wait before the next attempt, or raise ``failure`` when retries are exhausted."""
        if self._stop_reason is not None:
            raise _Stopped
        if self._failures >= self._retry.max_retries:
            raise failure
        wait = self._retry.delay(self._failures, retry_after)
        self._failures += 1
        log.debug("read %s at offset %s: %s; retry %d/%d in %.3fs", self._url, self._offset,
                  failure, self._failures, self._retry.max_retries, wait)
        self._sleep(wait)

    def _fetch(self, live: str | None) -> requests.Response:
        """One GET from the current offset; a 2xx response with its body unread.

        Raises :class:`TransportError` or :class:`_RetryableStatus` for transient failures,
        the mapped error for other statuses, :class:`_Stopped` when stopping.
        """
        self._check_stop()
        protocol = {"offset": self._offset}
        if live is not None:
            protocol["live"] = live
        if self._cursor:
            protocol["cursor"] = self._cursor
        query = build_query(resolve(self._params), protocol)
        headers = merge_headers(resolve(self._headers), _SSE_HEADERS if live == "sse" else {})
        if live is None:
            response = self._client.send(
                "GET", self._url, operation="read", headers=headers, params=query,
                timeout=self._timeout, stream=True,
            )
        else:
            timeout = self._live_timeout

            def send() -> requests.Response:
                return self._client.send(
                    "GET", self._url, operation="read", headers=headers, params=query,
                    timeout=timeout, stream=True,
                )

            response = self._call_interruptibly(send)
        status = response.status_code
        if 200 <= status < 300:
            return response
        error = error_from(response, url=self._url, operation="read")
        response.close()
        if self._retry.is_retryable_status(status):
            raise _RetryableStatus(error, P.parse_retry_after(response.headers.get(P.RETRY_AFTER)))
        raise error

    def _call_interruptibly(self, fn: Callable[[], requests.Response]) -> requests.Response:
        """Run ``fn`` on a helper thread and wait for it unless :meth:`close` intervenes.

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
            with self._lock:
                abandoned = call.abandoned
                if not abandoned:
                    call.outcome = outcome
            if abandoned and isinstance(outcome[1], requests.Response):
                outcome[1].close()
            call.done.set()

        with self._lock:
            if self._stop_reason is not None:
                raise _Stopped
            self._waiter = call
        threading.Thread(target=run, name="durable-streams-read", daemon=True).start()
        try:
            call.done.wait()
        except BaseException:  # e.g. KeyboardInterrupt: let the helper clean up after itself
            with self._lock:
                self._waiter = None
                call.abandoned = call.outcome is None
                outcome = call.outcome
            if outcome is not None and isinstance(outcome[1], requests.Response):
                outcome[1].close()
            raise
        with self._lock:
            self._waiter = None
            outcome = call.outcome
            if outcome is None:
                call.abandoned = True
                raise _Stopped
        ok, value = outcome
        if not ok:
            raise value
        if self._stop_reason is not None:
            value.close()
            raise _Stopped
        response: requests.Response = value
        return response

    def _read_body(self, response: requests.Response) -> bytes:
        try:
            raw = response.raw
            read = getattr(raw, "read", None)
            if read is not None:
                data: bytes = read(decode_content=True)
            else:  # pragma: no cover - an adapter without a urllib3 response
                data = response.content
        except Exception as exc:
            if self._stop_reason is not None:
                raise _Stopped from None
            raise transport_error(exc, url=self._url, operation="read") from exc
        finally:
            response.close()
        return data

    # -- internals: turning responses into chunks -----------------------------------------
    def _where(self) -> str:
        return f"read of {self._url} at offset {self._offset}"

    def _take_http(self, response: requests.Response) -> _Chunk | None:
        """Process a catch-up or long-poll response (§5.6, §5.7)."""
        status = response.status_code
        headers = response.headers
        if status == 204:
            response.close()
            body = b""
        else:
            body = self._read_body(response)
        # Nothing is processed once stopping: the offset stays that of the last delivery.
        self._check_stop()
        next_offset = headers.get(P.STREAM_NEXT_OFFSET)
        if not next_offset:
            raise errors.DurableStreamError(
                f"{self._where()}: the server answered {status} without a Stream-Next-Offset "
                "header",
                status=status, code="PROTOCOL_ERROR", url=self._url, headers=headers,
            )
        closed = P.header_true(headers.get(P.STREAM_CLOSED))
        up_to_date = closed or P.header_true(headers.get(P.STREAM_UP_TO_DATE))
        items: list[Any] | None = None
        if self._is_json():
            items = parse_json_array(body, where=self._where(), url=self._url) if body else []
        self._check_forward(next_offset)
        if not body and not up_to_date and next_offset == self._offset:
            # No data, no progress and no up-to-date flag: asking again would loop forever.
            log.debug("%s: empty response without progress; treating as up to date",
                      self._where())
            up_to_date = True
        self._offset = next_offset
        self._cursor = headers.get(P.STREAM_CURSOR) or self._cursor
        self._up_to_date = up_to_date
        self._eof = closed
        self._failures = 0
        return self._chunk(body, items)

    def _check_forward(self, next_offset: str) -> None:
        """Never move back: offsets are ordered (§8), so an answer whose next offset is
        before the one we asked for (seen from a server recovering its on-disk tail after
        a crash) would re-deliver data. Deliver nothing and ask again after a backoff."""
        current = self._offset
        if current in (P.OFFSET_BEGINNING, P.OFFSET_NOW) or next_offset >= current:
            return
        raise _RetryableStatus(errors.DurableStreamError(
            f"{self._where()}: the server answered with next offset {next_offset}, before "
            f"the requested {current}; asking again",
            code="PROTOCOL_ERROR", url=self._url,
        ), None)

    def _chunk(self, data: bytes, items: list[Any] | None) -> _Chunk | None:
        empty = not items if items is not None else not data
        if empty:
            if not (self._up_to_date or self._eof):
                return None
            data = b""
        event = StreamEvent(data, self._offset, self._up_to_date, self._eof, self._cursor)
        return _Chunk(event, items)

    def _take_control(self, text: str, parts: list[str], base64_data: bool) -> _Chunk | None:
        """Process an SSE ``control`` event and the ``data`` events before it (§5.8)."""
        where = self._where()
        try:
            control = json.loads(text)
        except ValueError as exc:
            raise errors.ParseError(
                f"{where}: SSE control event is not JSON ({exc}): {text[:200]!r}", url=self._url
            ) from exc
        if not isinstance(control, dict):
            raise errors.ParseError(
                f"{where}: SSE control event is not a JSON object: {text[:200]!r}",
                url=self._url,
            )
        next_offset = control.get("streamNextOffset")
        if not isinstance(next_offset, str) or not next_offset:
            raise errors.ParseError(
                f"{where}: SSE control event without streamNextOffset: {text[:200]!r}",
                url=self._url,
            )
        pieces: list[bytes] = []
        for part in parts:
            if base64_data:
                pieces.append(decode_sse_base64(part, where=where, url=self._url))
            else:
                pieces.append(part.encode("utf-8"))
        items: list[Any] | None = None
        if self._is_json():
            items = []
            arrays = []
            for piece in pieces:
                if piece.strip():
                    items.extend(parse_json_array(piece, where=where, url=self._url))
                    arrays.append(piece)
            data = join_json_arrays(arrays) if arrays else b""
        else:
            data = b"".join(pieces)
        self._check_forward(next_offset)
        closed = control.get("streamClosed") is True
        cursor = control.get("streamCursor")
        self._offset = next_offset
        if isinstance(cursor, str) and cursor:
            self._cursor = cursor
        self._up_to_date = closed or control.get("upToDate") is True
        self._eof = closed
        self._failures = 0
        return self._chunk(data, items)

    def _sse_bytes(self, response: requests.Response) -> Iterator[bytes]:
        read1 = getattr(response.raw, "read1", None)
        if read1 is None:  # pragma: no cover - urllib3 < 2 has no read1()
            pieces = response.iter_content(chunk_size=None)

            def read1(_size: int) -> bytes:
                return next(pieces, b"")

        while True:
            try:
                data: bytes = read1(_SSE_READ_SIZE)
            except Exception as exc:
                if self._stop_reason is not None:
                    raise _Stopped from None
                raise transport_error(exc, url=self._url, operation="read") from exc
            if self._stop_reason is not None:
                raise _Stopped
            if not data:
                return
            yield data

    def _sse_session(self) -> Iterator[_Chunk]:
        """One SSE connection from the current offset, until EOF or the server ends it."""
        response, self._pending = self._pending, None
        if response is None:
            response = self._fetch("sse")
        media = P.media_type(response.headers.get(P.CONTENT_TYPE))
        if media != "text/event-stream":
            response.close()
            raise errors.DurableStreamError(
                f"{self._where()}: live='sse' needs a text/event-stream response, got "
                f"{media or 'no content type'}",
                status=response.status_code, code="SSE_NOT_SUPPORTED", url=self._url,
            )
        encoding = (response.headers.get(P.SSE_DATA_ENCODING) or "").strip().lower()
        base64_data = encoding == "base64"
        with self._lock:
            if self._stop_reason is not None:
                response.close()
                raise _Stopped
            self._sse_response = response
        parser = SSEParser()
        parts: list[str] = []
        controls = 0
        try:
            for raw in self._sse_bytes(response):
                for event in parser.feed(raw):
                    self._check_stop()
                    if event.event == "data":
                        parts.append(event.data)
                    elif event.event == "control":
                        chunk = self._take_control(event.data, parts, base64_data)
                        parts = []
                        controls += 1
                        self._sse_idle_connections = 0
                        self._sse_worked = True
                        if chunk is not None:
                            yield chunk
                        if self._eof or (self._up_to_date and self._stop_when_current):
                            return
                    # other event types are ignored (§5.8 defines data and control only)
        finally:
            with self._lock:
                self._sse_response = None
            response.close()
        if controls:
            log.debug("%s: SSE connection ended by the server; reconnecting", self._where())
            return
        self._sse_idle_connections += 1
        if self._auto and self._sse_idle_connections >= 2:
            raise errors.DurableStreamError(
                f"{self._where()}: SSE connections end without delivering any event",
                code="SSE_NOT_SUPPORTED", url=self._url,
            )
        raise errors.TransportError(
            f"{self._where()}: the SSE connection ended before any control event",
            url=self._url,
        )

    def _can_fall_back(self, exc: errors.DurableStreamError) -> bool:
        """``live="auto"``: SSE failed before it ever worked, and not because of the stream.

        A 404 (the stream is gone) is final. Other refusals (400 "SSE not supported", 405,
        a response that is not ``text/event-stream``, connections that end without any
        event, 5xx after the retries...) switch this response to long-poll for good; an
        error that is about the stream itself then shows up again on the long-poll request.
        """
        return (self._auto and self._transport == "sse" and not self._sse_worked
                and exc.status != 404)

    def _chunks(self, until_up_to_date: bool) -> _Chunks:
        """The read loop shared by every consumption method."""
        self._stop_when_current = (
            self._transport is None or until_up_to_date or self._stop_at_up_to_date
        )
        try:
            self._start_deadline()
            while not self._eof:
                if self._up_to_date and self._stop_when_current:
                    return
                failure: errors.DurableStreamError
                retry_after: float | None = None
                try:
                    if not self._live_phase:
                        response, self._pending = self._pending, None
                        if response is None:
                            response = self._fetch(None)
                        chunk = self._take_http(response)
                        if self._up_to_date:
                            self._live_phase = True
                        if chunk is not None:
                            yield chunk
                    elif self._transport == "long-poll":
                        chunk = self._take_http(self._fetch("long-poll"))
                        if chunk is not None:
                            yield chunk
                    else:
                        yield from self._sse_session()
                    continue
                except errors.TransportError as exc:
                    failure = exc
                except _RetryableStatus as exc:
                    failure, retry_after = exc.error, exc.retry_after
                except errors.ParseError:
                    raise
                except errors.DurableStreamError as exc:
                    if not self._can_fall_back(exc):
                        raise
                    log.info("%s: SSE unavailable (%s); following with long-poll instead",
                             self._where(), exc)
                    self._transport = "long-poll"
                    self._failures = 0
                    continue
                self._backoff(failure, retry_after)
        except _Stopped:
            return
        finally:
            self._release()


# -- consumption adapters (generators, so that the consumption guard runs at call time) ----


def _events(chunks: _Chunks) -> Iterator[StreamEvent]:
    with contextlib.closing(chunks):
        for chunk in chunks:
            yield chunk.event


def _data(chunks: _Chunks) -> Iterator[bytes]:
    with contextlib.closing(chunks):
        for chunk in chunks:
            if chunk.event.data:
                yield chunk.event.data


def _text(chunks: _Chunks, owner: StreamResponse) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    with contextlib.closing(chunks):
        for chunk in chunks:
            if not chunk.event.data:
                continue
            try:
                text = decoder.decode(chunk.event.data)
            except UnicodeDecodeError as exc:
                raise errors.ParseError(
                    f"read of {owner.url}: the data is not UTF-8 text ({exc}); use iter_bytes()",
                    url=owner.url,
                ) from exc
            if text:
                yield text
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise errors.ParseError(
                f"read of {owner.url}: the data ends inside a UTF-8 character; use iter_bytes()",
                url=owner.url,
            ) from exc


def _item_lists(chunks: _Chunks) -> Iterator[list[Any]]:
    with contextlib.closing(chunks):
        for chunk in chunks:
            if chunk.items:
                yield chunk.items


def _items(chunks: _Chunks) -> Iterator[Any]:
    # chain() hands the items of each list over in C: no Python frame per message.
    return itertools.chain.from_iterable(_item_lists(chunks))


def _batches(chunks: _Chunks) -> Iterator[JsonBatch]:
    with contextlib.closing(chunks):
        for chunk in chunks:
            event = chunk.event
            yield JsonBatch(chunk.items or [], event.offset, event.up_to_date, event.cursor,
                            event.closed)


def stream(
    url: str,
    *,
    offset: str = P.OFFSET_BEGINNING,
    live: LiveMode = False,
    headers: HeadersLike = None,
    params: ParamsLike = None,
    session: requests.Session | None = None,
    timeout: TimeoutLike = None,
    retry: RetryPolicy | None = None,
    content_type: str | None = None,
    stop_after: float | None = None,
    stop_at_up_to_date: bool = False,
    _client: HttpClient | None = None,
) -> StreamResponse:
    """Read the stream at ``url`` from ``offset``; returns a one-shot :class:`StreamResponse`.

    Args:
        offset: ``"-1"`` (the beginning, default), ``"now"`` (the current tail: only new
            data), or an offset from a previous read (``StreamResponse.offset``).
        live: ``False`` reads what is there and stops when up to date. ``True``/``"auto"``
            catches up, then follows with SSE, switching to long-poll if SSE fails before it
            worked (for any reason but a 404). ``"long-poll"`` catches up, then follows with
            long-poll requests; ``"sse"`` reads everything over SSE. Live reads end at EOF
            (the stream was closed), at ``stop_after``, or on :meth:`StreamResponse.close`.
        headers, params: extra request headers / query parameters; values may be callables,
            evaluated for every request (token refresh).
        session: a ``requests.Session`` to use (never closed here).
        timeout: ``(connect, read)`` seconds or one number. Live requests use a read timeout
            of at least :data:`LIVE_READ_TIMEOUT` so that an idle stream is not taken for a
            dead connection.
        retry: the :class:`RetryPolicy` for transient failures (default: 5 retries).
        content_type: the stream's content type if already known (a catch-up response's
            own ``Content-Type`` wins); spares ``live="sse"`` its ``HEAD`` request.
        stop_after: stop following after this many seconds (counted from this call); the
            iteration then ends normally with what was delivered.
        stop_at_up_to_date: end the iteration at the first up-to-date signal even in a live
            mode.

    The first request is sent before this function returns: a missing stream raises
    :class:`StreamNotFoundError`, a malformed offset :class:`InvalidOffsetError`.
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
    if not isinstance(offset, str):
        raise TypeError(
            f"offset must be a str ('-1', 'now' or a saved offset), got {type(offset).__name__}"
        )
    _normalize_live(live)
    if stop_after is not None and (
        isinstance(stop_after, bool) or not isinstance(stop_after, (int, float))
        or not stop_after > 0
    ):
        raise ValueError(f"stop_after must be a positive number of seconds, got {stop_after!r}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
    if _client is not None and session is not None:
        raise ValueError("pass session= to DurableStream(...), not to its stream() method")
    client = _client if _client is not None else HttpClient(session, timeout=timeout)
    response = StreamResponse(
        url,
        offset=offset,
        live=live,
        headers=headers,
        params=params,
        client=client,
        owns_client=_client is None,
        retry=retry if retry is not None else DEFAULT_RETRY,
        timeout=timeout,
        content_type=content_type,
        stop_after=float(stop_after) if stop_after is not None else None,
        stop_at_up_to_date=bool(stop_at_up_to_date),
    )
    try:
        response._open()
    except BaseException:
        response.close()
        raise
    return response
