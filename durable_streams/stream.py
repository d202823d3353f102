"""DurableStream: blocking create / connect / head / append / close / delete, and reads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests

from . import _fork, errors
from . import _protocol as P
from ._http import (
    DEFAULT_RETRY,
    HeadersLike,
    HttpClient,
    ParamsLike,
    RetryPolicy,
    TimeoutLike,
)
from ._redact import redact_url

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


def _as_bytes(data: Any, what: str) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(
        f"{what} must be str or bytes for a byte-mode stream, got {type(data).__name__}; "
        "encode it first (for JSON, create the stream with content_type='application/json')"
    )


class DurableStream:
    """A handle on one stream URL. Creating a handle makes no request.

    Every method is a plain blocking call. Requests that are safe to repeat (create, head,
    delete, close without a body, reads) are retried on connection errors, timeouts, 5xx
    and 429 according to ``retry``. :meth:`append` is retried only on responses that say the
    server did nothing (5xx, 429) or when the request never reached the server, unless it
    carries ``seq=`` (then the server rejects a repeat); for exactly-once writes under any
    failure use :class:`~durable_streams.IdempotentProducer`.

    ``headers`` and ``params`` take values or zero-argument callables evaluated on every
    request (token refresh). A ``session`` you pass is used as given and never closed here.
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
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            shown = redact_url(url) if isinstance(url, str) else type(url).__name__
            raise ValueError(f"url must be an http:// or https:// URL, got {shown!r}")
        self.url = url
        self.content_type = content_type
        self.headers = headers
        self.params = params
        self.retry = retry if retry is not None else DEFAULT_RETRY
        self._client = HttpClient(session, timeout=timeout)
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
    ) -> DurableStream:
        """Create the stream (PUT, §5.1), or confirm that it exists with the same config.

        ``body`` is the initial content: str/bytes as-is; in JSON mode any other value is
        serialised (a list is stored as several messages, as the server flattens one level).
        Raises :class:`StreamExistsError` if a stream with a different config is there.
        """
        if ttl_seconds is not None and expires_at is not None:
            raise ValueError("give ttl_seconds or expires_at, not both (PROTOCOL §5.1)")
        ttl = P.validate_ttl(ttl_seconds)
        expires = P.format_expires_at(expires_at)
        # Encode the body before building the handle, so a bad body raises before any
        # request and leaves no session behind.
        data: bytes | None = None
        if body is not None:
            data = (P.encode_json_value(body)
                    if P.is_json(content_type)
                    and not isinstance(body, (str, bytes, bytearray, memoryview))
                    else _as_bytes(body, "body"))
        extra: dict[str, str] = {}
        if content_type:
            extra[P.CONTENT_TYPE] = content_type
        if ttl is not None:
            extra[P.STREAM_TTL] = ttl
        if expires is not None:
            extra[P.STREAM_EXPIRES_AT] = expires
        if closed:
            extra[P.STREAM_CLOSED] = "true"
        return cls._put(url, extra, data, operation="create", content_type=content_type,
                        headers=headers, params=params, session=session, timeout=timeout,
                        retry=retry)

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
    ) -> DurableStream:
        """The PUT behind :meth:`create` and :meth:`fork`: a new handle with ``.created``."""
        handle = cls(url, content_type=content_type, headers=headers, params=params,
                     session=session, timeout=timeout, retry=retry)
        try:
            with _fork.mapping_soft_delete(operation, url):
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
    ) -> DurableStream:
        """A handle on an existing stream; raises :class:`StreamNotFoundError` if none."""
        handle = cls(url, headers=headers, params=params, session=session, timeout=timeout,
                     retry=retry)
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
        if ttl_seconds is not None and expires_at is not None:
            raise ValueError("give ttl_seconds or expires_at, not both (PROTOCOL §5.1)")
        ttl = P.validate_ttl(ttl_seconds)
        expires = P.format_expires_at(expires_at)
        if ttl is not None:
            extra[P.STREAM_TTL] = ttl
        if expires is not None:
            extra[P.STREAM_EXPIRES_AT] = expires
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
            )
        except errors.DurableStreamError as exc:
            mapped = _fork.fork_error(exc, self.url, url)
            if mapped is exc:
                raise
            raise mapped from exc

    # -- operations ---------------------------------------------------------------------
    def head(self) -> StreamInfo:
        """Stream metadata (HEAD, §5.5); also refreshes :attr:`content_type`."""
        with _fork.mapping_soft_delete("head", self.url):
            response = self._client.request(
                "HEAD", self.url, operation="head", headers=self.headers,
                params=self.params, retry=self.retry,
            )
        h = response.headers
        ttl = P.parse_int_header(h, P.STREAM_TTL)
        info = StreamInfo(
            offset=h.get(P.STREAM_NEXT_OFFSET, ""),
            content_type=h.get(P.CONTENT_TYPE),
            closed=P.header_true(h.get(P.STREAM_CLOSED)),
            ttl_seconds=ttl,
            expires_at=h.get(P.STREAM_EXPIRES_AT),
            etag=h.get(P.ETAG),
            cache_control=h.get("Cache-Control"),
        )
        if info.content_type:
            self.content_type = info.content_type
        return info

    def _known_content_type(self) -> str:
        if not self.content_type:
            self.head()
        return self.content_type or P.DEFAULT_CONTENT_TYPE

    def _encode_message(self, data: Any, what: str) -> bytes:
        """One message as a request body: JSON mode wraps it in ``[...]`` (§9.1.2)."""
        if P.is_json(self._known_content_type()):
            if isinstance(data, (str, bytes, bytearray, memoryview)):
                raw = _as_bytes(data, what)
                if not raw.strip():
                    return b""  # sent as is: the server answers 400 "Empty body" (§5.2)
                # JSON text must be exactly one value: wrapped in [...] unchecked, text
                # such as '1,2' would be stored as two messages (§9.1.2).
                try:
                    # Strict UTF-8 first: json.loads(bytes) would also accept a BOM or UTF-16.
                    P.load_json(raw.decode("utf-8"))
                except ValueError as exc:
                    raise ValueError(
                        f"{what} is not one valid JSON value for the JSON-mode stream at "
                        f"{self.url}: {exc}; pass JSON text (e.g. json.dumps(obj)) or the "
                        "object itself"
                    ) from exc
            else:
                raw = P.encode_json_value(data)
            return b"[" + raw + b"]"
        return _as_bytes(data, what)

    def append(self, data: Any, *, seq: str | None = None) -> str:
        """Append one message and return the stream's new tail offset (POST, §5.2).

        JSON mode: ``str``/bytes are JSON text, any other value is serialised with
        :func:`json.dumps`; either way one call stores one message (JSON text that is not
        exactly one JSON value raises ``ValueError`` before any request). Byte mode: str
        (UTF-8) or bytes-like. ``seq`` is sent as ``Stream-Seq``; the server then refuses a
        value that is not greater than the last one (:class:`SeqConflictError`).
        """
        body = self._encode_message(data, "data")
        extra = {P.CONTENT_TYPE: self._known_content_type()}
        if seq is not None:
            extra[P.STREAM_SEQ] = str(seq)
        with _fork.mapping_soft_delete("append", self.url):
            response = self._client.request(
                "POST", self.url, operation="append", headers=self.headers,
                extra_headers=extra, params=self.params, data=body, retry=self.retry,
                idempotent=seq is not None,
            )
        return self._next_offset(response, "append")

    def close_stream(self, *, body: Any = None) -> str:
        """Close the stream for every reader and writer (EOF, §5.3); return the final offset.

        With ``body`` the final message is appended atomically with the close. Closing an
        already closed stream without a body succeeds again; with a body it raises
        :class:`StreamClosedError`.
        """
        extra = {P.STREAM_CLOSED: "true"}
        data: bytes | None = None
        if body is not None:
            data = self._encode_message(body, "body")
            extra[P.CONTENT_TYPE] = self._known_content_type()
        elif self.content_type:
            extra[P.CONTENT_TYPE] = self.content_type
        with _fork.mapping_soft_delete("close", self.url):
            response = self._client.request(
                "POST", self.url, operation="close", headers=self.headers,
                extra_headers=extra, params=self.params, data=data, retry=self.retry,
                idempotent=body is None,
            )
        return response.headers.get(P.STREAM_NEXT_OFFSET, "")

    def delete(self) -> None:
        """Delete the stream and its data (DELETE, §5.4)."""
        with _fork.mapping_soft_delete("delete", self.url):
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
        """Read from ``offset``; see :func:`durable_streams.stream`."""
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

    def _next_offset(self, response: requests.Response, operation: str) -> str:
        # Surrounding whitespace is not part of a field value (RFC 9110 §5.5).
        offset = (response.headers.get(P.STREAM_NEXT_OFFSET) or "").strip()
        if not offset:
            raise errors.DurableStreamError(
                f"{operation} to {self.url}: the server answered {response.status_code} "
                "without a Stream-Next-Offset header; the write may or may not have landed",
                status=response.status_code, code="PROTOCOL_ERROR", url=self.url,
                headers=response.headers,
            )
        return offset

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
