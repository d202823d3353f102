"""Shared pieces of claims (PROTOCOL §7.2) and webhook wakes (§7.1): snapshot parsing,
ack bodies, and the JSON error codes of the subscription APIs (§6, §7)."""

from __future__ import annotations

import json

import pytest

from durable_streams import _wake, errors


def test_streams_parse_with_defaults() -> None:
    streams = _wake.parse_streams([
        {"path": "orders/a", "link_type": "glob", "acked_offset": "-1",
         "tail_offset": "0000000000000000_0000000000000010", "has_pending": True},
        {"path": "orders/b"},
        "junk",
    ])
    assert [s.path for s in streams] == ["orders/a", "orders/b"]
    assert streams[0].has_pending and streams[0].acked_offset == "-1"
    assert streams[1].acked_offset == "-1" and not streams[1].has_pending
    assert _wake.parse_streams(None) == ()


def test_ack_body_shape() -> None:
    body = json.loads(_wake.ack_body("w1", 7, {"a": "1_2"}, done=True))
    assert body == {"wake_id": "w1", "generation": 7,
                    "acks": [{"stream": "a", "offset": "1_2"}], "done": True}
    assert "done" not in json.loads(_wake.ack_body("w1", 7, [], done=False))


@pytest.mark.parametrize(("status", "code", "cls"), [
    (409, "FENCED", errors.FencedError),
    (409, "SUBSCRIPTION_ALREADY_EXISTS", errors.SubscriptionExistsError),
    (404, "SUBSCRIPTION_NOT_FOUND", errors.SubscriptionNotFoundError),
    (400, "WEBHOOK_URL_REJECTED", errors.WebhookURLRejectedError),
    (401, "TOKEN_EXPIRED", errors.UnauthorizedError),
    (409, "ALREADY_CLAIMED", errors.ConflictError),
    (500, None, errors.SubscriptionError),
])
def test_error_codes_map_to_exceptions(status: int, code: str | None, cls: type) -> None:
    body = json.dumps({"error": {"code": code, "message": "why"}}) if code else "oops"
    exc = _wake.subscription_error(status, {}, body, url="http://h/x", operation="claim",
                                   hint="do this")
    assert type(exc) is cls
    assert exc.status == status
    assert (exc.code == code) if code else True
    assert "claim failed" in str(exc) and "do this" in str(exc)


def test_ack_results_are_one_type_for_claims_and_webhook_callbacks() -> None:
    from durable_streams import AckResult
    from durable_streams._wake import AckResult as Shared

    assert AckResult is Shared
    assert AckResult.from_body(b'{"ok":true,"next_wake":true}') == AckResult(True, True)
    assert AckResult.from_body(b"") == AckResult(ok=True, next_wake=False)
    assert AckResult.from_body(b"not json") == AckResult(ok=True, next_wake=False)
    assert AckResult.from_body(b'[1]') == AckResult(ok=True, next_wake=False)
    assert AckResult.from_body(b'{"ok":false}') == AckResult(ok=False, next_wake=False)


def test_old_spellings_warn() -> None:
    import durable_streams.webhooks as webhooks
    from durable_streams import AckResult

    with pytest.warns(DeprecationWarning, match="AckResult"):
        assert webhooks.CallbackResult is AckResult
    with pytest.warns(DeprecationWarning, match="next_wake"):
        assert not AckResult(ok=True, next_wake=False)
    with pytest.raises(AttributeError):
        webhooks.NoSuchName  # noqa: B018
