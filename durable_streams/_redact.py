"""Keep secrets out of text the library produces (design.md, decision 11).

URL user-info and query-parameter values are replaced, header values are never shown; the
scheme, host, port, path and parameter *names* stay, so messages remain useful.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlsplit, urlunsplit

MASK = "***"


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
