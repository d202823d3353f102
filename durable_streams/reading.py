"""Reading streams: catch-up, long-poll and SSE from any offset, up to EOF.

PROTOCOL.md §5.6 (catch-up), §5.7 (long-poll), §5.8 (SSE), §8 (offsets, ``-1``, ``now``),
§9.1 (JSON mode) and §10 (cursor echo).

Layout: this module is the public face (:func:`stream`, :class:`StreamResponse` and how it
is consumed); ``_read_cursor`` holds the pure rules that each response or SSE control event
applies (offset, cursor, up-to-date, closed, status; never moving back), ``_read_session``
sends the requests and runs the read loop, ``_read_interrupt`` stops a read from another
thread.

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

import codecs
import contextlib
import itertools
import time
from collections.abc import Iterator
from typing import Any

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
)
from ._read_cursor import (
    JsonBatch,
    ReadCursor,
    StreamEvent,
    decode_sse_base64,
    join_json_arrays,
    parse_json_array,
)
from ._read_interrupt import StopSignal
from ._read_session import LIVE_READ_TIMEOUT, Chunks, LiveMode, ReadSession, normalize_live
from ._redact import redact_url
from ._sse import DEFAULT_MAX_SSE_BYTES

__all__ = [
    "LIVE_READ_TIMEOUT",
    "JsonBatch",
    "LiveMode",
    "StreamEvent",
    "StreamResponse",
    "decode_sse_base64",
    "join_json_arrays",
    "parse_json_array",
    "stream",
]


class StreamResponse:
    """The result of :func:`stream`: a one-shot reader, also a context manager.

    Consume it once, with one of ``iter_events()``, ``iter_bytes()``, ``iter_text()``,
    ``iter_json()``, ``iter_json_batches()``, ``read_bytes()``, ``read_text()`` or
    ``read_json()``; a second consumption raises :class:`RuntimeError`. Iteration ends by
    itself at EOF, at the first up-to-date signal in catch-up mode, at the ``stop_after``
    deadline, or when :meth:`close` is called (from any thread: a blocked long-poll or SSE
    read ends promptly, and the iteration then ends without an error).

    Properties reflect the last chunk delivered: :attr:`offset` is where to resume,
    :attr:`up_to_date`, :attr:`closed` (EOF seen), :attr:`cursor`, :attr:`status` (the HTTP
    status of the last response: ``200`` with data, ``204`` for a long-poll that timed out
    with nothing new), :attr:`content_type`.
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
        max_sse_bytes: int = DEFAULT_MAX_SSE_BYTES,
    ) -> None:
        self._url = url
        self._live = live
        self._cursor = ReadCursor(url, offset)
        self._stop = StopSignal()
        self._session = ReadSession(
            self._cursor, self._stop, live=live, headers=headers, params=params,
            client=client, owns_client=owns_client, retry=retry, timeout=timeout,
            content_type=content_type, max_sse_bytes=max_sse_bytes,
        )
        self._deadline = time.monotonic() + stop_after if stop_after is not None else None
        self._stop_at_up_to_date = stop_at_up_to_date
        self._consumer: str | None = None  # guarded by self._stop.lock

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
        return self._cursor.offset

    @property
    def up_to_date(self) -> bool:
        """True when the last chunk said the reader had caught up with the stream."""
        return self._cursor.up_to_date

    @property
    def closed(self) -> bool:
        """True once EOF was seen: the stream is closed and everything was delivered."""
        return self._cursor.closed

    @property
    def cursor(self) -> str | None:
        """The last ``Stream-Cursor`` from the server (echoed on the following requests)."""
        return self._cursor.cursor

    @property
    def status(self) -> int:
        """The HTTP status of the last response this read processed.

        ``200`` for a response with data (or an empty catch-up answer at the tail), ``204``
        for a long-poll that timed out with nothing new (PROTOCOL §5.7) or an empty answer
        at EOF; with SSE, the status of the connection that carried the last control event
        (``200``). Before consumption it is that of the first response, sent by
        :func:`stream`. A request that was interrupted (``close()``, ``stop_after``) or that
        failed does not change it: failures raise instead.
        """
        status = self._cursor.status
        return status if status is not None else 200

    @property
    def content_type(self) -> str | None:
        """The stream's content type, from the first response."""
        return self._session.content_type

    # -- consumption ----------------------------------------------------------------------
    def iter_events(self) -> Iterator[StreamEvent]:
        """Yield every chunk, including empty up-to-date/EOF notifications."""
        chunks = self._consume("iter_events", until_up_to_date=False)
        return _events(chunks)

    def iter_bytes(self) -> Iterator[bytes]:
        """Yield the data of each non-empty chunk (for JSON streams: JSON array texts).

        For a byte stream, a large response is yielded in pieces as it arrives (at most
        1 MiB each), so memory stays bounded whatever the server sends in one response.
        """
        chunks = self._consume("iter_bytes", until_up_to_date=False, pieces=True)
        return _data(chunks)

    def iter_text(self) -> Iterator[str]:
        """Yield the data of each non-empty chunk decoded as UTF-8.

        A multi-byte character split across chunks is kept whole. Bytes that are not UTF-8
        raise :class:`ParseError` (use :meth:`iter_bytes` for binary streams).
        """
        chunks = self._consume("iter_text", until_up_to_date=False, pieces=True)
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
                f"read of {self._cursor.shown_url}: the data is not UTF-8 text ({exc}); use "
                "read_bytes()",
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
        self._stop.interrupt("closed")
        self._session.release()

    def __enter__(self) -> StreamResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"StreamResponse({self._cursor.shown_url!r}, live={self._live!r}, "
            f"offset={self.offset!r}, up_to_date={self.up_to_date}, closed={self.closed})"
        )

    # -- internals ------------------------------------------------------------------------
    def _open(self) -> None:
        self._session.open()

    def _require_json(self, method: str) -> None:
        if not self._cursor.json_mode:
            raise TypeError(
                f"{method}() needs a JSON stream (application/json); "
                f"{self._cursor.shown_url} has content type {self.content_type!r}: use "
                "iter_bytes()/iter_text()/read_bytes()"
            )

    def _consume(self, method: str, *, until_up_to_date: bool, pieces: bool = False) -> Chunks:
        with self._stop.lock:
            if self._consumer is not None:
                raise RuntimeError(
                    f"this StreamResponse was already consumed with {self._consumer}(); a "
                    "response can be consumed once: call stream() again (from .offset) to "
                    "read more"
                )
            if self._stop.reason == "closed" or self._session.released:
                raise RuntimeError("this StreamResponse is closed; call stream() again")
            self._consumer = method
        stop_when_current = (
            self._session.transport is None or until_up_to_date or self._stop_at_up_to_date
        )
        return self._session.chunks(stop_when_current, self._deadline, pieces)


# -- consumption adapters (generators, so that the consumption guard runs at call time) ----


def _events(chunks: Chunks) -> Iterator[StreamEvent]:
    with contextlib.closing(chunks):
        for chunk in chunks:
            yield chunk.event


def _data(chunks: Chunks) -> Iterator[bytes]:
    with contextlib.closing(chunks):
        for chunk in chunks:
            if chunk.event.data:
                yield chunk.event.data


def _text(chunks: Chunks, owner: StreamResponse) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    with contextlib.closing(chunks):
        for chunk in chunks:
            if not chunk.event.data:
                continue
            try:
                text = decoder.decode(chunk.event.data)
            except UnicodeDecodeError as exc:
                raise errors.ParseError(
                    f"read of {redact_url(owner.url)}: the data is not UTF-8 text ({exc}); use "
                    "iter_bytes()",
                    url=owner.url,
                ) from exc
            if text:
                yield text
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise errors.ParseError(
                f"read of {redact_url(owner.url)}: the data ends inside a UTF-8 character; use "
                "iter_bytes()",
                url=owner.url,
            ) from exc


def _item_lists(chunks: Chunks) -> Iterator[list[Any]]:
    with contextlib.closing(chunks):
        for chunk in chunks:
            if chunk.items:
                yield chunk.items


def _items(chunks: Chunks) -> Iterator[Any]:
    # chain() hands the items of each list over in C: no Python frame per message.
    return itertools.chain.from_iterable(_item_lists(chunks))


def _batches(chunks: Chunks) -> Iterator[JsonBatch]:
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
    max_sse_bytes: int = DEFAULT_MAX_SSE_BYTES,
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
        session: a ``requests.Session`` to send the requests through, used as given and
            never closed here (pass one when your tests mock ``requests``). Default: the
            shared urllib3 pools; a live request is then stopped through its socket.
        timeout: ``(connect, read)`` seconds or one number. Live requests use a read timeout
            of at least :data:`LIVE_READ_TIMEOUT` so that an idle stream is not taken for a
            dead connection.
        retry: the :class:`RetryPolicy` for transient failures (default: 5 retries); the
            count is reset by every response processed. A ``Retry-After`` beyond its
            ``max_retry_after`` raises at once.
        content_type: the stream's content type if already known (a catch-up response's
            own ``Content-Type`` wins); spares ``live="sse"`` its ``HEAD`` request.
        stop_after: stop following after this many seconds (counted from this call); the
            iteration then ends normally with what was delivered.
        stop_at_up_to_date: end the iteration at the first up-to-date signal even in a live
            mode.
        max_sse_bytes: the most SSE data held in memory before it can be delivered: one
            line, one event, and the data events awaiting their control event (characters
            of decoded text, i.e. bytes for JSON and base64 data). Default 64 MiB. Past it
            the read raises :class:`ResponseTooLargeError` (not retried).

    Memory: ``iter_bytes()``/``iter_text()`` of a byte stream deliver a large response in
    pieces of at most 1 MiB as it arrives; the other methods hold one response (or one SSE
    chunk) whole. Error bodies are read up to 64 KiB.

    The first request is sent before this function returns: a missing stream raises
    :class:`StreamNotFoundError`, a malformed offset :class:`InvalidOffsetError`.
    """
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"url must be an http:// or https:// URL, got {url!r}")
    if not isinstance(offset, str):
        raise TypeError(
            f"offset must be a str ('-1', 'now' or a saved offset), got {type(offset).__name__}"
        )
    normalize_live(live)
    if stop_after is not None and (
        isinstance(stop_after, bool) or not isinstance(stop_after, (int, float))
        or not stop_after > 0
    ):
        raise ValueError(f"stop_after must be a positive number of seconds, got {stop_after!r}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
    if isinstance(max_sse_bytes, bool) or not isinstance(max_sse_bytes, int) \
            or max_sse_bytes < 1024:
        raise ValueError(f"max_sse_bytes must be an int >= 1024, got {max_sse_bytes!r}")
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
        max_sse_bytes=max_sse_bytes,
    )
    try:
        response._open()
    except BaseException:
        response.close()
        raise
    return response
