"""DurableStream: blocking create / connect / head / append / close / delete, and reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from . import _fork, errors
from . import _protocol as P
from ._http import (
    DEFAULT_RETRY,
    DEFAULT_TOTAL_TIMEOUT,
    HeadersLike,
    HttpClient,
    ParamsLike,
    RetryPolicy,
    TimeoutLike,
)
from ._message import create_body, encode_message, expiry_headers, next_offset
from ._redact import redact_url
from ._renamed import _MISSING, renamed

if TYPE_CHECKING:
    from .reading import LiveMode, StreamResponse

__all__ = ["DurableStream", "StreamInfo"]


@dataclass(frozen=True)
class StreamInfo:
    """What ``HEAD`` says about a stream (PROTOCOL §5.5)."""

    offset: str
    content_type: str | None
    closed: bool
    ttl_seconds: int | None
    expires_at: str | None
    etag: str | None
    cache_control: str | None


def _info_from_headers(h: Mapping[str, str]) -> StreamInfo:
    """The metadata in the headers of a ``HEAD`` response."""
    return StreamInfo(
        offset=h.get(P.STREAM_NEXT_OFFSET, ""),
        content_type=h.get(P.CONTENT_TYPE),
        closed=P.header_true(h.get(P.STREAM_CLOSED)),
        ttl_seconds=P.parse_int_header(h, P.STREAM_TTL),
        expires_at=h.get(P.STREAM_EXPIRES_AT),
        etag=h.get(P.ETAG),
        cache_control=h.get("Cache-Control"),
    )


class DurableStream:
    """A handle on one stream URL. Creating a handle makes no request.

    Every method is a plain blocking call. Requests that are safe to repeat (create, head,
    delete, close without a body, reads) are retried on connection errors, timeouts, 5xx
    and 429 according to ``retry``. :meth:`append` is retried only on responses that say the
    server did nothing (5xx, 429) or when the request never reached the server, unless it
    carries ``seq=`` (then the server rejects a repeat); for exactly-once writes under any
    failure use :class:`~durable_streams.IdempotentProducer`.

    Args:
        url: the stream's ``http://`` or ``https://`` URL. User-info (``user:pw@``) is sent
            as Basic auth; it and query values never appear in messages or logs.
        content_type: the stream's content type, if known (``create`` sets it; otherwise the
            first ``append`` learns it with a ``HEAD``). ``application/json`` means JSON mode
            (PROTOCOL §9.1): each ``append`` is one JSON message.
        headers: extra request headers: a mapping whose values are strings or zero-argument
            callables evaluated on every request (token refresh), or a callable returning
            such a mapping. They never follow a redirect to another origin.
        params: extra query parameters, in the same forms as ``headers``.
        session: a ``requests.Session`` to send every request through, used as given (its
            auth, adapters, proxies and hooks apply) and never closed here. Default: the
            library's shared urllib3 connection pools. Pass one when your tests mock
            ``requests`` (``responses``, ``requests_mock``): the default path does not go
            through ``requests``.
        timeout: ``(connect, read)`` seconds for each attempt, or one number for both.
            Default ``(10, 60)``.
        retry: the :class:`RetryPolicy` for transient failures (connection errors, timeouts,
            5xx, 429). Default: 5 retries, 0.1 s growing to 10 s, ``Retry-After`` honoured
            up to ``max_retry_after`` (60 s); a longer ``Retry-After`` raises at once with
            the server's hint (``retry_after`` on the error).
        total_timeout: the most one blocking call may take in seconds, every attempt and
            wait included (default 60; ``None``: only ``timeout`` and ``retry`` bound it).
            Each attempt's timeouts are cut to what is left, and no wait runs past it.
            Reads (:meth:`stream`) are not bounded by it; see ``stop_after`` there.
    """

    def __init__(
        self,
        url: str,
        *,
        content_type: str | None = None,
        headers: HeadersLike = None,
        params: ParamsLike = None,
        session: requests.Session | None = None,
        timeout: TimeoutLike = None,
        retry: RetryPolicy | None = None,
        total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            shown = redact_url(url) if isinstance(url, str) else type(url).__name__
            raise ValueError(f"url must be an http:// or https:// URL, got {shown!r}")
        self.url = url
        self.content_type = content_type
        self.headers = headers
        self.params = params
        self.retry = retry if retry is not None else DEFAULT_RETRY
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, got {type(retry).__name__}")
        self._client = HttpClient(session, timeout=timeout, total_timeout=total_timeout)
        #: True when :meth:`create` made a new stream, False when it already existed
        #: with the same configuration, None when the handle was not made by create().
        self.created: bool | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        url: str,
        *,
        content_type: str | None = None,
        ttl_seconds: int | None = None,
        expires_at: Any = None,
        closed: bool = False,
        body: Any = None,
        headers: HeadersLike = None,
        params: ParamsLike = None,
        session: requests.Session | None = None,
        timeout: TimeoutLike = None,
        retry: RetryPolicy | None = None,
        total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT,
    ) -> DurableStream:
        """Create the stream (PUT, §5.1), or confirm that it exists with the same config.

        Args:
            url, content_type, headers, params, session, timeout, retry, total_timeout: as
                for :class:`DurableStream` (``content_type`` defaults to
                ``application/octet-stream`` on the server).
            ttl_seconds: expire the stream this many whole seconds after its last use
                (``Stream-TTL``); exclusive with ``expires_at``. Default: no expiry.
            expires_at: expire it at this moment: an aware ``datetime`` or an RFC 3339
                string (``Stream-Expires-At``).
            closed: create it already closed (EOF after ``body``). Default ``False``.
            body: the initial content: str/bytes as-is; in JSON mode any other value is
                serialised (a list is stored as several messages, as the server flattens
                one level). Default: empty.

        Returns the handle, whose ``created`` is True for a new stream, False when an
        identical one was already there. Raises :class:`StreamExistsError` if a stream with
        a different configuration is there.
        """
        extra = expiry_headers(ttl_seconds, expires_at)
        # Encode the body before building the handle, so a bad body raises before any
        # request and leaves no session behind.
        data = create_body(body, content_type)
        if content_type:
            extra[P.CONTENT_TYPE] = content_type
        if closed:
            extra[P.STREAM_CLOSED] = "true"
        return cls._put(url, extra, data, operation="create", content_type=content_type,
                        headers=headers, params=params, session=session, timeout=timeout,
                        retry=retry, total_timeout=total_timeout)

    @classmethod
    def _put(
        cls,
        url: str,
        extra: dict[str, str],
        data: bytes | None,
        *,
        operation: str,
        content_type: str | None,
        headers: HeadersLike,
        params: ParamsLike,
        session: requests.Session | None,
        timeout: TimeoutLike,
        retry: RetryPolicy | None,
        total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT,
    ) -> DurableStream:
        """The PUT behind :meth:`create` and :meth:`fork`: a new handle with ``.created``."""
        handle = cls(url, content_type=content_type, headers=headers, params=params,
                     session=session, timeout=timeout, retry=retry,
                     total_timeout=total_timeout)
        try:
            response = handle._client.request(
                "PUT", url, operation=operation, headers=headers, extra_headers=extra,
                params=params, data=data, retry=handle.retry,
            )
        except BaseException:
            handle.close()
            raise
        handle.created = response.status_code == 201
        handle.content_type = response.headers.get(P.CONTENT_TYPE) or content_type
        return handle

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        headers: HeadersLike = None,
        params: ParamsLike = None,
        session: requests.Session | None = None,
        timeout: TimeoutLike = None,
        retry: RetryPolicy | None = None,
        total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT,
    ) -> DurableStream:
        """A handle on an existing stream, checked with one ``HEAD`` (which also learns its
        content type); raises :class:`StreamNotFoundError` if there is none.

        The arguments are those of :class:`DurableStream`.
        """
        handle = cls(url, headers=headers, params=params, session=session, timeout=timeout,
                     retry=retry, total_timeout=total_timeout)
        try:
            handle.head()
        except BaseException:
            handle.close()
            raise
        return handle

    def fork(
        self,
        url: str,
        *,
        offset: str | None = None,
        sub_offset: int | None = None,
        ttl_seconds: int | None = None,
        expires_at: Any = None,
    ) -> DurableStream:
        """Create a fork of this stream at ``url`` (PUT with fork headers, PROTOCOL §4.2).

        Args:
            url: the fork's URL, on this stream's server (same scheme, host and port).
            offset: the fork point: an offset the server returned (``append()``'s result,
                ``StreamResponse.offset``); ``None`` (default): the current tail.
            sub_offset: JSON messages (JSON mode) or bytes (otherwise) past ``offset`` that
                the fork also inherits; an int >= 0, default none.
            ttl_seconds, expires_at: the fork's expiry, as for :meth:`create`; default: the
                source's.

        The fork uses this handle's headers, params, session, timeouts and retry policy.

        The fork inherits this stream's data up to ``offset`` (``None``: the current tail)
        plus ``sub_offset`` JSON messages (JSON mode) or bytes (otherwise) past it, then
        lives on its own: appends, closes and deletes on either side do not affect the
        other. Returns the fork's handle with ``.created`` (``False`` when the same fork
        already existed, so a retry or re-run is harmless). Expiry: without ``ttl_seconds``
        or ``expires_at`` the fork inherits the source's. Producer state is not inherited:
        an :class:`IdempotentProducer` on the fork starts afresh.

        ``url`` must be on this stream's server (``ValueError`` before any request).
        Raises :class:`ForkError` (bad or out-of-range offset or sub-offset),
        :class:`StreamNotFoundError` (no source), :class:`StreamSoftDeletedError` (the source
        was deleted but still has forks), :class:`ContentTypeMismatchError`, or
        :class:`StreamExistsError` (another stream or fork is at ``url``).
        """
        extra = _fork.fork_headers(self.url, url, offset=offset, sub_offset=sub_offset)
        extra.update(expiry_headers(ttl_seconds, expires_at))
        # Send the source's content type: the reference server answers 409 instead of 200
        # to a repeated fork PUT without one (so a retry would fail), and HEAD also tells a
        # missing or soft-deleted source apart before anything is created.
        try:
            content_type = self._known_content_type()
        except errors.DurableStreamError as exc:
            raise _fork.fork_error(exc, self.url, url) from exc
        extra[P.CONTENT_TYPE] = content_type
        session = None if self._client.owns_session else self._client.session
        try:
            return type(self)._put(
                url, extra, None, operation="fork", content_type=content_type,
                headers=self.headers, params=self.params, session=session,
                timeout=self._client.timeout, retry=self.retry,
                total_timeout=self._client.total_timeout,
            )
        except errors.DurableStreamError as exc:
            mapped = _fork.fork_error(exc, self.url, url)
            if mapped is exc:
                raise
            raise mapped from exc

    # -- operations ---------------------------------------------------------------------
    def head(self) -> StreamInfo:
        """Stream metadata (HEAD, §5.5): the tail offset, content type, closed flag, expiry;
        also refreshes :attr:`content_type`. Retried per ``retry``, within ``total_timeout``.
        Raises :class:`StreamNotFoundError` (404), :class:`StreamSoftDeletedError` (410)."""
        response = self._client.request(
            "HEAD", self.url, operation="head", headers=self.headers,
            params=self.params, retry=self.retry,
        )
        info = _info_from_headers(response.headers)
        if info.content_type:
            self.content_type = info.content_type
        return info

    def _known_content_type(self) -> str:
        if not self.content_type:
            self.head()
        return self.content_type or P.DEFAULT_CONTENT_TYPE

    def _encode_message(self, data: Any, what: str) -> bytes:
        """One message as a request body for this stream's content type (§9.1.2)."""
        return encode_message(data, what, content_type=self._known_content_type(),
                              url=self.url)

    def append(self, data: Any, *, seq: str | None = None) -> str:
        """Append one message and return the stream's new tail offset (POST, §5.2).

        JSON mode: ``str``/bytes are JSON text, any other value is serialised with
        :func:`json.dumps`; either way one call stores one message (JSON text that is not
        exactly one JSON value raises ``ValueError`` before any request). Byte mode: str
        (UTF-8; a lone surrogate raises ``ValueError``) or bytes-like.

        Args:
            data: the message.
            seq: an optional writer sequence, sent as ``Stream-Seq`` (compared as a string
                by the server, which refuses a value not greater than the last one:
                :class:`SeqConflictError`). With ``seq`` the append is retried like any
                idempotent request; without it only when the server certainly did nothing.

        Bounded by ``total_timeout``. Raises :class:`StreamClosedError` (409, closed),
        :class:`PayloadTooLargeError` (413), :class:`StreamSoftDeletedError` (410),
        :class:`ContentTypeMismatchError`, :class:`TransportError`...
        """
        body = self._encode_message(data, "data")
        extra = {P.CONTENT_TYPE: self._known_content_type()}
        if seq is not None:
            extra[P.STREAM_SEQ] = str(seq)
        response = self._client.request(
            "POST", self.url, operation="append", headers=self.headers,
            extra_headers=extra, params=self.params, data=body, retry=self.retry,
            idempotent=seq is not None,
        )
        return next_offset(response, "append", self.url)

    def close_stream(self, *, final_message: Any = None, body: Any = _MISSING) -> str:
        """Close the stream for every reader and writer (EOF, §5.3); return the final offset.

        Args:
            final_message: an optional final message (encoded as for :meth:`append`),
                appended atomically with the close. Default: none. The same name as
                ``IdempotentProducer.close_stream(final_message)``.
            body: deprecated old spelling of ``final_message``: still works, with a
                :class:`DeprecationWarning`; giving both is a :class:`TypeError`.

        Closing an already closed stream without a final message succeeds again (and is
        retried like any idempotent request); with one it raises :class:`StreamClosedError`.
        Bounded by ``total_timeout``.
        """
        body = renamed("DurableStream.close_stream()", "final_message",
                       _MISSING if final_message is None else final_message, "body", body)
        if body is _MISSING:
            body = None
        extra = {P.STREAM_CLOSED: "true"}
        data: bytes | None = None
        if body is not None:
            data = self._encode_message(body, "final_message")
            extra[P.CONTENT_TYPE] = self._known_content_type()
        elif self.content_type:
            extra[P.CONTENT_TYPE] = self.content_type
        response = self._client.request(
            "POST", self.url, operation="close", headers=self.headers,
            extra_headers=extra, params=self.params, data=data, retry=self.retry,
            idempotent=body is None,
        )
        return response.headers.get(P.STREAM_NEXT_OFFSET, "")

    def delete(self) -> None:
        """Delete the stream and its data (DELETE, §5.4). Retried per ``retry`` within
        ``total_timeout``; raises :class:`StreamNotFoundError` if there is none and
        :class:`StreamSoftDeletedError` (410) if it was already deleted but has forks."""
        self._client.request(
            "DELETE", self.url, operation="delete", headers=self.headers,
            params=self.params, retry=self.retry,
        )

    def stream(
        self,
        *,
        offset: str = P.OFFSET_BEGINNING,
        live: LiveMode = False,
        **options: Any,
    ) -> StreamResponse:
        """Read from ``offset``; see :func:`durable_streams.stream` for ``live`` and the other
        options. The handle's session, timeout, headers, params, retry policy and content
        type are used (``session=``/``timeout=`` here raise ``TypeError``)."""
        from .reading import stream as _stream

        if "session" in options or "timeout" in options:
            raise TypeError(
                "handle.stream() uses the handle's session and timeout; pass session= and "
                "timeout= to DurableStream(...) or call durable_streams.stream(url, ...)"
            )
        options.setdefault("headers", self.headers)
        options.setdefault("params", self.params)
        options.setdefault("content_type", self.content_type)
        options.setdefault("retry", self.retry)
        return _stream(self.url, offset=offset, live=live, _client=self._client, **options)

    # -- lifecycle ----------------------------------------------------------------------
    def close(self) -> None:
        """Release the HTTP session this handle owns. The stream itself stays open."""
        self._client.close()

    def __enter__(self) -> DurableStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DurableStream({redact_url(self.url)!r}, content_type={self.content_type!r})"
