"""Keep secrets out of text the library produces (README, design decision 11).

URL user-info and query-parameter values are replaced, header values are never shown; the
scheme, host, port, path and parameter *names* stay, so messages remain useful.

Three tools:

- :func:`redact_url` for a URL the library knows it is about to print;
- :func:`redact_headers` for a header mapping (names kept, values masked);
- :func:`redact_text` for free text that may *contain* URLs (exception messages, third-party
  exception text, log records): every ``scheme://user:pass@`` and every ``?name=value`` /
  ``&name=value`` in it is masked. Every :class:`~durable_streams.DurableStreamError`
  message goes through it, and so does every record of the ``durable_streams`` logger.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"

# scheme://anything-without-slash-or-space@  ->  scheme://***@
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^/\s@?#'\"<>]*@")
# ?name=value or &name=value (also &amp;name=value): keep the name, mask the value.
_QUERY_VALUE_RE = re.compile(r"([?&][^\s=&#?'\"<>;,()\[\]]+=)[^\s&#'\"<>)\],;]*")
# "Authorization: Bearer x" / "'Authorization': 'Bearer x'" spelled inside free text.
_AUTH_HEADER_RE = re.compile(
    r"(?i)((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)[^'\"\r\n,}]+"
)


def redact_url(url: str) -> str:
    """``url`` without its user-info and with every query value masked.

    >>> redact_url("http://alice:s3cret@host:8080/v1/x?token=abc&live=sse")
    'http://***@host:8080/v1/x?token=***&live=***'
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        names = [name for name, _ in parse_qsl(query, keep_blank_values=True)]
        query = "&".join(f"{quote(name, safe='')}={MASK}" for name in names) or MASK
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def redact_headers(headers: Mapping[str, object] | None) -> dict[str, str]:
    """Header names with every value masked, for diagnostics.

    >>> redact_headers({"Authorization": "Bearer t0ken", "Content-Type": "text/plain"})
    {'Authorization': '***', 'Content-Type': '***'}
    """
    return {str(name): MASK for name in (headers or {})}


def redact_text(text: str, *, url: str | None = None) -> str:
    """``text`` with URL user-info, query values and spelled-out credentials masked.

    When ``url`` is given, its literal occurrences are first replaced by
    :func:`redact_url` of it (also catching forms the patterns would miss).

    >>> redact_text("GET http://a:pw@h/x?token=abc&n=1 failed")
    'GET http://***@h/x?token=***&n=*** failed'
    """
    if url and url in text:
        text = text.replace(url, redact_url(url))
    if "@" in text:
        text = _USERINFO_RE.sub(r"\1" + MASK + "@", text)
    if "=" in text:
        text = _QUERY_VALUE_RE.sub(r"\1" + MASK, text)
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTH_HEADER_RE.sub(r"\1" + MASK, text)
    return text


_NOT_PLAIN = re.compile(r"[^\x20-\x7e]")


def escape_text(text: str, limit: int = 200) -> str:
    """``text`` fit for a message whatever a server put in it: cut at ``limit`` characters
    (with an ellipsis), then every character outside printable ASCII escaped
    (``\\x00``, ``\\xff``, ``\\u2028``), so nothing raw reaches a terminal or a log."""
    cut = len(text) > limit
    text = text[:limit]
    text = _NOT_PLAIN.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)
    return text + "..." if cut else text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts a record's message and its traceback text.

    Attached to the ``durable_streams`` logger. For third-party loggers (urllib3) use
    ``only_inside`` so that only records emitted while the library is making a request
    are touched; other code's records pass through unchanged.
    """

    def __init__(self, only_inside: threading.local | None = None) -> None:
        super().__init__()
        self._only_inside = only_inside

    def filter(self, record: logging.LogRecord) -> bool:
        if self._only_inside is not None and not getattr(self._only_inside, "active", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record: leave it to logging
            return True
        record.msg = redact_text(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact_text(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


#: Set (``.active = True``) while the library is inside a request on this thread.
INSIDE_REQUEST = threading.local()

_installed = False
_install_lock = threading.Lock()


def install_log_filters() -> None:
    """Redact every record of the ``durable_streams`` logger, and urllib3's records emitted
    while the library is making a request (they name the request path with its query)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        _installed = True
    logging.getLogger("durable_streams").addFilter(RedactingFilter())
    inside = RedactingFilter(only_inside=INSIDE_REQUEST)
    for name in ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry",
                 "urllib3.response", "urllib3.connection"):
        logging.getLogger(name).addFilter(inside)
