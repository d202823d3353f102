"""Every IdempotentProducer option is checked when given (issue 16), with an exception
that names the option and the fix; no server is needed: the constructor does no I/O."""

from __future__ import annotations

import contextlib
import inspect
import math
import pydoc
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from durable_streams import IdempotentProducer, RetryPolicy
from durable_streams._producer.options import MAX_IN_FLIGHT

URL = "http://127.0.0.1:9/v1/stream/options"  # never contacted


@pytest.fixture
def made() -> Iterator[list[IdempotentProducer]]:
    producers: list[IdempotentProducer] = []
    yield producers
    for p in producers:
        with contextlib.suppress(Exception):  # (unreachable URL: messages are given up)
            p.close(timeout=0.5)


def make(made: list[IdempotentProducer], producer_id: str = "p", **kw: Any
         ) -> IdempotentProducer:
    kw.setdefault("flush_at_exit", False)
    p = IdempotentProducer(URL, producer_id, **kw)
    made.append(p)
    return p


def refused(exc_type: type[BaseException], match: str, producer_id: Any = "p", **kw: Any
            ) -> BaseException:
    before = threading.active_count()
    kw.setdefault("flush_at_exit", False)
    with pytest.raises(exc_type, match=match) as info:
        IdempotentProducer(URL, producer_id, **kw)
    assert threading.active_count() == before  # a refused construction leaves nothing
    return info.value


@pytest.mark.parametrize("bad, why", [
    ("a\nb", "line break"), ("a\rb", "carriage return"), ("a\x00b", "NUL"),
    ("a\x1bb", "control character U\\+001B"), ("a\x7fb", "U\\+007F"),
    ("r\u20acsum\u00e9", "Latin-1 only"),
])
def test_producer_id_must_be_header_safe(bad: str, why: str) -> None:
    err = refused(ValueError, why, producer_id=bad)
    assert "Producer-Id" in str(err)


@pytest.mark.parametrize("bad", ["", "   ", 5, None, b"p"])
def test_producer_id_must_be_a_non_empty_str(bad: Any) -> None:
    refused(ValueError, "producer_id must be a non-empty string", producer_id=bad)


def test_latin1_and_tab_producer_ids_are_fine(made: list[IdempotentProducer]) -> None:
    assert make(made, "caf\u00e9\tworker").producer_id == "caf\u00e9\tworker"


@pytest.mark.parametrize("headers, exc_type, match", [
    ([("X-A", "b")], TypeError, "headers must be a mapping"),
    ("X-A: b", TypeError, "headers must be a mapping"),
    ({"X-A": 1}, TypeError, r"headers\['X-A'\] must be a str"),
    ({"X-A": b"v"}, TypeError, r"headers\['X-A'\] must be a str"),
    ({"bad name": "v"}, ValueError, "not a valid HTTP header name"),
    ({"X-A\n": "v"}, ValueError, "not a valid HTTP header name"),
    ({1: "v"}, ValueError, "not a valid HTTP header name"),
    ({"X-Api-Key": "secret-token\r\nX-Evil: 1"}, ValueError, "carriage return"),
    ({"X-Api-Key": "secret-token\u2028"}, ValueError, "Latin-1"),
])
def test_headers_must_be_a_mapping_of_header_safe_str(headers: Any,
                                                      exc_type: type[BaseException],
                                                      match: str) -> None:
    err = refused(exc_type, match, headers=headers)
    assert "secret-token" not in str(err)  # a header value may be a secret


def test_header_callables_and_none_values_are_accepted(made: list[IdempotentProducer]
                                                       ) -> None:
    make(made, headers={"X-Token": lambda: "t", "X-Drop": None, "X-Plain": "v"})
    make(made, headers=lambda: {"X-Token": "t"})


@pytest.mark.parametrize("timeout, exc_type", [
    (math.nan, ValueError), (math.inf, ValueError), (-1, ValueError), (0, ValueError),
    ("1", TypeError), (True, TypeError), ((1.0, math.nan), ValueError),
    ((1.0, 2.0, 3.0), ValueError), ((0, 1), ValueError), (("1", 2), TypeError),
])
def test_request_timeout_must_be_finite_and_positive(timeout: Any,
                                                     exc_type: type[BaseException]) -> None:
    refused(exc_type, "request_timeout", request_timeout=timeout)


def test_good_request_timeouts(made: list[IdempotentProducer]) -> None:
    make(made, request_timeout=0.5)
    make(made, request_timeout=(1, 2.5))


@pytest.mark.parametrize("retry", ["fast", {"max_retries": 1}, 3])
def test_retry_must_be_a_retry_policy(retry: Any) -> None:
    refused(TypeError, "retry must be a durable_streams.RetryPolicy", retry=retry)


@pytest.mark.parametrize("value, exc_type", [
    (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("10", TypeError),
    (None, TypeError),
])
def test_exit_timeout_ms_must_be_finite_and_not_negative(value: Any,
                                                         exc_type: type[BaseException]) -> None:
    refused(exc_type, "exit_timeout_ms", exit_timeout_ms=value)


@pytest.mark.parametrize("value, exc_type", [
    (-1, ValueError), (math.nan, ValueError), (math.inf, ValueError), ("10", TypeError),
    (None, TypeError),
])
def test_deprecated_exit_timeout_keeps_its_validation(value: Any,
                                                      exc_type: type[BaseException]) -> None:
    with pytest.warns(DeprecationWarning):
        refused(exc_type, "exit_timeout", exit_timeout=value)


def test_exit_timeout_seconds_still_works_with_a_deprecation_warning(
        made: list[IdempotentProducer]) -> None:
    """The old spelling (seconds) warns at the caller's line, names the new spelling and
    sets the same exit bound as the milliseconds it stands for."""
    with pytest.warns(DeprecationWarning, match="exit_timeout_ms") as record:
        old = make(made, exit_timeout=2.5)
    assert [w.filename for w in record] == [__file__]  # stacklevel: the caller's line
    new = make(made, exit_timeout_ms=2_500)
    assert old._exit_timeout == new._exit_timeout == 2.5
    assert make(made)._exit_timeout == 10.0  # the default: 10 000 ms


@pytest.mark.parametrize("ms", [10_000, 10_000.0, 500])
def test_exit_timeout_and_exit_timeout_ms_together_are_refused(ms: float) -> None:
    """Both spellings at once (even with the default's value) is a TypeError."""
    with pytest.raises(TypeError, match="exit_timeout_ms"):
        IdempotentProducer(URL, "p", exit_timeout=1.0, exit_timeout_ms=ms)


def test_new_spelling_gives_no_warning(made: list[IdempotentProducer]) -> None:
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(made, exit_timeout_ms=0)


@pytest.mark.parametrize("value", [0, -1, MAX_IN_FLIGHT + 1, 10**9])
def test_max_in_flight_is_within_its_range(value: int) -> None:
    refused(ValueError, "max_in_flight", max_in_flight=value)


def test_max_in_flight_bounds_are_accepted(made: list[IdempotentProducer]) -> None:
    make(made, max_in_flight=1)
    make(made, max_in_flight=MAX_IN_FLIGHT)
    refused(TypeError, "max_in_flight", max_in_flight=True)
    refused(TypeError, "max_in_flight", max_in_flight=2.0)


@pytest.mark.parametrize("name", ["auto_claim", "validate_json", "flush_at_exit"])
def test_flags_must_be_bool(name: str) -> None:
    refused(TypeError, f"{name} must be True or False", **{name: "yes"})


def test_content_type_and_session_types() -> None:
    refused(TypeError, "content_type must be a non-empty str", content_type=5)
    refused(TypeError, "content_type must be a non-empty str", content_type="")
    refused(ValueError, "line break", content_type="application/json\nX: y")
    refused(TypeError, "session must be a requests.Session", session=object())


def test_flush_and_close_timeouts_are_checked(made: list[IdempotentProducer]) -> None:
    p = make(made)
    for call in (p.flush, p.close, p.close_stream):
        name = call.__name__
        with pytest.raises(TypeError, match=rf"{name}\(timeout=\.\.\.\) must be a number"):
            call(timeout="1")  # type: ignore[call-arg]
        with pytest.raises(ValueError, match=rf"{name}\(timeout=\.\.\.\) must be a finite number"):
            call(timeout=-1)  # type: ignore[call-arg]
        with pytest.raises(ValueError):
            call(timeout=math.nan)  # type: ignore[call-arg]
    assert not p.closed  # a refused call changed nothing
    assert p.flush(timeout=0) == ""


def test_construction_starts_no_thread(made: list[IdempotentProducer]) -> None:
    before = {t.ident for t in threading.enumerate()}
    make(made, "nothreads", max_in_flight=MAX_IN_FLIGHT)
    assert {t.ident for t in threading.enumerate()} == before


def test_append_is_a_real_method_a_subclass_can_override(made: list[IdempotentProducer]
                                                         ) -> None:
    seen: list[object] = []

    class Counting(IdempotentProducer):
        def append(self, data: str | bytes | bytearray | memoryview) -> None:
            seen.append(data)
            super().append(data)

    p = Counting(URL, "sub", flush_at_exit=False, linger_ms=60_000)
    made.append(p)
    p.append('"x"')
    assert seen == ['"x"'] and p.pending_count == 1
    assert "append" not in vars(p)  # an override is never shadowed per instance


def test_help_documents_every_parameter() -> None:
    text = pydoc.render_doc(IdempotentProducer, renderer=pydoc.plaintext)
    for name in inspect.signature(IdempotentProducer).parameters:
        assert f"{name}:" in text, f"{name} is not documented"
    for phrase in ("auto_claim", "1..64", "max_block_ms", "flush_at_exit", "exit_timeout_ms",
                   "delivery_timeout_ms", "maybe_stored"):
        assert phrase in text
    for method in (IdempotentProducer.flush, IdempotentProducer.close,
                   IdempotentProducer.close_stream, IdempotentProducer.append):
        assert method.__doc__ and "timeout" in method.__doc__ or method.__name__ == "append"


def test_retry_policy_is_accepted(made: list[IdempotentProducer]) -> None:
    make(made, retry=RetryPolicy(max_retries=1))
    make(made, session=requests.Session())


def test_pass_through_constructors_warn_at_their_caller() -> None:
    """StateProducer and DurableStreamHandler pass producer options on; the deprecated
    ``exit_timeout`` is turned into ``exit_timeout_ms`` at their construction, so the
    warning names the caller's line and a bad value or both spellings raise at once."""
    from durable_streams.logging import DurableStreamHandler
    from durable_streams.state import StateProducer

    with pytest.warns(DeprecationWarning, match="exit_timeout_ms") as record:
        sp = StateProducer(URL, "sp", exit_timeout=2, flush_at_exit=False)
    try:
        assert [w.filename for w in record] == [__file__]
        assert sp._producer._exit_timeout == 2.0
    finally:
        sp._producer.close(timeout=0)
    with pytest.warns(DeprecationWarning, match="exit_timeout_ms") as record:
        handler = DurableStreamHandler(URL, exit_timeout=2, close_timeout=0)
    try:
        assert [w.filename for w in record] == [__file__]
        assert handler._options["exit_timeout_ms"] == 2000.0
        assert "exit_timeout" not in handler._options
    finally:
        handler.close()
    with pytest.raises(TypeError, match="exit_timeout_ms"):
        StateProducer(URL, "sp", exit_timeout=2, exit_timeout_ms=2000)
    with pytest.raises(TypeError, match="exit_timeout_ms"):
        DurableStreamHandler(URL, exit_timeout=2, exit_timeout_ms=2000)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="exit_timeout"):
        StateProducer(URL, "sp", exit_timeout=-1)
