"""Say what went wrong with a request, in words, without secrets.

urllib3 and requests describe failures as "HTTPConnectionPool(host=..., port=...): Max
retries exceeded with url: /path?token=... (Caused by NewConnectionError(...))": the query
(and so any token in it) is in the text, and "max retries" is misleading when no retry was
made. :func:`describe_failure` finds the underlying cause and says it plainly.
"""

from __future__ import annotations

import errno
import http.client
import socket
from urllib.parse import urlsplit

import requests
from urllib3 import exceptions as u3

from ._redact import escape_text, redact_text

try:  # urllib3 >= 2
    from urllib3.exceptions import NameResolutionError
except ImportError:  # pragma: no cover
    NameResolutionError = u3.NewConnectionError  # type: ignore[misc,assignment]


def _root(exc: BaseException) -> BaseException:
    """Unwrap requests' and urllib3's wrappers down to the most specific urllib3 error."""
    cur = exc
    for _ in range(8):
        if isinstance(cur, u3.MaxRetryError) and cur.reason is not None:
            cur = cur.reason
            continue
        if isinstance(cur, requests.exceptions.RequestException) and cur.args \
                and isinstance(cur.args[0], BaseException):
            cur = cur.args[0]
            continue
        break
    return cur


def _os_error(exc: BaseException) -> OSError | None:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and not isinstance(cur, u3.HTTPError):
            return cur
        for arg in getattr(cur, "args", ()):
            if isinstance(arg, OSError) and not isinstance(arg, u3.HTTPError):
                return arg
        cur = cur.__cause__ or cur.__context__
    return None


def is_timeout(exc: BaseException) -> bool:
    root = _root(exc)
    if isinstance(root, u3.NewConnectionError):  # a subclass of ConnectTimeoutError
        return False
    return isinstance(exc, requests.exceptions.Timeout) or isinstance(
        root, (u3.TimeoutError, socket.timeout, TimeoutError))


def _where(url: str) -> str:
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "the server"
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{port}"


def _plain(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    if isinstance(exc, OSError) and exc.strerror:
        return escape_text(exc.strerror)
    text = str(exc)
    if "Max retries exceeded" in text:  # urllib3's wording hides what happened
        text = text.split("(Caused by", 1)[-1].rstrip(")")
    return escape_text(redact_text(f"{type(exc).__name__}: {text}" if text
                                   else type(exc).__name__))


def _http_error(exc: BaseException) -> http.client.HTTPException | None:
    """The ``http.client`` exception behind ``exc``: the server's answer was not HTTP."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        # RemoteDisconnected is a BadStatusLine too, but means "closed", not "not HTTP".
        if isinstance(cur, http.client.HTTPException) and not isinstance(
                cur, http.client.RemoteDisconnected):
            return cur
        for arg in getattr(cur, "args", ()):
            if isinstance(arg, http.client.HTTPException) and not isinstance(
                    arg, http.client.RemoteDisconnected):
                return arg
        cur = cur.__cause__ or cur.__context__
    return None


def describe_failure(exc: BaseException, url: str) -> str:
    """"connection refused by 127.0.0.1:1", "no response from h:80 within 60 s"..."""
    root = _root(exc)
    where = _where(url)
    if isinstance(root, NameResolutionError):
        host = where.rsplit(":", 1)[0]
        return f"cannot resolve the host name {host} (DNS lookup failed)"
    if isinstance(root, (u3.NewConnectionError, ConnectionRefusedError)):
        os_err = _os_error(root)
        if isinstance(os_err, ConnectionRefusedError) or (
                os_err is not None and os_err.errno == errno.ECONNREFUSED):
            return f"connection refused by {where} (is the server running?)"
        return f"cannot connect to {where}: {_plain(os_err) or _plain(root)}"
    if isinstance(root, u3.ConnectTimeoutError) or isinstance(
            exc, requests.exceptions.ConnectTimeout):
        return f"connecting to {where} timed out"
    if isinstance(root, u3.ReadTimeoutError) or isinstance(exc, requests.exceptions.ReadTimeout):
        return f"no response from {where} within the read timeout"
    if isinstance(root, u3.ProxyError):
        return f"the proxy failed the request to {where}: {_plain(root.original_error)}"
    if isinstance(root, u3.SSLError) or isinstance(exc, requests.exceptions.SSLError):
        return f"TLS with {where} failed: {_plain(_os_error(root) or root)}"
    not_http = _http_error(root)
    if isinstance(not_http, http.client.LineTooLong):
        return (f"the server at {where} sent a status or header line longer than HTTP allows; "
                "is this URL a Durable Streams server?")
    if isinstance(not_http, (http.client.BadStatusLine, http.client.UnknownProtocol)):
        sample = escape_text(str(not_http.args[0]) if not_http.args else "", 40)
        return (f"the server at {where} answered with something that is not HTTP "
                f'(it began "{sample}"); is this URL a Durable Streams server?')
    if isinstance(root, u3.ProtocolError):
        inner = _os_error(root)
        if inner is None:
            inner_args = [a for a in root.args if isinstance(a, BaseException)]
            detail = _plain(inner_args[0]) if inner_args else _plain(root)
        else:
            detail = _plain(inner)
        return f"the connection to {where} broke: {detail}"
    if isinstance(root, (ConnectionError, OSError)):
        return f"the connection to {where} failed: {_plain(root)}"
    return _plain(root)
