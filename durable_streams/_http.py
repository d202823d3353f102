"""The only module that talks HTTP: the two transports (urllib3 by default, a user's
``requests.Session``), timeouts, dynamic headers, the retry policy, transport errors."""

from __future__ import annotations

import logging

# requests imports netrc lazily inside each request; importing it here, before any sender
# thread exists, keeps a fork during a request from leaving that import's lock held in the
# child (where every later request would then deadlock).
import netrc  # noqa: F401
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from time import monotonic as _monotonic
from typing import Any, Union
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.auth
import requests.utils
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from . import _protocol as P
from . import errors
from ._redact import INSIDE_REQUEST, install_log_filters, redact_text, redact_url
from ._transport import SENT_HOOK, DefaultSession, DirectTransport, default_transport
from ._transport_errors import describe_failure, is_timeout

log = logging.getLogger("durable_streams")
install_log_filters()

#: Use the shared urllib3 transport when no session is given (False: always requests).
_DIRECT = True

# What requests-mocking libraries replace (``responses`` patches HTTPAdapter.send,
# ``requests_mock`` Session.get_adapter): while one is active, the default path goes through
# requests too, so tests that mock requests keep seeing the library's calls.
_ADAPTER_SEND = requests.adapters.HTTPAdapter.send
_GET_ADAPTER = requests.Session.get_adapter
_SESSION_SEND = requests.Session.send


def _requests_mocked() -> bool:
    return (requests.adapters.HTTPAdapter.send is not _ADAPTER_SEND
            or requests.Session.get_adapter is not _GET_ADAPTER
            or requests.Session.send is not _SESSION_SEND)

HeaderValue = Union[str, Callable[[], "str | None"], None]  # noqa: UP007
#: Headers or query parameters: a mapping whose values are strings or zero-argument
#: callables (evaluated on every request, e.g. for token refresh), or a zero-argument
#: callable returning such a mapping.
HeadersLike = Union[  # noqa: UP007 - a runtime alias; keep it valid on Python 3.10
    Mapping[str, HeaderValue], Callable[[], Mapping[str, HeaderValue]], None
]
ParamsLike = HeadersLike

#: ``(connect, read)`` timeouts in seconds used when none is given.
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 60.0)
TimeoutLike = Union[float, tuple[float, float], None]  # noqa: UP007


def resolve(values: HeadersLike) -> dict[str, str]:
    """Evaluate headers/params now: call callables, drop ``None`` values."""
    if values is None:
        return {}
    mapping = values() if callable(values) else values
    out: dict[str, str] = {}
    for key, value in mapping.items():
        if callable(value):
            value = value()
        if value is None:
            continue
        out[str(key)] = str(value)
    return out


def merge_headers(*layers: Mapping[str, str]) -> dict[str, str]:
    """Merge header dicts case-insensitively; later layers win."""
    merged: dict[str, tuple[str, str]] = {}
    for layer in layers:
        for key, value in layer.items():
            merged[key.lower()] = (key, value)
    return dict(merged.values())


def _check_number(name: str, py_name: str, value: float, *, minimum: float, strict: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{py_name} ({name}) must be a number, got {value!r}")
    if value != value or (value <= minimum if strict else value < minimum):
        op = ">" if strict else ">="
        raise ValueError(f"{py_name} ({name}) must be {op} {minimum}, got {value}")


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to retry a request that failed transiently.

    Retried: connection errors and timeouts, HTTP 5xx and 429 (``Retry-After`` is honoured
    as a lower bound on the wait). Waits grow from ``initial_delay_ms`` by ``multiplier``
    up to ``max_delay_ms``, with jitter. ``max_retries`` bounds the number of retries
    (``0`` disables them).
    """

    max_retries: int = 5
    initial_delay_ms: float = 100.0
    max_delay_ms: float = 10_000.0
    multiplier: float = 2.0
    jitter: bool = True
    #: Never wait longer than this for one ``Retry-After`` (seconds).
    max_retry_after: float = 60.0
    retry_statuses: frozenset[int] = field(
        default_factory=lambda: frozenset({429, 500, 502, 503, 504})
    )

    def __post_init__(self) -> None:
        if isinstance(self.max_retries, bool) or not isinstance(self.max_retries, int):
            raise TypeError(f"max_retries (maxRetries) must be an int, got {self.max_retries!r}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries (maxRetries) must be >= 0, got {self.max_retries}")
        _check_number("initialDelayMs", "initial_delay_ms", self.initial_delay_ms,
                      minimum=0, strict=True)
        _check_number("maxDelayMs", "max_delay_ms", self.max_delay_ms, minimum=0, strict=True)
        if self.max_delay_ms < self.initial_delay_ms:
            raise ValueError(
                f"max_delay_ms (maxDelayMs) must be >= initial_delay_ms (initialDelayMs), "
                f"got {self.max_delay_ms} < {self.initial_delay_ms}"
            )
        _check_number("multiplier", "multiplier", self.multiplier, minimum=1.0, strict=False)

    def is_retryable_status(self, status: int) -> bool:
        return status in self.retry_statuses or status >= 500

    def delay(self, retry_number: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``retry_number`` (0 for the first retry)."""
        try:
            base = min(self.initial_delay_ms * (self.multiplier**retry_number),
                       self.max_delay_ms)
        except OverflowError:  # thousands of retries: 2.0 ** 1100 overflows; the cap applies
            base = self.max_delay_ms
        wait = base / 2 + random.random() * base / 2 if self.jitter else base
        wait /= 1000.0
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


#: The default for requests that are safe to repeat.
DEFAULT_RETRY = RetryPolicy()
#: No retries at all.
NO_RETRY = RetryPolicy(max_retries=0)


def _reached_server(exc: BaseException) -> bool:
    """False only when the request certainly never reached the server."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return False
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, (NewConnectionError, ConnectTimeoutError)):
            return False
        for arg in getattr(cur, "args", ()):
            if isinstance(arg, (NewConnectionError, ConnectTimeoutError)):
                return False
            reason = getattr(arg, "reason", None)
            if isinstance(reason, (NewConnectionError, ConnectTimeoutError)):
                return False
        reason = getattr(cur, "reason", None)
        if isinstance(reason, (NewConnectionError, ConnectTimeoutError)):
            return False
        cur = cur.__cause__ or cur.__context__
    return True


def transport_error(exc: BaseException, *, url: str, operation: str,
                    params: Iterable[tuple[str, str]] | None = None) -> errors.TransportError:
    """A :class:`TransportError` saying what happened, with no secret in its text.

    Raise it ``from None``: the underlying exception's text names the request path with
    its query (urllib3's "Max retries exceeded with url: /x?token=..."); what matters of it
    is in the message. ``url`` stays available, unredacted, as ``.url``.
    """
    shown = url  # with the parameter names (values are masked below)
    if params:
        shown += ("&" if "?" in url else "?") + "&".join(f"{name}=" for name, _ in params)
    what = describe_failure(exc, url)
    err = errors.TransportError(
        f"{operation} of {redact_url(shown)} failed: {what}", url=url, timeout=is_timeout(exc)
    )
    err.reached_server = _reached_server(exc)  # type: ignore[attr-defined]
    return err


def new_session(pool_size: int = 10) -> requests.Session:
    """A ``requests.Session`` with a connection pool sized for ``pool_size`` concurrent calls."""
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(
        pool_connections=4, pool_maxsize=max(pool_size, 1), max_retries=0
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # Compression costs more than it saves for stream bodies on fast links; the protocol
    # payloads are usually already compact. Ask for identity encoding by default.
    session.headers["Accept-Encoding"] = "identity"
    return session


class _NoAuth(requests.auth.AuthBase):
    """Stands for "no credentials" so that requests does not look for ~/.netrc again."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


class HttpClient:
    """The transport plus the retry loop; shared by handles, producers and readers.

    Without a session (or with the :class:`DefaultSession` another client's :attr:`session`
    returned) requests go through the process-wide urllib3 transport (``_transport``); a
    user's ``requests.Session`` is used exactly as given. Responses are
    ``requests.Response`` objects either way.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        pool_size: int = 10,
        timeout: TimeoutLike = None,
    ) -> None:
        self.owns_session = session is None
        self._direct: DirectTransport | None = None
        if _DIRECT and (session is None or type(session) is DefaultSession):
            # No user session: the shared urllib3 transport (a DefaultSession is what
            # another client's .session returned on this path; keep the fast path).
            self._direct = default_transport()
            self._direct.ensure_pool_size(pool_size)
        elif session is None:
            session = new_session(pool_size)
        self._session = session
        self.timeout = normalize_timeout(timeout)
        self._closed = False
        self._lock = threading.Lock()
        self._env_cache: dict[tuple[str, str, bool], dict[str, Any]] = {}
        self._netrc_cache: dict[tuple[str, str], requests.auth.AuthBase] = {}

    @property
    def can_interrupt(self) -> bool:
        """True when :meth:`send` honours ``on_sent`` (the default urllib3 path; a SOCKS
        proxy route also goes through requests and is not interruptible this way)."""
        return self._direct is not None

    def interruptible(self, url: str) -> bool:
        """True when :meth:`send` to ``url`` will call ``on_sent`` right now: the default
        path, ``requests`` not patched by a mocking library, no SOCKS proxy for ``url``."""
        direct = self._direct
        if direct is None or _requests_mocked():
            return False
        try:
            return not direct.route_for(url).fallback
        except ValueError:  # send() reports the bad URL
            return False

    @property
    def session(self) -> requests.Session:
        """The user's session, or (default path) a working ``requests.Session`` that, given
        to another ``HttpClient``, keeps it on the shared urllib3 transport."""
        session = self._session
        if session is None:
            with self._lock:
                if self._session is None:
                    self._session = DefaultSession()
                session = self._session
        return session

    def _netrc_auth(self, url: str) -> Any:
        """``~/.netrc`` credentials for the origin, looked up once (requests would stat the
        file on every request). A no-op auth when there are none or trust_env is off."""
        if not self.session.trust_env:
            return None
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        cached = self._netrc_cache.get(key)
        if cached is None:
            found = requests.utils.get_netrc_auth(url)
            cached = requests.auth.HTTPBasicAuth(*found) if found else _NoAuth()
            self._netrc_cache[key] = cached
        return cached

    def _environment_settings(self, url: str, stream: bool) -> dict[str, Any]:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc, stream)
        cached = self._env_cache.get(key)
        if cached is None:
            cached = dict(self.session.merge_environment_settings(url, {}, stream, None, None))
            self._env_cache[key] = cached
        return cached

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.owns_session and self._session is not None:
            self._session.close()

    def send(
        self,
        method: str,
        url: str,
        *,
        operation: str,
        headers: Mapping[str, str] | None = None,
        params: Iterable[tuple[str, str]] | None = None,
        data: bytes | Iterable[bytes] | None = None,
        timeout: TimeoutLike = None,
        stream: bool = False,
        on_sent: Callable[[socket.socket], None] | None = None,
    ) -> requests.Response:
        """One HTTP exchange; transport failures become :class:`TransportError`.

        ``on_sent`` (default path only; see :attr:`can_interrupt`) is called in this thread
        with the connection's socket once the request is written, before the response is
        awaited: shutting that socket down from another thread ends the wait at once (the
        call then raises :class:`TransportError`), with no helper thread per request.
        """
        req_timeout = normalize_timeout(timeout) if timeout is not None else self.timeout
        direct = self._direct
        if direct is not None and not _requests_mocked():
            bad_url: ValueError | None = None
            try:
                route = direct.route_for(url)
            except ValueError as exc:  # e.g. a port out of range
                bad_url = _malformed(exc, url=url, operation=operation)
            if bad_url is not None:
                raise bad_url
            if not route.fallback:
                query = list(params) if params else None
                # The failure is raised outside the except clause so that it carries no
                # implicit __context__ (whose text names the path with its query).
                failure: Exception
                INSIDE_REQUEST.active = True
                SENT_HOOK.fn = on_sent
                try:
                    return direct.send(method, url, headers=headers, params=query, data=data,
                                       timeout=req_timeout, stream=stream, route=route)
                except ValueError as exc:  # http.client refuses a header or the URL
                    failure = _malformed(exc, url=url, operation=operation)
                except Exception as exc:  # urllib3 and socket errors
                    failure = transport_error(exc, url=url, operation=operation, params=query)
                finally:
                    INSIDE_REQUEST.active = False
                    SENT_HOOK.fn = None
                raise failure
        session = self.session
        INSIDE_REQUEST.active = True
        try:
            if type(session).request is not requests.Session.request:
                # A session subclass that customises request(): go through it.
                response = session.request(
                    method, url, headers=dict(headers) if headers else None,
                    params=list(params) if params else None, data=data, timeout=req_timeout,
                    stream=stream, allow_redirects=method in ("GET", "HEAD"),
                )
            else:
                # What Session.request() does, minus re-reading the environment for proxy
                # and TLS settings on every call (about 0.1 ms each): they are looked up
                # once per origin, which matters on the producer's and reader's hot paths.
                prepared = session.prepare_request(requests.Request(
                    method, url, headers=dict(headers) if headers else None,
                    params=list(params) if params else None, data=data,
                    auth=self._netrc_auth(url) if session.auth is None else None,
                ))
                response = session.send(
                    prepared, timeout=req_timeout, allow_redirects=method in ("GET", "HEAD"),
                    **self._environment_settings(prepared.url or url, stream),
                )
            if not stream:
                _ = response.content  # read now so a broken body is a transport error
        except requests.exceptions.InvalidHeader as exc:
            failure = _malformed(exc, url=url, operation=operation)
        except requests.exceptions.RequestException as exc:
            failure = transport_error(exc, url=url, operation=operation,
                                      params=list(params) if params else None)
        else:
            return response
        finally:
            INSIDE_REQUEST.active = False
        raise failure

    def request(
        self,
        method: str,
        url: str,
        *,
        operation: str,
        headers: HeadersLike = None,
        extra_headers: Mapping[str, str] | None = None,
        params: ParamsLike = None,
        extra_params: Mapping[str, str] | None = None,
        data: bytes | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        idempotent: bool = True,
        timeout: TimeoutLike = None,
        ok: Callable[[requests.Response], bool] | None = None,
        stop: threading.Event | None = None,
    ) -> requests.Response:
        """Send with retries; return a successful response or raise the mapped error.

        ``headers``/``params`` are resolved again for every attempt. ``extra_*`` are the
        protocol's own values and win over user ones. When ``idempotent`` is false, a
        transport failure after the request may have reached the server is not retried.
        """
        attempt = 0
        started = _monotonic()
        while True:
            all_headers = merge_headers(resolve(headers), extra_headers or {})
            query = build_query(resolve(params), extra_params or {})
            try:
                response = self.send(
                    method, url, operation=operation, headers=all_headers, params=query,
                    data=data, timeout=timeout,
                )
            except errors.TransportError as exc:
                retryable = idempotent or not getattr(exc, "reached_server", True)
                if not retryable or attempt >= retry.max_retries:
                    if attempt:
                        _note_attempts(exc, attempt + 1, _monotonic() - started)
                    raise
                wait = retry.delay(attempt)
                log.debug("%s %s: %s; retry %d in %.3fs", method, redact_url(url), exc,
                          attempt + 1, wait)
            else:
                status = response.status_code
                if ok(response) if ok is not None else status < 300:
                    return response
                if not retry.is_retryable_status(status) or attempt >= retry.max_retries:
                    failure = error_from(response, url=url, operation=operation)
                    if attempt:
                        _note_attempts(failure, attempt + 1, _monotonic() - started)
                    raise failure
                retry_after = P.parse_retry_after(response.headers.get(P.RETRY_AFTER))
                wait = retry.delay(attempt, retry_after)
                log.debug("%s %s: HTTP %d; retry %d in %.3fs", method, redact_url(url), status,
                          attempt + 1, wait)
            attempt += 1
            if stop is not None:
                if stop.wait(wait):
                    raise errors.TransportError(f"{operation} cancelled for {redact_url(url)}",
                                                url=url)
            else:
                time.sleep(wait)


def _note_attempts(exc: errors.DurableStreamError, attempts: int, seconds: float) -> None:
    """Say how hard we tried: "...; 6 attempts over 3.1 s"."""
    exc.message = f"{exc.message}; {attempts} attempts over {seconds:.1f} s"
    exc.args = (exc.message,)


def _malformed(exc: Exception, *, url: str, operation: str) -> ValueError:
    """A header or URL that HTTP cannot carry; the offending value is not shown."""
    text = str(exc)
    if "header" in text.lower():
        detail = ("a header name or value contains a line break, leading whitespace or a "
                  "control character (value not shown)")
    else:
        detail = redact_text(text)
    return ValueError(f"{operation} of {redact_url(url)}: cannot send the request: {detail}; "
                      "fix the header or URL")


def error_from(response: requests.Response, *, url: str, operation: str
               ) -> errors.DurableStreamError:
    try:
        body = response.text if response.content else ""
    except Exception:  # pragma: no cover - body already consumed or broken
        body = ""
    return P.error_for_response(
        response.status_code, response.headers, body, url=url, operation=operation
    )


def build_query(user: Mapping[str, str], protocol: Mapping[str, str]) -> list[tuple[str, str]]:
    """Query parameters sorted by key (PROTOCOL §10.1); protocol values win."""
    merged = dict(user)
    merged.update(protocol)
    return sorted(merged.items())


def normalize_timeout(timeout: TimeoutLike) -> tuple[float, float]:
    if timeout is None:
        return DEFAULT_TIMEOUT
    if isinstance(timeout, tuple):
        connect, read = timeout
        return (float(connect), float(read))
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return (float(timeout), float(timeout))


def header_map(response: requests.Response) -> Mapping[str, Any]:
    return response.headers
