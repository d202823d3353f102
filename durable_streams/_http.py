"""The only module that talks HTTP: the two transports (urllib3 by default, a user's
``requests.Session``), timeouts, dynamic headers, the retry policy, transport errors."""

from __future__ import annotations

import logging
import math

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
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import requests.auth
import requests.utils
import urllib3
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from . import _protocol as P
from . import errors
from ._redact import INSIDE_REQUEST, install_log_filters, redact_text, redact_url
from ._response import ERROR_BODY_LIMIT, Response
from ._transport import (
    _MAX_REDIRECTS,
    _REDIRECTS,
    SENT_HOOK,
    DefaultSession,
    DirectTransport,
    Route,
    cross_origin_headers,
    default_transport,
    read_now,
    same_origin,
)
from ._transport_errors import describe_failure, is_timeout

log = logging.getLogger("durable_streams")
install_log_filters()

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
#: The most one blocking call (connect, read and every retry) may take by default, seconds.
DEFAULT_TOTAL_TIMEOUT = 60.0


def check_total_timeout(value: float | None) -> float | None:
    """``total_timeout``: a positive finite number of seconds, or ``None`` (no total bound)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 < value < float("inf")):
        raise ValueError(
            f"total_timeout must be a positive number of seconds or None, got {value!r}")
    return float(value)


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
        """True for ``retry_statuses`` and for every status whose error class is
        ``retryable`` (5xx, 429: :func:`durable_streams.errors.class_for`)."""
        return status in self.retry_statuses or errors.class_for(status).retryable

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
    return errors.TransportError(
        f"{operation} of {redact_url(shown)} failed: {what}", url=url, timeout=is_timeout(exc),
        reached_server=_reached_server(exc),
    )


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
    user's ``requests.Session`` is used exactly as given (so that code mocking ``requests``,
    with ``responses`` or ``requests_mock``, sees every request: pass a session). The choice
    is made once, here. Responses are :class:`~durable_streams._response.Response` objects
    either way.
    """

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        pool_size: int = 10,
        timeout: TimeoutLike = None,
        total_timeout: float | None = DEFAULT_TOTAL_TIMEOUT,
    ) -> None:
        self.owns_session = session is None
        self._direct: DirectTransport | None = None
        if session is None or type(session) is DefaultSession:
            # No user session: the shared urllib3 transport (a DefaultSession is what
            # another client's .session returned on this path; keep the fast path).
            self._direct = default_transport()
            self._direct.ensure_pool_size(pool_size)
        elif session is None:
            session = new_session(pool_size)
        self._session = session
        self.timeout = normalize_timeout(timeout)
        self.total_timeout = check_total_timeout(total_timeout)
        self._closed = False
        self._lock = threading.Lock()
        self._env_cache: dict[tuple[str, str, bool], dict[str, Any]] = {}
        self._netrc_cache: dict[tuple[str, str], requests.auth.AuthBase] = {}

    def interruptible(self, url: str) -> bool:
        """True when :meth:`send` to ``url`` will call ``on_sent``: the default (urllib3)
        transport, and no SOCKS proxy for ``url`` (that route goes through ``requests``)."""
        direct = self._direct
        if direct is None:
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
        deadline: float | None = None,
    ) -> Response:
        """One HTTP exchange; transport failures become :class:`TransportError`.

        Unless ``stream``, the body is read before returning: all of a success, at most
        :data:`ERROR_BODY_LIMIT` bytes of an error. ``on_sent`` (see :meth:`interruptible`)
        is called in this thread with the connection's socket once the request is written,
        before the response is awaited: shutting that socket down from another thread ends
        the wait at once (the call then raises :class:`TransportError`), with no helper
        thread per request. ``deadline`` (a ``time.monotonic()`` value) bounds the reading
        of a non-streamed body, however slowly the server drips it.
        """
        req_timeout = normalize_timeout(timeout) if timeout is not None else self.timeout
        query = list(params) if params else None
        # Failures are raised outside the except clauses so that they carry no implicit
        # __context__ (whose text names the path with its query).
        failure: Exception
        direct = self._direct
        route: Route | None = None
        if direct is not None:
            try:
                route = direct.route_for(url)
            except ValueError as exc:  # e.g. a port out of range
                failure = _malformed(exc, url=url, operation=operation)
                raise failure from None
        if direct is not None and route is not None and not route.fallback:
            INSIDE_REQUEST.active = True
            SENT_HOOK.fn = on_sent
            try:
                return direct.send(method, url, headers=headers, params=query, data=data,
                                   timeout=req_timeout, stream=stream, route=route,
                                   deadline=deadline)
            except ValueError as exc:  # http.client refuses a header or the URL
                failure = _malformed(exc, url=url, operation=operation)
            except Exception as exc:  # urllib3 and socket errors
                failure = transport_error(exc, url=url, operation=operation, params=query)
            finally:
                INSIDE_REQUEST.active = False
                SENT_HOOK.fn = None
            raise failure
        INSIDE_REQUEST.active = True
        try:
            response = self._send_session(method, url, headers=headers, params=query,
                                          data=data, timeout=req_timeout)
            if not stream:
                read_now(response, deadline)
        except requests.exceptions.InvalidHeader as exc:
            failure = _malformed(exc, url=url, operation=operation)
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError,
                OSError) as exc:
            failure = transport_error(exc, url=url, operation=operation, params=query)
        else:
            return response
        finally:
            INSIDE_REQUEST.active = False
        raise failure

    def _send_session(self, method: str, url: str, *, headers: Mapping[str, str] | None,
                      params: list[tuple[str, str]] | None, data: Any,
                      timeout: tuple[float, float]) -> Response:
        """Through the ``requests.Session``: body streamed, redirects followed here (GET and
        HEAD only) so that a redirect to another origin carries none of the application's
        headers, nor the session's own headers, auth or cookies."""
        session = self.session
        if type(session).request is not requests.Session.request:
            # A session subclass that customises request(): go through it.
            r = session.request(
                method, url, headers=dict(headers) if headers else None, params=params,
                data=data, timeout=timeout, stream=True, allow_redirects=False,
            )
        else:
            # What Session.request() does, minus re-reading the environment for proxy
            # and TLS settings on every call (about 0.1 ms each): they are looked up
            # once per origin, which matters on the producer's and reader's hot paths.
            prepared = session.prepare_request(requests.Request(
                method, url, headers=dict(headers) if headers else None, params=params,
                data=data, auth=self._netrc_auth(url) if session.auth is None else None,
            ))
            r = session.send(prepared, timeout=timeout, allow_redirects=False,
                             **self._environment_settings(prepared.url or url, True))
        current = r.url or url
        kept = dict(headers or {})
        foreign = False
        for _ in range(_MAX_REDIRECTS + 1):
            location = r.headers.get("Location") if r.status_code in _REDIRECTS else None
            if not location or method not in ("GET", "HEAD"):
                if not callable(getattr(r.raw, "read", None)):
                    # An adapter that returns the body already read (raw is None).
                    return Response.from_bytes(r.status_code, r.headers, r.content or b"",
                                               current, reason=r.reason or "",
                                               on_close=r.close)
                return Response(r.raw, current, status=r.status_code, headers=r.headers,
                                reason=r.reason, on_close=r.close)
            r.close()
            target = urljoin(current, location)
            if foreign or not same_origin(current, target):
                foreign = True
                kept = cross_origin_headers(kept)
                prepared = requests.Request(method, target, headers=kept).prepare()
            else:
                prepared = session.prepare_request(
                    requests.Request(method, target, headers=kept))
            r = session.send(prepared, timeout=timeout, allow_redirects=False,
                             **self._environment_settings(target, True))
            current = r.url or target
        r.close()
        raise requests.exceptions.TooManyRedirects(f"more than {_MAX_REDIRECTS} redirects")

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
        ok: Callable[[Response], bool] | None = None,
    ) -> Response:
        """Send with retries; return a successful response or raise the mapped error.

        ``headers``/``params`` are resolved again for every attempt. ``extra_*`` are the
        protocol's own values and win over user ones. When ``idempotent`` is false, a
        transport failure after the request may have reached the server is not retried.

        The whole call (every attempt, its connect and read, and the waits between them)
        ends within :attr:`total_timeout` seconds: each attempt's timeouts are cut to what
        is left, and no wait runs past it. A ``Retry-After`` longer than the policy's
        ``max_retry_after``, or than what is left, is not slept through: the error is raised
        at once with the server's hint in its message and ``retry_after``.
        """
        attempt = 0
        started = _monotonic()
        total = self.total_timeout
        deadline = started + total if total is not None else None
        connect, read = normalize_timeout(timeout) if timeout is not None else self.timeout
        while True:
            all_headers = merge_headers(resolve(headers), extra_headers or {})
            query = build_query(resolve(params), extra_params or {})
            attempt_timeout: tuple[float, float] = (connect, read)
            if deadline is not None:
                # Whole seconds (rounded up) keep the transport's per-timeout cache warm.
                left = max(float(math.ceil(deadline - _monotonic())), 1.0)
                if left < read or left < connect:
                    attempt_timeout = (min(connect, left), min(read, left))
            try:
                response = self.send(
                    method, url, operation=operation, headers=all_headers, params=query,
                    data=data, timeout=attempt_timeout, deadline=deadline,
                )
            except errors.TransportError as exc:
                retryable = idempotent or not exc.reached_server
                if not retryable or attempt >= retry.max_retries:
                    if not attempt:
                        raise
                    raise exc.with_note(_attempts_note(attempt + 1, started)) from None
                wait = retry.delay(attempt)
                if deadline is not None and _monotonic() + wait >= deadline:
                    raise exc.with_note(_attempts_note(attempt + 1, started, total)) from None
                log.debug("%s %s: %s; retry %d in %.3fs", method, redact_url(url), exc,
                          attempt + 1, wait)
            else:
                status = response.status_code
                if ok(response) if ok is not None else status < 300:
                    return response
                attempts = attempt + 1
                if not retry.is_retryable_status(status) or attempt >= retry.max_retries:
                    raise error_from(response, url=url, operation=operation,
                                     note=_attempts_note(attempts, started) if attempt else "")
                retry_after = P.parse_retry_after(response.headers.get(P.RETRY_AFTER))
                if retry_after is not None and retry_after > retry.max_retry_after:
                    raise error_from(response, url=url, operation=operation, note=(
                        f"; the server asked to retry after {retry_after:g} s, longer than "
                        f"the retry policy's max_retry_after ({retry.max_retry_after:g} s): "
                        "not waiting; try again later"))
                wait = retry.delay(attempt, retry_after)
                if deadline is not None and _monotonic() + wait >= deadline:
                    hint = (f"; the server asked to retry after {retry_after:g} s"
                            if retry_after is not None else "")
                    raise error_from(response, url=url, operation=operation,
                                     note=hint + _attempts_note(attempts, started, total))
                response.close()
                log.debug("%s %s: HTTP %d; retry %d in %.3fs", method, redact_url(url), status,
                          attempt + 1, wait)
            attempt += 1
            time.sleep(wait)


def _attempts_note(attempts: int, started: float, total: float | None = None) -> str:
    """Say how hard we tried: "; 6 attempts over 3.1 s"."""
    text = f"; {attempts} attempt{'s' if attempts != 1 else ''} over {_monotonic() - started:.1f} s"
    if total is not None:
        text += f" (the call's total_timeout of {total:g} s leaves no time for another)"
    return text


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


def error_from(response: Response, *, url: str, operation: str, note: str = ""
               ) -> errors.DurableStreamError:
    """The exception for a non-success ``response`` (its body read up to
    :data:`ERROR_BODY_LIMIT`); ``note`` is appended to the message."""
    try:
        body = response.load(ERROR_BODY_LIMIT).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - a broken body: the status still says what happened
        body = ""
    response.close()
    return P.error_for_response(
        response.status_code, response.headers, body, url=url, operation=operation, note=note
    )


def build_query(user: Mapping[str, str], protocol: Mapping[str, str]) -> list[tuple[str, str]]:
    """Query parameters sorted by key (PROTOCOL §10.1); protocol values win."""
    merged = dict(user)
    merged.update(protocol)
    return sorted(merged.items())


def normalize_timeout(timeout: TimeoutLike) -> tuple[float, float]:
    if timeout is None:
        return DEFAULT_TIMEOUT
    if isinstance(timeout, tuple) and len(timeout) == 2:
        return (_seconds(timeout[0], timeout), _seconds(timeout[1], timeout))
    return (_seconds(timeout, timeout), _seconds(timeout, timeout))


def _seconds(value: object, given: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 < value < float("inf")):
        raise ValueError(
            "timeout must be a positive finite number of seconds or a (connect, read) pair "
            f"of them, got {given!r}")
    return float(value)

