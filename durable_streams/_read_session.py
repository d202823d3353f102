"""The HTTP side of a read: requests, retries, transports (catch-up, long-poll, SSE).

A :class:`ReadSession` sends the requests of one :class:`~durable_streams.StreamResponse`
through its :class:`~durable_streams._http.HttpClient`, reads the bodies, and feeds every
response or SSE control event to the pure :class:`~durable_streams._read_cursor.ReadCursor`,
which decides what it means. Stopping from another thread goes through the
:class:`~durable_streams._read_interrupt.StopSignal` (on the default transport, through the
socket of the pending request: ``HttpClient.send(on_sent=...)``). The only parts of a
response used are ``status_code``, ``headers``, ``read``/``read1``/``load``, ``shutdown()``
and ``close()`` (:class:`~durable_streams._response.Response`).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from typing import Any, Literal

from . import _protocol as P
from . import errors
from ._http import (
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
from ._read_cursor import Chunk, ReadCursor, RetryableRead, StreamEvent
from ._read_interrupt import OnSent, Stopped, StopSignal
from ._response import Response
from ._sse import DEFAULT_MAX_SSE_BYTES, SSELimitExceeded, SSEParser

__all__ = ["LIVE_READ_TIMEOUT", "Chunks", "LiveMode", "ReadSession", "normalize_live"]

log = logging.getLogger("durable_streams")

#: ``False`` (catch-up only), ``True``/``"auto"`` (SSE, falling back to long-poll),
#: ``"long-poll"`` or ``"sse"``.
LiveMode = bool | Literal["auto", "long-poll", "sse"]

#: The smallest read timeout (seconds) used for live requests: longer than any server's
#: long-poll hold or SSE keep-alive interval we know of (the reference server holds 30 s and
#: sends an SSE control event at least that often; §10.2 suggests closing SSE after ~60 s).
LIVE_READ_TIMEOUT = 90.0

_SSE_READ_SIZE = 64 * 1024
#: The largest piece of a body ``iter_bytes()`` holds at once (1 MiB).
BODY_PIECE = 1024 * 1024
_SSE_HEADERS = {"Accept": "text/event-stream"}

Chunks = Generator[Chunk, None, None]


def normalize_live(live: Any) -> tuple[str | None, bool]:
    """``live`` -> (transport to follow with, or None for catch-up only; auto fallback?)."""
    if live is False:
        return None, False
    if live is True or live == "auto":
        return "sse", True
    if live in ("long-poll", "sse"):
        return str(live), False
    raise ValueError(
        f"live must be False, True, 'auto', 'long-poll' or 'sse', got {live!r}"
    )


class ReadSession:
    """Requests and the read loop of one response (one consumer thread, see module doc)."""

    def __init__(
        self,
        cursor: ReadCursor,
        stop: StopSignal,
        *,
        live: LiveMode,
        headers: HeadersLike,
        params: ParamsLike,
        client: HttpClient,
        owns_client: bool,
        retry: RetryPolicy,
        timeout: TimeoutLike,
        content_type: str | None,
        max_sse_bytes: int = DEFAULT_MAX_SSE_BYTES,
    ) -> None:
        self.cursor = cursor
        self._max_sse = max_sse_bytes
        self.stop = stop
        self.url = cursor.url
        self.transport, self.auto = normalize_live(live)
        # live="sse" reads everything over SSE, from the first request; the other modes
        # catch up with plain GETs first.
        self.live_phase = self.transport == "sse" and not self.auto
        self.content_type: str | None = None
        self.set_content_type(content_type)
        self._headers = headers
        self._params = params
        self._client = client
        self._owns_client = owns_client
        self._retry = retry
        connect, read = normalize_timeout(timeout) if timeout is not None else client.timeout
        self._timeout = (connect, read)
        self._live_timeout = (connect, max(read, LIVE_READ_TIMEOUT))
        self._failures = 0
        self._sse_idle_connections = 0
        self._sse_worked = False
        self._stop_when_current = False  # set when the loop starts
        self._pieces = False
        # iter_bytes pieces already delivered from the offset _delivered_at (see _take_pieces)
        self._delivered_at: str | None = None
        self._delivered = 0
        # Cross-thread (guarded by stop.lock): the first response, and release.
        self._pending: Response | None = None
        self.released = False

    def set_content_type(self, content_type: str | None) -> None:
        self.content_type = content_type
        self.cursor.json_mode = P.is_json(content_type)

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> None:
        """Send the first request (from ``stream()``); raise on 4xx or exhaustion.

        That is a catch-up GET, or, for ``live="sse"``, the SSE connection itself; its
        response (``text/event-stream``) does not tell the stream's content type, so when
        none was given a ``HEAD`` asks for it first (JSON mode changes how data parses).
        """
        if self.live_phase and not self.content_type:
            head = self._client.request(
                "HEAD", self.url, operation="read", headers=self._headers,
                params=self._params, retry=self._retry, timeout=self._timeout,
            )
            self.set_content_type(head.headers.get(P.CONTENT_TYPE) or P.DEFAULT_CONTENT_TYPE)
        live = "sse" if self.live_phase else None
        while True:
            try:
                response = self._fetch(live)
            except errors.TransportError as exc:
                failure: errors.DurableStreamError = exc
                retry_after = None
            except RetryableRead as exc:
                failure, retry_after = exc.error, exc.retry_after
            else:
                content_type = response.headers.get(P.CONTENT_TYPE)
                if content_type and live is None:
                    self.set_content_type(content_type)
                self.cursor.status = response.status_code
                self._pending = response
                return
            self._backoff(failure, retry_after)

    def release(self) -> None:
        """Free everything the read holds (idempotent; any thread)."""
        with self.stop.lock:
            if self.released:
                return
            self.released = True
            pending, self._pending = self._pending, None
        self.stop.finish()
        if pending is not None:
            pending.close()
        if self._owns_client:
            self._client.close()

    def _take_pending(self) -> Response | None:
        response, self._pending = self._pending, None
        return response

    # -- the read loop --------------------------------------------------------------------
    def chunks(self, stop_when_current: bool, deadline: float | None,
               pieces: bool = False) -> Chunks:
        """The read loop shared by every consumption method.

        With ``pieces`` (``iter_bytes``/``iter_text`` of a byte stream) a catch-up or
        long-poll body is delivered as it arrives, in pieces of at most
        :data:`BODY_PIECE` bytes, instead of being held whole: memory stays bounded
        whatever the size of one response. Only the last piece of a response carries its
        offset and flags.
        """
        self._stop_when_current = stop_when_current
        self._pieces = pieces
        cursor = self.cursor
        try:
            if deadline is not None:
                self.stop.start_deadline(deadline)
            while not cursor.closed:
                if cursor.up_to_date and stop_when_current:
                    return
                failure: errors.DurableStreamError
                retry_after: float | None = None
                try:
                    if not self.live_phase:
                        response = self._take_pending()
                        if response is None:
                            response = self._fetch(None)
                        yield from self._take(response)
                        if cursor.up_to_date:
                            self.live_phase = True
                    elif self.transport == "long-poll":
                        yield from self._take(self._fetch("long-poll"))
                    else:
                        yield from self._sse_connection()
                    continue
                except errors.TransportError as exc:
                    failure = exc
                except RetryableRead as exc:
                    failure, retry_after = exc.error, exc.retry_after
                except (errors.ParseError, errors.ResponseTooLargeError):
                    raise
                except errors.DurableStreamError as exc:
                    if not self._can_fall_back(exc):
                        raise
                    log.info("%s: SSE unavailable (%s); following with long-poll instead",
                             cursor.where(), exc)
                    self.transport = "long-poll"
                    self._failures = 0
                    continue
                self._backoff(failure, retry_after)
        except Stopped:
            return
        finally:
            self.release()

    def _backoff(self, failure: errors.DurableStreamError, retry_after: float | None) -> None:
        """Wait before the next attempt, or raise ``failure`` when retries are exhausted."""
        self.stop.check()
        if self._failures >= self._retry.max_retries:
            raise failure
        if retry_after is not None and retry_after > self._retry.max_retry_after:
            raise type(failure)(
                f"{failure.message}; the server asked to retry after {retry_after:g} s, longer "
                f"than the retry policy's max_retry_after ({self._retry.max_retry_after:g} s): "
                "not waiting; try again later",
                status=failure.status, url=failure.url, headers=failure.headers,
                body=failure.body) from None
        wait = self._retry.delay(self._failures, retry_after)
        self._failures += 1
        log.debug("%s: %s; retry %d/%d in %.3fs", self.cursor.where(), failure,
                  self._failures, self._retry.max_retries, wait)
        self.stop.sleep(wait)

    def _can_fall_back(self, exc: errors.DurableStreamError) -> bool:
        """``live="auto"``: SSE failed before it ever worked, and not because of the stream.

        A 404 (the stream is gone) is final. Other refusals (400 "SSE not supported", 405,
        a response that is not ``text/event-stream``, connections that end without any
        event, 5xx after the retries...) switch this response to long-poll for good; an
        error that is about the stream itself then shows up again on the long-poll request.
        """
        return (self.auto and self.transport == "sse" and not self._sse_worked
                and exc.status != 404)

    # -- requests -------------------------------------------------------------------------
    def _fetch(self, live: str | None) -> Response:
        """One GET from the current offset; a 2xx response with its body unread.

        Raises :class:`TransportError` or :class:`RetryableRead` for transient failures,
        the mapped error for other statuses, :class:`Stopped` when stopping.
        """
        self.stop.check()
        query = build_query(resolve(self._params), self.cursor.query(live))
        headers = merge_headers(resolve(self._headers), _SSE_HEADERS if live == "sse" else {})
        if live is None:
            response = self._client.send(
                "GET", self.url, operation="read", headers=headers, params=query,
                timeout=self._timeout, stream=True,
            )
        else:
            timeout = self._live_timeout

            def send(on_sent: OnSent | None = None) -> Response:
                return self._client.send(
                    "GET", self.url, operation="read", headers=headers, params=query,
                    timeout=timeout, stream=True, on_sent=on_sent,
                )

            # A live request waits up to the server's hold; close() must be able to end
            # that wait: through the request's socket where the transport hands it over,
            # else by waiting for the request on a helper thread.
            if self._client.interruptible(self.url):
                response = self.stop.send(send)
            else:
                response = self.stop.call(send)
        status = response.status_code
        if 200 <= status < 300:
            return response
        error = error_from(response, url=self.url, operation="read")
        response.close()
        if self._retry.is_retryable_status(status):
            raise RetryableRead(error, P.parse_retry_after(response.headers.get(P.RETRY_AFTER)))
        raise error

    def _read_body(self, response: Response) -> bytes:
        try:
            data = response.load()
        except Exception as exc:
            if self.stop.reason is not None:
                raise Stopped from None
            raise transport_error(exc, url=self.url, operation="read") from exc
        finally:
            response.close()
        return data

    def _take(self, response: Response) -> Iterator[Chunk]:
        if self._pieces and not self.cursor.json_mode and response.status_code != 204:
            yield from self._take_pieces(response)
            return
        chunk = self._take_http(response)
        if chunk is not None:
            yield chunk

    def _take_pieces(self, response: Response) -> Iterator[Chunk]:
        """A body delivered as it arrives (see :meth:`chunks`). If the connection breaks
        midway, the retry from the same offset skips what was already delivered (the data
        at an offset never changes, PROTOCOL §8), so nothing is repeated."""
        status, headers = response.status_code, response.headers
        cursor = self.cursor
        skip = self._delivered if self._delivered_at == cursor.offset else 0
        self._delivered_at, self._delivered = cursor.offset, skip
        held = b""
        try:
            while True:
                try:
                    piece = response.read(BODY_PIECE)
                except Exception as exc:
                    if self.stop.reason is not None:
                        raise Stopped from None
                    raise transport_error(exc, url=self.url, operation="read") from exc
                self.stop.check()
                if not piece:
                    break
                if skip:
                    cut = min(skip, len(piece))
                    piece, skip = piece[cut:], skip - cut
                    if not piece:
                        continue
                if held:
                    self._delivered += len(held)
                    yield Chunk(StreamEvent(held, cursor.offset, False, False, cursor.cursor),
                                None)
                held = piece
        finally:
            response.close()
        if skip:
            raise RetryableRead(errors.DurableStreamError(
                f"{cursor.where()}: the answer is shorter than the data already delivered "
                "from this offset; asking again", code="PROTOCOL_ERROR", url=self.url), None)
        chunk = cursor.apply_response(status, headers, held)
        self._delivered_at, self._delivered = None, 0
        self._failures = 0
        if chunk is not None:
            yield chunk

    def _take_http(self, response: Response) -> Chunk | None:
        """Read a catch-up or long-poll response and apply it to the cursor (§5.6, §5.7)."""
        status = response.status_code
        if status == 204:
            response.close()
            body = b""
        else:
            body = self._read_body(response)
        # Nothing is processed once stopping: the offset stays that of the last delivery.
        self.stop.check()
        chunk = self.cursor.apply_response(status, response.headers, body)
        self._failures = 0
        return chunk

    def _too_large(self, what: str) -> errors.ResponseTooLargeError:
        return errors.ResponseTooLargeError(
            f"{self.cursor.where()}: {what} (max_sse_bytes); the server sent more than this "
            "reader holds in memory: raise max_sse_bytes, or read with live='long-poll'",
            url=self.url)

    # -- SSE ------------------------------------------------------------------------------
    def _sse_bytes(self, response: Response) -> Iterator[bytes]:
        read1 = response.read1
        stop = self.stop
        while True:
            try:
                data: bytes = read1(_SSE_READ_SIZE)
            except Exception as exc:
                if stop.reason is not None:
                    raise Stopped from None
                raise transport_error(exc, url=self.url, operation="read") from exc
            if stop.reason is not None:
                raise Stopped
            if not data:
                return
            yield data

    def _sse_connection(self) -> Iterator[Chunk]:
        """One SSE connection from the current offset, until EOF or the server ends it."""
        cursor = self.cursor
        response = self._take_pending()
        if response is None:
            response = self._fetch("sse")
        media = P.media_type(response.headers.get(P.CONTENT_TYPE))
        if media != "text/event-stream":
            response.close()
            raise errors.DurableStreamError(
                f"{cursor.where()}: live='sse' needs a text/event-stream response, got "
                f"{media or 'no content type'}",
                status=response.status_code, code="SSE_NOT_SUPPORTED", url=self.url,
            )
        encoding = (response.headers.get(P.SSE_DATA_ENCODING) or "").strip().lower()
        base64_data = encoding == "base64"
        status = response.status_code
        self.stop.watch(response)
        parser = SSEParser(self._max_sse)
        parts: list[str] = []
        pending = 0
        controls = 0
        try:
            for raw in self._sse_bytes(response):
                try:
                    events = parser.feed(raw)
                except SSELimitExceeded as exc:
                    raise self._too_large(str(exc)) from None
                for event in events:
                    self.stop.check()
                    if event.event == "data":
                        pending += len(event.data)
                        if pending > self._max_sse:
                            raise self._too_large(
                                f"the SSE data events before a control event add up to more "
                                f"than {self._max_sse} bytes")
                        parts.append(event.data)
                    elif event.event == "control":
                        chunk = cursor.apply_control(event.data, parts, base64_data,
                                                     status=status)
                        self._failures = 0
                        parts = []
                        pending = 0
                        controls += 1
                        self._sse_idle_connections = 0
                        self._sse_worked = True
                        if chunk is not None:
                            yield chunk
                        if cursor.finished(self._stop_when_current):
                            return
                    # other event types are ignored (§5.8 defines data and control only)
        finally:
            self.stop.unwatch()
            response.close()
        if controls:
            log.debug("%s: SSE connection ended by the server; reconnecting", cursor.where())
            return
        self._sse_idle_connections += 1
        if self.auto and self._sse_idle_connections >= 2:
            raise errors.DurableStreamError(
                f"{cursor.where()}: SSE connections end without delivering any event",
                code="SSE_NOT_SUPPORTED", url=self.url,
            )
        raise errors.TransportError(
            f"{cursor.where()}: the SSE connection ended before any control event",
            url=self.url,
        )
