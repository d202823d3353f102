"""One error table (PROTOCOL.md §5 statuses, §6-§7 error codes): which class each answer
becomes, whether it may be retried, and what its message says. Server-free."""

from __future__ import annotations

import pytest

from durable_streams import errors
from durable_streams._http import DEFAULT_RETRY, RetryPolicy, error_from
from durable_streams._protocol import error_for_response, server_words
from durable_streams._response import Response
from durable_streams.stream import DurableStream

URL = "http://h/v1/stream/s?token=secret"


@pytest.mark.parametrize(("status", "cls", "retryable"), [
    (400, errors.BadRequestError, False),
    (401, errors.UnauthorizedError, False),
    (403, errors.ForbiddenError, False),
    (404, errors.StreamNotFoundError, False),
    (409, errors.ConflictError, False),
    (410, errors.StreamSoftDeletedError, False),
    (413, errors.PayloadTooLargeError, False),
    (429, errors.RateLimitedError, True),
    (500, errors.ServerError, True),
    (503, errors.ServerError, True),
    (599, errors.ServerError, True),
    (418, errors.DurableStreamError, False),
    (None, errors.TransportError, True),
])
def test_status_to_class_and_retryable(status: int | None, cls: type, retryable: bool) -> None:
    assert errors.class_for(status) is cls
    assert cls.retryable is retryable
    if status is not None:
        assert DEFAULT_RETRY.is_retryable_status(status) is retryable
        built = error_for_response(status, {}, "why", url=URL, operation="append")
        assert type(built) is cls and built.retryable is retryable and built.status == status


def test_server_codes_win_over_the_status() -> None:
    assert errors.class_for(409, "FENCED") is errors.FencedError
    assert errors.class_for(404, "SUBSCRIPTION_NOT_FOUND") is errors.SubscriptionNotFoundError
    assert errors.class_for(409, "UNKNOWN_CODE") is errors.ConflictError


def test_a_policy_can_add_statuses_but_not_remove_the_retryable_classes() -> None:
    policy = RetryPolicy(retry_statuses=frozenset({408}))
    assert policy.is_retryable_status(408) and policy.is_retryable_status(503)
    assert not policy.is_retryable_status(400)


def test_413_says_payload_too_large_and_what_to_do() -> None:
    err = error_for_response(413, {}, "", url=URL, operation="append")
    assert isinstance(err, errors.PayloadTooLargeError)
    assert "too large" in str(err) and "smaller" in str(err) and "unexpected" not in str(err)


def test_410_on_a_read_with_an_offset_reason_is_retention_not_soft_delete() -> None:
    gone = error_for_response(410, {}, "offset before retention", url=URL, operation="read")
    assert type(gone) is errors.RetentionGoneError and "retain" in str(gone)
    soft = error_for_response(410, {}, "Stream is gone", url=URL, operation="append")
    assert isinstance(soft, errors.StreamSoftDeletedError) and "still has forks" in str(soft)


def test_server_words_are_escaped_and_truncated_and_secrets_masked() -> None:
    body = "bad \x00\x1b[31m\ud800 thing " + "x" * 5000
    err = error_for_response(400, {}, body, url=URL, operation="append")
    text = str(err)
    assert "\\x00" in text and "\\x1b" in text and "\x00" not in text and "\x1b" not in text
    assert all(ch.isprintable() for ch in text)
    assert len(text) < 600 and "secret" not in text
    assert server_words("a \n\t b") == "a b"


def test_retry_after_hint_on_5xx_and_429() -> None:
    for status in (429, 503):
        err = error_for_response(status, {"Retry-After": "120"}, "", url=URL, operation="head")
        assert err.retry_after == 120.0  # type: ignore[attr-defined]


def test_error_bodies_are_read_up_to_the_cap() -> None:
    huge = Response.from_bytes(400, {}, b"e" * (1024 * 1024), URL)
    err = error_from(huge, url=URL, operation="append")
    assert isinstance(err, errors.BadRequestError)
    assert len(err.body or "") <= 4000 and huge.truncated


def test_errors_are_complete_when_built() -> None:
    """The attempt note is part of the message the error is built with."""
    base = errors.TransportError("x failed", timeout=True, reached_server=False, url=URL)
    noted = base.with_note("; 3 attempts over 1.0 s")
    assert noted is not base and str(base) == "x failed"
    assert str(noted).endswith("3 attempts over 1.0 s")
    assert (noted.timeout, noted.reached_server, noted.code) == (True, False, "TIMEOUT")


def test_a_lone_surrogate_is_a_clear_value_error() -> None:
    handle = DurableStream("http://h/s", content_type="text/plain")
    with pytest.raises(ValueError, match="surrogate"):
        handle.append("\ud800")
