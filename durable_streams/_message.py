"""What a :class:`~durable_streams.DurableStream` sends and reads back for one message:
the request body of a one-shot append or create (PROTOCOL §5.1, §5.2, §9.1.2), the expiry
headers of a create or fork, and the new tail offset a write answers with."""

from __future__ import annotations

from typing import Any

from . import _protocol as P
from . import errors
from ._redact import redact_url
from ._response import Response


def as_bytes(data: Any, what: str) -> bytes:
    """``data`` as bytes for a byte-mode stream: bytes as is, str as UTF-8, other
    bytes-like objects copied; anything else is a ``TypeError`` naming ``what``."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        try:
            return data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"{what} is not valid Unicode text: {exc.reason} at position {exc.start} "
                f"({data[exc.start:exc.end]!r}, a lone surrogate cannot be sent as UTF-8); "
                "fix the string, or pass bytes"
            ) from None
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(
        f"{what} must be str or bytes for a byte-mode stream, got {type(data).__name__}; "
        "encode it first (for JSON, create the stream with content_type='application/json')"
    )


def create_body(body: Any, content_type: str | None) -> bytes | None:
    """The initial content of a create: str/bytes as is; in JSON mode any other value is
    serialised (the server flattens one level of a list into several messages)."""
    if body is None:
        return None
    if P.is_json(content_type) and not isinstance(body, (str, bytes, bytearray, memoryview)):
        return P.encode_json_value(body)
    return as_bytes(body, "body")


def encode_message(data: Any, what: str, *, content_type: str, url: str) -> bytes:
    """One message as a request body: JSON mode wraps it in ``[...]`` (§9.1.2), after
    checking that JSON text is exactly one value. ``url`` is named in errors redacted."""
    if not P.is_json(content_type):
        return as_bytes(data, what)
    if isinstance(data, (str, bytes, bytearray, memoryview)):
        raw = as_bytes(data, what)
        if not raw.strip():
            return b""  # sent as is: the server answers 400 "Empty body" (§5.2)
        # JSON text must be exactly one value: wrapped in [...] unchecked, text such as
        # '1,2' would be stored as two messages (§9.1.2).
        try:
            # Strict UTF-8 first: json.loads(bytes) would also accept a BOM or UTF-16.
            P.load_json(raw.decode("utf-8"))
        except ValueError as exc:
            raise ValueError(
                f"{what} is not one valid JSON value for the JSON-mode stream at "
                f"{redact_url(url)}: {exc}; pass JSON text (e.g. json.dumps(obj)) or the "
                "object itself"
            ) from exc
    else:
        raw = P.encode_json_value(data)
    return b"[" + raw + b"]"


def expiry_headers(ttl_seconds: int | None, expires_at: Any) -> dict[str, str]:
    """``Stream-TTL`` / ``Stream-Expires-At`` of a create or fork (PROTOCOL §5.1); the two
    are exclusive. Checked before any request."""
    if ttl_seconds is not None and expires_at is not None:
        raise ValueError("give ttl_seconds or expires_at, not both (PROTOCOL §5.1)")
    ttl = P.validate_ttl(ttl_seconds)
    expires = P.format_expires_at(expires_at)
    headers: dict[str, str] = {}
    if ttl is not None:
        headers[P.STREAM_TTL] = ttl
    if expires is not None:
        headers[P.STREAM_EXPIRES_AT] = expires
    return headers


def next_offset(response: Response, operation: str, url: str) -> str:
    """The ``Stream-Next-Offset`` a write answered with; its absence is a protocol error
    (the write may or may not have landed)."""
    # Surrounding whitespace is not part of a field value (RFC 9110 §5.5).
    offset = (response.headers.get(P.STREAM_NEXT_OFFSET) or "").strip()
    if not offset:
        raise errors.DurableStreamError(
            f"{operation} to {redact_url(url)}: the server answered {response.status_code} "
            "without a Stream-Next-Offset header; the write may or may not have landed",
            status=response.status_code, code="PROTOCOL_ERROR", url=url,
            headers=response.headers,
        )
    return offset
