"""Retries (README, design decision 8; README "Retries"; PROTOCOL.md §5).

Against the real reference server with injected faults wherever it can produce the
condition (``inject_fault``: status, retryAfter, dropConnection, delayMs). ``responses`` is
used only for what the server cannot produce: odd ``Retry-After`` values, an HTTP-date
``Retry-After``, a success without ``Stream-Next-Offset``, garbage headers.
"""

from __future__ import annotations

import dataclasses
import email.utils
import logging
import socket
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses

from durable_streams import (
    BadRequestError,
    DurableStream,
    DurableStreamError,
    RateLimitedError,
    RetryPolicy,
    ServerError,
    StreamNotFoundError,
    TransportError,
)
from durable_streams import _protocol as P
from durable_streams._http import DEFAULT_RETRY, NO_RETRY
from durable_streams.testing import ReferenceServer

FAST = RetryPolicy(max_retries=3, initial_delay_ms=1, max_delay_ms=5)
#: Mocked tests pass a session: code mocking requests sees the requests it sends.
SESSION = requests.Session


def read_bytes(url: str) -> bytes:
    response = requests.get(url, params={"offset": "-1"}, timeout=10)
    response.raise_for_status()
    return response.content


@pytest.fixture
def stream(url: str) -> Iterator[DurableStream]:
    with DurableStream.create(url, content_type="text/plain", retry=FAST) as handle:
        yield handle


# -- transient failures from the real server ---------------------------------------------------


OPERATIONS = {
    # name: (HTTP method, needs the stream to exist first)
    "create": ("PUT", False),
    "head": ("HEAD", True),
    "delete": ("DELETE", True),
    "close": ("POST", True),
    "append": ("POST", True),
}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_two_503_with_retry_after_then_success(
    server: ReferenceServer, url: str, operation: str
) -> None:
    """§5 + Retry-After: two 503s (Retry-After: 1) are waited out, then the call succeeds."""
    method, exists = OPERATIONS[operation]
    if exists:
        DurableStream.create(url, content_type="text/plain").close()
    server.inject_fault(url, status=503, count=2, retryAfter=1, method=method)
    policy = RetryPolicy(max_retries=3, initial_delay_ms=1, max_delay_ms=5)
    handle = DurableStream(url, content_type="text/plain", retry=policy)
    started = time.monotonic()
    try:
        if operation == "create":
            created = DurableStream.create(url, content_type="text/plain", retry=policy)
            assert created.created is True  # the 503s committed nothing
            created.close()
        elif operation == "head":
            assert handle.head().content_type == "text/plain"
        elif operation == "delete":
            handle.delete()
        elif operation == "close":
            assert handle.close_stream()
        else:
            assert handle.append("once")
    finally:
        handle.close()
    elapsed = time.monotonic() - started
    assert 2.0 <= elapsed < 10.0, elapsed  # both Retry-After hints honoured, bounded
    if operation == "delete":
        with pytest.raises(StreamNotFoundError):
            DurableStream.connect(url)
    elif operation == "close":
        with DurableStream.connect(url) as again:
            assert again.head().closed is True
    elif operation == "append":
        assert read_bytes(url) == b"once"


def test_append_survives_injected_500(server: ReferenceServer, stream: DurableStream) -> None:
    """An error status means the server did nothing, so even a plain append is retried."""
    server.inject_fault(stream.url, status=500, count=1, method="POST")
    stream.append("exactly once")
    assert read_bytes(stream.url) == b"exactly once"


def test_429_with_retry_after_then_success(server: ReferenceServer,
                                           stream: DurableStream) -> None:
    """429 is retried after the hinted delay (conformance retry-on-429)."""
    server.inject_fault(stream.url, status=429, count=1, retryAfter=1, method="POST")
    started = time.monotonic()
    stream.append("x")
    assert 1.0 <= time.monotonic() - started < 6.0
    assert read_bytes(stream.url) == b"x"


@pytest.mark.parametrize("operation", ["create", "head", "delete", "close"])
def test_dropped_connection_is_retried_for_safe_requests(
    server: ReferenceServer, url: str, operation: str
) -> None:
    """PUT/HEAD/DELETE and close-only POST are safe to repeat after a dropped connection."""
    method, exists = OPERATIONS[operation]
    if exists:
        DurableStream.create(url, content_type="text/plain").close()
    server.inject_fault(url, dropConnection=True, count=2, method=method)
    with DurableStream(url, content_type="text/plain", retry=FAST) as handle:
        if operation == "create":
            with DurableStream.create(url, content_type="text/plain", retry=FAST) as created:
                assert created.created is True
        elif operation == "head":
            assert handle.head().closed is False
        elif operation == "delete":
            handle.delete()
            with pytest.raises(StreamNotFoundError):
                handle.head()
        else:
            handle.close_stream()
            assert handle.head().closed is True


def test_plain_append_not_retried_after_dropped_connection(
    server: ReferenceServer, stream: DurableStream
) -> None:
    """README decision 8: a POST that may have reached the server is not repeated without seq=.

    The fault fires once; had the client retried, the second attempt would have succeeded.
    """
    server.inject_fault(stream.url, dropConnection=True, count=1, method="POST")
    with pytest.raises(TransportError) as info:
        stream.append("maybe")
    err = info.value
    assert err.status is None
    assert err.code == "NETWORK_ERROR"
    assert err.url == stream.url and stream.url in str(err)
    assert isinstance(err, DurableStreamError)
    assert read_bytes(stream.url) == b""  # dropConnection: nothing committed
    stream.append("after")  # the handle is still usable
    assert read_bytes(stream.url) == b"after"


def test_append_with_seq_is_retried_after_dropped_connection(
    server: ReferenceServer, stream: DurableStream
) -> None:
    """§5.2 Stream-Seq: with seq= a repeat would be refused by the server, so it is retried."""
    server.inject_fault(stream.url, dropConnection=True, count=2, method="POST")
    offset = stream.append("once", seq="0001")
    assert offset == stream.head().offset
    assert read_bytes(stream.url) == b"once"


def test_plain_append_timeout_is_not_retried(server: ReferenceServer, url: str) -> None:
    """A read timeout may follow a commit: plain append raises TransportError(timeout)."""
    DurableStream.create(url, content_type="text/plain").close()
    server.inject_fault(url, delayMs=3000, count=1, method="POST")
    with DurableStream(url, content_type="text/plain", timeout=(5.0, 0.5),
                       retry=FAST) as handle, pytest.raises(TransportError) as info:
        handle.append("slow")
    assert info.value.timeout is True
    assert info.value.code == "TIMEOUT"
    assert url in str(info.value)


def test_head_timeout_is_retried(server: ReferenceServer, url: str) -> None:
    DurableStream.create(url, content_type="text/plain").close()
    server.inject_fault(url, delayMs=3000, count=1, method="HEAD")
    with DurableStream(url, timeout=(5.0, 0.5), retry=FAST) as handle:
        assert handle.head().content_type == "text/plain"
    server.inject_fault(url, delayMs=3000, count=1, method="HEAD")
    with DurableStream(url, timeout=(5.0, 0.5), retry=NO_RETRY) as handle, \
            pytest.raises(TransportError) as info:
        handle.head()
    assert info.value.timeout is True


def test_exhaustion_raises_server_error(server: ReferenceServer, stream: DurableStream) -> None:
    """Bounded attempts: 1 + max_retries, then ServerError (conformance retry-exhaustion)."""
    server.inject_fault(stream.url, status=500, count=4, method="HEAD")
    with pytest.raises(ServerError) as info:
        stream.head()  # FAST: 1 + 3 attempts, all 500
    err = info.value
    assert (err.status, err.code, err.url) == (500, "SERVER_ERROR", stream.url)
    assert stream.url in str(err)
    # Exactly four attempts were made: the fault is used up, the next call succeeds.
    with DurableStream(stream.url, retry=NO_RETRY) as once:
        assert once.head().closed is False


def test_default_policy_gives_up_in_bounded_time(server: ReferenceServer, url: str) -> None:
    """20 x 500 with the default policy ends in ServerError well inside 30 s."""
    assert DEFAULT_RETRY.max_retries < 20
    DurableStream.create(url).close()
    server.inject_fault(url, status=500, count=20, method="HEAD")
    started = time.monotonic()
    with DurableStream(url) as handle, pytest.raises(ServerError):
        handle.head()
    assert time.monotonic() - started < 15.0


@pytest.mark.parametrize("method", ["HEAD", "POST"])
def test_400_is_never_retried(server: ReferenceServer, stream: DurableStream,
                              method: str) -> None:
    """A 400 is final; a retry would have met no fault and succeeded."""
    server.inject_fault(stream.url, status=400, count=1, method=method)
    with pytest.raises(BadRequestError) as info:
        stream.head() if method == "HEAD" else stream.append("x")
    assert info.value.status == 400
    assert read_bytes(stream.url) == b""


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_connection_refused_is_retried_then_transport_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused connection never reached the server: even plain append is retried."""
    url = f"http://127.0.0.1:{_closed_port()}/nowhere"
    caplog.set_level(logging.DEBUG, logger="durable_streams")
    with DurableStream(url, content_type="text/plain", retry=FAST) as handle:
        for call in (handle.head, lambda: handle.append("x")):
            caplog.clear()
            with pytest.raises(TransportError) as info:
                call()
            err = info.value
            assert err.status is None and err.code == "NETWORK_ERROR" and err.url == url
            assert url in str(err)
            retries = [r for r in caplog.records if "retry" in r.getMessage()]
            assert len(retries) == FAST.max_retries


def test_dynamic_headers_evaluated_on_each_retry(server: ReferenceServer,
                                                 stream: DurableStream) -> None:
    """README "DurableStream": header callables run again for every attempt (token refresh)."""
    calls: list[str] = []

    def token() -> str:
        calls.append(f"t{len(calls)}")
        return calls[-1]

    server.inject_fault(stream.url, status=503, count=2, method="HEAD")
    with DurableStream(stream.url, retry=FAST, headers={"Authorization": token}) as handle:
        handle.head()
    assert calls == ["t0", "t1", "t2"]


# -- what the server cannot produce: responses ------------------------------------------------

MOCK = "http://mock.invalid/stream"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the retry loop's waits instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr("durable_streams._http.time",
                        types.SimpleNamespace(sleep=recorded.append))
    return recorded


@pytest.fixture
def mock() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def _head_ok(rsps: responses.RequestsMock, **headers: str) -> None:
    rsps.add(responses.HEAD, MOCK, status=200,
             headers={"Content-Type": "text/plain", "Stream-Next-Offset": "0001", **headers})


@pytest.mark.parametrize("value", ["abc", "", "-5", "1.5", "nan", "inf", "1e400",
                                   "Wed, 99 Foo 2026 00:00:00 GMT", "\u00b2", "5, 6"])
def test_malformed_retry_after_still_retries_with_bounded_wait(
    mock: responses.RequestsMock, sleeps: list[float], value: str
) -> None:
    policy = RetryPolicy(max_retries=2, initial_delay_ms=10, max_delay_ms=40,
                         max_retry_after=3.0)
    mock.add(responses.HEAD, MOCK, status=503, headers={"Retry-After": value})
    _head_ok(mock)
    with DurableStream(MOCK, session=SESSION(), retry=policy) as handle:
        assert handle.head().offset == "0001"
    assert len(mock.calls) == 2
    assert len(sleeps) == 1
    assert 0.0 < sleeps[0] <= 3.0


def test_retry_after_http_date(mock: responses.RequestsMock, sleeps: list[float]) -> None:
    """Retry-After as an HTTP-date waits until that time."""
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    mock.add(responses.HEAD, MOCK, status=503, headers={"Retry-After": when})
    _head_ok(mock)
    with DurableStream(MOCK, session=SESSION(), retry=FAST) as handle:
        handle.head()
    assert len(sleeps) == 1
    assert 28.0 <= sleeps[0] <= 31.0


def test_retry_after_http_date_in_the_past_uses_backoff(
    mock: responses.RequestsMock, sleeps: list[float]
) -> None:
    when = email.utils.formatdate(time.time() - 3600, usegmt=True)
    mock.add(responses.HEAD, MOCK, status=503, headers={"Retry-After": when})
    _head_ok(mock)
    with DurableStream(MOCK, session=SESSION(), retry=FAST) as handle:
        handle.head()
    assert 0.0 < sleeps[0] <= FAST.max_delay_ms / 1000


@pytest.mark.parametrize(("status", "error"), [(429, RateLimitedError), (503, ServerError)])
@pytest.mark.parametrize("value", ["3600", "99999999999"])
def test_retry_after_beyond_the_policy_is_not_slept_through(
        mock: responses.RequestsMock, sleeps: list[float], status: int,
        error: type[Exception], value: str) -> None:
    """A blocking call raises at once with the server's hint instead of sleeping it out."""
    policy = RetryPolicy(max_retries=3, initial_delay_ms=1, max_delay_ms=2, max_retry_after=0.5)
    mock.add(responses.POST, MOCK, status=status, headers={"Retry-After": value})
    with DurableStream(MOCK, session=SESSION(), content_type="text/plain",
                       retry=policy) as handle, pytest.raises(error) as info:
        handle.append("x")
    assert sleeps == []
    assert len(mock.calls) == 1
    assert info.value.retry_after is not None and info.value.retry_after >= 3600
    assert "retry after" in str(info.value) and "max_retry_after" in str(info.value)


def test_retry_after_minus_0000_zone_is_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 5322 "-0000" means UTC; it must not be read as local time.

    Regression: email.utils returns a naive datetime for it and .timestamp() used local time.
    """
    if not hasattr(time, "tzset"):  # pragma: no cover - Windows
        pytest.skip("needs time.tzset")
    now = 1_800_000_000.0
    stamp = email.utils.formatdate(now + 120)  # "..., 00:02:00 -0000"
    assert stamp.endswith("-0000")
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert P.parse_retry_after(stamp, now=now) == pytest.approx(120.0)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_rate_limited_error_retry_after_from_garbage(mock: responses.RequestsMock) -> None:
    mock.add(responses.HEAD, MOCK, status=429, headers={"Retry-After": "soon"})
    with DurableStream(MOCK, session=SESSION(), retry=NO_RETRY) as handle, \
            pytest.raises(RateLimitedError) as info:
        handle.head()
    assert info.value.retry_after is None
    assert info.value.status == 429 and MOCK in str(info.value)


@pytest.mark.parametrize("headers", [{}, {"Stream-Next-Offset": ""},
                                     {"Stream-Next-Offset": "  "}])
@pytest.mark.parametrize("status", [200, 204])
def test_append_success_without_next_offset_raises(
    mock: responses.RequestsMock, headers: dict[str, str], status: int
) -> None:
    """§5.2: success must carry Stream-Next-Offset; append never returns ''."""
    mock.add(responses.POST, MOCK, status=status, headers=headers)
    with DurableStream(MOCK, session=SESSION(), content_type="application/json",
                       retry=NO_RETRY) as handle, \
            pytest.raises(DurableStreamError, match="Stream-Next-Offset") as info:
        handle.append({"a": 1})
    err = info.value
    assert err.code == "PROTOCOL_ERROR" and err.status == status and err.url == MOCK
    assert MOCK in str(err)
    assert len(mock.calls) == 1  # not retried: the write may have landed


def test_head_tolerates_garbage_headers(mock: responses.RequestsMock) -> None:
    """§5.5: odd header values give None/False, never an exception."""
    mock.add(responses.HEAD, MOCK, status=200, headers={
        "Stream-Next-Offset": "0009", "Stream-TTL": "\u00b2", "Stream-Closed": "yes",
    }, content_type=None)
    mock.add(responses.HEAD, MOCK, status=200, headers={
        "Stream-Next-Offset": "0009", "Stream-TTL": "-5", "Stream-Closed": " TRUE ",
        "Content-Type": "application/json; charset=utf-8",
    })
    mock.add(responses.HEAD, MOCK, status=200, headers={"Stream-TTL": " 42 "},
             content_type=None)
    with DurableStream(MOCK, session=SESSION(), retry=NO_RETRY) as handle:
        first = handle.head()
        assert (first.ttl_seconds, first.closed, first.content_type) == (None, False, None)
        assert handle.content_type is None
        second = handle.head()
        assert (second.ttl_seconds, second.closed) == (None, True)
        assert handle.content_type == "application/json; charset=utf-8"
        third = handle.head()
        assert third.ttl_seconds == 42
        assert handle.content_type == "application/json; charset=utf-8"  # kept


def test_connection_reset_on_append_not_retried_but_head_is(
    mock: responses.RequestsMock, sleeps: list[float]
) -> None:
    mock.add(responses.POST, MOCK, body=requests.exceptions.ConnectionError("reset by peer"))
    mock.add(responses.POST, MOCK, status=204, headers={"Stream-Next-Offset": "0002"})
    with DurableStream(MOCK, session=SESSION(), content_type="text/plain", retry=FAST) as handle:
        with pytest.raises(TransportError, match="reset by peer"):
            handle.append("x")
        assert len(mock.calls) == 1
        assert handle.append("x", seq="01") == "0002"  # the next call gets the 204
    mock.add(responses.HEAD, MOCK, body=requests.exceptions.ConnectionError("reset"))
    _head_ok(mock)
    with DurableStream(MOCK, session=SESSION(), retry=FAST) as handle:
        handle.head()
    assert len(mock.calls) == 4


def test_connect_timeout_on_append_is_retried(mock: responses.RequestsMock,
                                              sleeps: list[float]) -> None:
    """A connect timeout means the request never left: safe to retry even a plain append."""
    mock.add(responses.POST, MOCK, body=requests.exceptions.ConnectTimeout("connect timeout"))
    mock.add(responses.POST, MOCK, status=204, headers={"Stream-Next-Offset": "0003"})
    with DurableStream(MOCK, session=SESSION(), content_type="text/plain", retry=FAST) as handle:
        assert handle.append("x") == "0003"
    assert len(mock.calls) == 2 and len(sleeps) == 1


def test_max_retries_zero_means_one_attempt(mock: responses.RequestsMock,
                                            sleeps: list[float]) -> None:
    mock.add(responses.HEAD, MOCK, status=503)
    with DurableStream(MOCK, session=SESSION(), retry=RetryPolicy(max_retries=0)) as handle, \
            pytest.raises(ServerError):
        handle.head()
    assert len(mock.calls) == 1 and sleeps == []


def test_backoff_grows_and_is_capped(mock: responses.RequestsMock, sleeps: list[float]) -> None:
    policy = RetryPolicy(max_retries=6, initial_delay_ms=100, max_delay_ms=1000,
                         multiplier=3, jitter=False)
    for _ in range(7):
        mock.add(responses.HEAD, MOCK, status=502)
    with DurableStream(MOCK, session=SESSION(), retry=policy) as handle, \
            pytest.raises(ServerError) as info:
        handle.head()
    assert info.value.status == 502
    assert sleeps == pytest.approx([0.1, 0.3, 0.9, 1.0, 1.0, 1.0])


# -- RetryPolicy validation and arithmetic ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "name"),
    [
        ({"max_retries": -1}, ValueError, "maxRetries"),
        ({"max_retries": 1.5}, TypeError, "maxRetries"),
        ({"max_retries": True}, TypeError, "maxRetries"),
        ({"initial_delay_ms": 0}, ValueError, "initialDelayMs"),
        ({"initial_delay_ms": -10}, ValueError, "initialDelayMs"),
        ({"initial_delay_ms": float("nan")}, ValueError, "initialDelayMs"),
        ({"initial_delay_ms": "100"}, TypeError, "initialDelayMs"),
        ({"max_delay_ms": 0}, ValueError, "maxDelayMs"),
        ({"max_delay_ms": 50, "initial_delay_ms": 100}, ValueError, "maxDelayMs"),
        ({"max_delay_ms": None}, TypeError, "maxDelayMs"),
        ({"multiplier": 0.5}, ValueError, "multiplier"),
        ({"multiplier": -2}, ValueError, "multiplier"),
        ({"multiplier": None}, TypeError, "multiplier"),
    ],
)
def test_retry_policy_validation_names_camel_case(kwargs: dict[str, Any], exc: type[Exception],
                                                  name: str) -> None:
    """README "Retries": validation messages contain maxRetries/initialDelayMs/maxDelayMs/
    multiplier (case-sensitive, conformance V1–V6)."""
    with pytest.raises(exc) as info:
        RetryPolicy(**kwargs)
    assert name in str(info.value)


def test_retry_policy_is_immutable_and_accepts_edges() -> None:
    policy = RetryPolicy(max_retries=0, initial_delay_ms=1, max_delay_ms=1, multiplier=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_retries = 3  # type: ignore[misc]
    assert policy.delay(10) <= 0.001
    assert RetryPolicy(max_delay_ms=float("inf")).delay(3) > 0


@pytest.mark.parametrize("multiplier", [2, 2.0, 10])
def test_retry_policy_delay_after_very_many_retries(multiplier: float) -> None:
    """A long retry run must keep waiting max_delay, not crash.

    Regression: 2.0 ** 1100 raised OverflowError inside delay().
    """
    policy = RetryPolicy(max_retries=10**6, multiplier=multiplier, jitter=False)
    for n in (1023, 1100, 5000, 10**6 - 1):
        assert policy.delay(n) == policy.max_delay_ms / 1000


def test_retry_policy_delay_rules() -> None:
    policy = RetryPolicy(initial_delay_ms=100, max_delay_ms=800, multiplier=2, jitter=True,
                         max_retry_after=5)
    for n in range(8):
        base = min(100 * 2**n, 800) / 1000
        for _ in range(20):
            assert base / 2 <= policy.delay(n) <= base
    assert policy.delay(0, retry_after=2.0) == 2.0  # a floor...
    assert policy.delay(0, retry_after=100.0) == 5.0  # ...capped by max_retry_after
    assert policy.is_retryable_status(429) and policy.is_retryable_status(503)
    assert policy.is_retryable_status(599)
    assert not any(policy.is_retryable_status(s) for s in (400, 401, 403, 404, 409, 410, 413))
