"""Protocol constants and small parsing helpers (PROTOCOL.md §5, §8, §9)."""

from __future__ import annotations

import datetime
import email.utils
import json
import re
import time
from collections.abc import Mapping
from typing import Any

from . import _json, errors
from ._redact import escape_text

# Header names, as the protocol spells them. HTTP header names are case-insensitive;
# ``requests`` gives case-insensitive mappings for responses.
CONTENT_TYPE = "Content-Type"
STREAM_NEXT_OFFSET = "Stream-Next-Offset"
STREAM_UP_TO_DATE = "Stream-Up-To-Date"
STREAM_CLOSED = "Stream-Closed"
STREAM_CURSOR = "Stream-Cursor"
STREAM_SEQ = "Stream-Seq"
STREAM_TTL = "Stream-TTL"
STREAM_EXPIRES_AT = "Stream-Expires-At"
PRODUCER_ID = "Producer-Id"
PRODUCER_EPOCH = "Producer-Epoch"
PRODUCER_SEQ = "Producer-Seq"
PRODUCER_EXPECTED_SEQ = "Producer-Expected-Seq"
PRODUCER_RECEIVED_SEQ = "Producer-Received-Seq"
SSE_DATA_ENCODING = "stream-sse-data-encoding"
RETRY_AFTER = "Retry-After"
ETAG = "ETag"

#: Headers the library owns on producer requests; user headers never override them.
PROTECTED_PRODUCER_HEADERS = frozenset(
    h.lower() for h in (CONTENT_TYPE, PRODUCER_ID, PRODUCER_EPOCH, PRODUCER_SEQ, STREAM_CLOSED)
)

OFFSET_BEGINNING = "-1"
OFFSET_NOW = "now"
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_SAFE_INTEGER = 2**53 - 1

_TTL_RE = re.compile(r"^(0|[1-9][0-9]*)$")


def media_type(content_type: str | None) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    """True when the stream is in JSON mode (§9.1)."""
    return media_type(content_type) == "application/json"


def header_true(value: str | None) -> bool:
    """The protocol's boolean headers are true only when exactly ``true`` (any case)."""
    return value is not None and value.strip().lower() == "true"


def parse_int_header(headers: Mapping[str, str], name: str) -> int | None:
    value = headers.get(name)
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()):  # "²".isdigit() is True; int("²") fails
        return None
    return int(value)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3: delta-seconds, digits
    only, or an HTTP-date), capped at one hour; ``None`` when absent or malformed (the
    retry policy's own backoff then applies)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if value.isascii() and value.isdigit():
        seconds = float(value[:9]) if len(value) > 9 else float(value)
    else:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:  # "-0000" zone: UTC by RFC 5322, not local time
            when = when.replace(tzinfo=datetime.timezone.utc)
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), 3600.0)


def validate_ttl(ttl_seconds: int | None) -> str | None:
    if ttl_seconds is None:
        return None
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int):
        raise TypeError(f"ttl_seconds must be an int number of seconds, got {ttl_seconds!r}")
    if ttl_seconds < 0:
        raise ValueError(f"ttl_seconds must be >= 0, got {ttl_seconds}")
    text = str(ttl_seconds)
    assert _TTL_RE.match(text)
    return text


def format_expires_at(expires_at: Any) -> str | None:
    """Accept an aware ``datetime`` or an RFC 3339 string."""
    if expires_at is None:
        return None
    import datetime as _dt

    if isinstance(expires_at, _dt.datetime):
        if expires_at.tzinfo is None:
            raise ValueError(
                "expires_at must be timezone-aware (e.g. datetime.now(timezone.utc)); "
                "a naive datetime is ambiguous"
            )
        return expires_at.isoformat()
    if isinstance(expires_at, str) and expires_at.strip():
        return expires_at.strip()
    raise TypeError(
        f"expires_at must be an aware datetime or an RFC 3339 string, got {expires_at!r}"
    )


def encode_json_value(value: Any) -> bytes:
    """Serialise one Python value as compact JSON; raise ``TypeError`` naming the problem."""
    try:
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        return text.encode()
    except RecursionError:
        raise ValueError(
            f"cannot serialise this {type(value).__name__} as JSON: it is nested too deeply "
            "for json.dumps; pass pre-serialised JSON text (str) instead, which is accepted "
            "at any depth"
        ) from None
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"cannot serialise {type(value).__name__} as JSON for a JSON-mode stream: {exc}; "
            "pass JSON-serialisable data or pre-serialised JSON text (str)"
        ) from exc


def load_json(data: bytes | str) -> Any:
    """Parse JSON as the server does: UTF-8 only (``json.loads`` on bytes would also accept
    UTF-16/32 and skip a byte-order mark, which the server rejects), no NaN/Infinity, and
    no nesting limit (a deeply nested value is valid JSON: no ``RecursionError``)."""
    if not isinstance(data, str):
        data = bytes(data).decode("utf-8")
    return _json.loads(data)


# -- mapping responses to exceptions ---------------------------------------------------------


def server_words(text: str, limit: int = 300) -> str:
    """The server's explanation, fit for a message: whitespace runs as one space, cut at
    ``limit`` characters, anything outside printable ASCII escaped (no control characters,
    no undecodable bytes reach a terminal or a log)."""
    return escape_text(" ".join(text.split()), limit)


def error_for_response(
    status: int,
    headers: Mapping[str, str],
    body: str,
    *,
    url: str,
    operation: str,
    note: str = "",
) -> errors.DurableStreamError:
    """Build the exception for a non-success response of ``operation`` on ``url``.

    The class comes from :data:`errors.STATUS_CLASSES`, refined by context for 409 and
    400/410 on reads; ``note`` ends the message (attempt counts, a Retry-After hint).
    """
    reason = body.strip()
    short = server_words(reason)
    detail = f": {short}" if short else ""
    kwargs: dict[str, Any] = {"status": status, "url": url, "headers": headers,
                              "body": body[:4000]}
    lowered = reason.lower()
    cls = errors.class_for(status)
    message: str
    extra: dict[str, Any] = {}
    if status == 404:
        message = f"{operation} failed: no stream at {url} (404)"
    elif status == 409:
        if header_true(headers.get(STREAM_CLOSED)):
            final = headers.get(STREAM_NEXT_OFFSET)
            cls = errors.StreamClosedError
            extra["final_offset"] = final
            message = (f"{operation} failed: the stream at {url} is closed"
                       + (f" (final offset {final})" if final else ""))
        elif operation == "create" and "deleted" in lowered and "fork" in lowered:
            cls = errors.StreamSoftDeletedError
            message = (f"create failed: the stream at {url} was deleted but still has forks "
                       f"(409){detail}; its URL cannot be used again until every fork is "
                       "deleted")
        elif operation == "create":
            cls = errors.StreamExistsError
            message = (f"create failed: a stream already exists at {url} with a different "
                       f"configuration (409){detail}")
        elif "content-type" in lowered or "content type" in lowered:
            cls = errors.ContentTypeMismatchError
            message = (f"{operation} failed: content type does not match the stream at {url} "
                       f"(409){detail}")
        elif "sequence" in lowered or "seq" in lowered:
            cls = errors.SeqConflictError
            message = (f"{operation} failed: Stream-Seq is not greater than the last one "
                       f"accepted by {url} (409){detail}")
        else:
            message = f"{operation} failed: conflict at {url} (409){detail}"
    elif status == 400:
        if operation == "read" and ("offset" in lowered or "invalid" in lowered):
            cls = errors.InvalidOffsetError
            message = f"read failed: the server rejected the offset for {url} (400){detail}"
        else:
            message = f"{operation} failed: bad request for {url} (400){detail}"
    elif status == 401:
        message = f"{operation} failed: unauthorized for {url} (401){detail}"
    elif status == 403:
        message = f"{operation} failed: forbidden for {url} (403){detail}"
    elif status == 410:
        if operation == "read" and ("offset" in lowered or "retain" in lowered
                                    or "retention" in lowered):
            cls = errors.RetentionGoneError
            message = (f"read failed: the offset is before the data {url} still retains "
                       f"(410){detail}; read from offset '-1' (the oldest retained data)")
        else:
            message = (f"{operation} failed: the stream at {url} is gone (410){detail}: by "
                       "PROTOCOL §5 it was deleted but still has forks (soft-deleted); its data "
                       "lives on only in the forks, and the URL cannot be used again until "
                       "every fork is deleted")
    elif status == 413:
        message = (f"{operation} failed: the request body is too large for the server at "
                   f"{url} (413){detail}; send smaller messages or batches")
    elif status == 429:
        extra["retry_after"] = parse_retry_after(headers.get(RETRY_AFTER))
        message = f"{operation} failed: rate limited by the server for {url} (429){detail}"
    elif status >= 500:
        extra["retry_after"] = parse_retry_after(headers.get(RETRY_AFTER))
        message = f"{operation} failed: server error {status} for {url}{detail}"
    else:
        message = f"{operation} failed: unexpected HTTP status {status} for {url}{detail}"
    return cls(message + note, **extra, **kwargs)
