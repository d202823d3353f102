"""The only module that talks HTTP: the two transports (urllib3 by default, a user's
``requests.Session``), timeouts, dynamic headers, the retry policy, transport errors."""

from __future__ import annotations

import logging
import math

# requests imports netrc lazily inside each request; importing it here, before any sender
# thread exists, keeps a fork during a request from leaving that import's lock held in the
# child (where every later request would then deadlock).
import netrc  # noqa: F401
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from time import monotonic as _monotonic
from typing import Union

import requests
import requests.adapters
import requests.auth
import requests.utils
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from . import _jitter, errors
from . import _protocol as P
from ._redact import INSIDE_REQUEST, install_log_filters, redact_text, redact_url
from ._response import ERROR_BODY_LIMIT, Response
from ._session_transport import SessionTransport
from ._transport import DefaultSession, DefaultTransport, Transport
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
        wait = base / 2 + _jitter.fraction() * base / 2 if self.jitter else base
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
        self.transport: Transport
        if session is None or type(session) is DefaultSession:
            # No user session: the shared urllib3 pools (a DefaultSession is what another
            # client's .session returned on this path; it keeps the fast path).
            self.transport = DefaultTransport(pool_size, session)
        else:
            self.transport = SessionTransport(session)
        self.timeout = normalize_timeout(timeout)
        self.total_timeout = check_total_timeout(total_timeout)

    @property
    def session(self) -> requests.Session:
        """The user's session, or (default path) a working ``requests.Session`` that, given
        to another ``HttpClient``, keeps it on the shared urllib3 transport."""
        return self.transport.session

    def interruptible(self, url: str) -> bool:
        """True when :meth:`send` to ``url`` calls ``on_sent`` (the default transport, no
        SOCKS proxy for ``url``); otherwise a live read waits on a helper thread."""
        return self.transport.interruptible(url)

    def close(self) -> None:
        """Release what this client owns (idempotent): a user's session is never closed."""
        if self.owns_session:
            self.transport.close()

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
        """One HTTP exchange through the transport; its failures become
        :class:`TransportError` (and a header or URL HTTP cannot carry, ``ValueError``).

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
        transport = self.transport
        # Failures are raised outside the except clauses so that they carry no implicit
        # __context__ (whose text names the path with its query).
        failure: Exception
        INSIDE_REQUEST.active = True
        try:
            return transport.send(method, url, headers=headers, params=query, data=data,
                                  timeout=req_timeout, stream=stream, deadline=deadline,
                                  on_sent=on_sent)
        except ValueError as exc:  # http.client/requests refuse a header, or a bad URL
            failure = _malformed(exc, url=url, operation=operation)
        except transport.failures as exc:
            failure = transport_error(exc, url=url, operation=operation, params=query)
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

