"""Fork creation (PROTOCOL §4.2): headers, checks, and what a failed fork PUT means.

Pure code, no HTTP: :meth:`DurableStream.fork` sends the PUT through the shared create path.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from . import errors
from ._redact import redact_url

STREAM_FORKED_FROM = "Stream-Forked-From"
STREAM_FORK_OFFSET = "Stream-Fork-Offset"
STREAM_FORK_SUB_OFFSET = "Stream-Fork-Sub-Offset"

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def fork_headers(source_url: str, target_url: str, *, offset: str | None,
                 sub_offset: int | None) -> dict[str, str]:
    """The fork headers of the PUT; ``ValueError``/``TypeError`` before any request."""
    if not isinstance(target_url, str) or not target_url.startswith(("http://", "https://")):
        raise ValueError(f"fork url must be an http:// or https:// URL, got {target_url!r}")
    if _origin(source_url) != _origin(target_url):
        raise ValueError(
            f"a fork must be on the same server as its source (PROTOCOL §4.2): "
            f"{redact_url(target_url)} is not on the origin of {redact_url(source_url)}; "
            "to copy across servers, read the source and append to a new stream"
        )
    path = urlsplit(source_url).path
    if not path or path == "/":
        raise ValueError(f"the source URL {redact_url(source_url)} has no stream path")
    if urlsplit(target_url).path == path:
        raise ValueError("a stream cannot be forked onto its own URL; pick another url")
    headers = {STREAM_FORKED_FROM: path}
    if offset is not None:
        if not isinstance(offset, str):
            raise TypeError(f"offset must be a str offset or None, got {type(offset).__name__}")
        if offset.strip() in ("-1", "now", ""):
            raise ValueError(
                f"offset={offset!r} is not a fork point: pass None to fork at the tail, or "
                "an offset the server returned (append()'s result, StreamResponse.offset, "
                "IdempotentProducer.last_offset)"
            )
        headers[STREAM_FORK_OFFSET] = offset.strip()
    if sub_offset is not None:
        if isinstance(sub_offset, bool) or not isinstance(sub_offset, int):
            raise TypeError(f"sub_offset must be an int, got {sub_offset!r}")
        if sub_offset < 0:
            raise ValueError(f"sub_offset must be >= 0, got {sub_offset}")
        if sub_offset:
            headers[STREAM_FORK_SUB_OFFSET] = str(sub_offset)
    return headers


def _kwargs(exc: errors.DurableStreamError) -> dict[str, object]:
    return {"status": exc.status, "url": exc.url, "headers": exc.headers, "body": exc.body}


def _is_soft_deleted_conflict(exc: errors.DurableStreamError) -> bool:
    body = (exc.body or "").lower()
    return exc.status == 409 and "deleted" in body and "fork" in body


def fork_error(exc: errors.DurableStreamError, source_url: str,
               target_url: str) -> errors.DurableStreamError:
    """The clear exception for a failed fork PUT (PROTOCOL §4.2 "Fork creation errors")."""
    src, dst = redact_url(source_url), redact_url(target_url)
    reason = " ".join((exc.body or "").split())[:300]
    detail = f": {reason}" if reason else ""
    kw = _kwargs(exc)
    if exc.status == 404:
        return errors.StreamNotFoundError(
            f"fork failed: the source stream {src} does not exist (404){detail}",
            **kw)  # type: ignore[arg-type]
    if _is_soft_deleted_conflict(exc) and "source" not in reason.lower():
        return errors.StreamSoftDeletedError(
            f"fork failed: the target {dst} was deleted but still has forks (409); its URL "
            f"cannot be used again until every fork of it is deleted{detail}",
            **kw)  # type: ignore[arg-type]
    if exc.status == 410 or _is_soft_deleted_conflict(exc):
        return errors.StreamSoftDeletedError(
            f"fork failed: the source stream {src} was deleted but still has forks "
            f"({exc.status}); fork one of its forks instead{detail}",
            **kw)  # type: ignore[arg-type]
    if exc.status == 400:
        lowered = reason.lower()
        if "sub-offset" in lowered or "sub_offset" in lowered:
            hint = ("the sub-offset is malformed or past the next data boundary (JSON: "
                    "messages, otherwise bytes after the offset)")
        elif "beyond" in lowered:
            hint = "the fork offset is beyond the source's tail"
        elif "offset" in lowered:
            hint = ("the fork offset is malformed; use an offset the server returned "
                    "(append()'s result, StreamResponse.offset, IdempotentProducer.last_offset)")
        else:
            hint = "the server refused the fork request (TTL/expiry, headers)"
        return errors.ForkError(f"fork of {src} at {dst} failed: {hint} (400){detail}",
                                **kw)  # type: ignore[arg-type]
    if exc.status == 409:
        if "content type" in reason.lower() or "content-type" in reason.lower():
            return errors.ContentTypeMismatchError(
                f"fork failed: the content type differs from the source stream {src} "
                f"(409){detail}", **kw)  # type: ignore[arg-type]
        return errors.StreamExistsError(
            f"fork failed: a stream already exists at {dst} with another configuration (a "
            f"different source, offset, content type or expiry) (409){detail}",
            **kw)  # type: ignore[arg-type]
    return exc
