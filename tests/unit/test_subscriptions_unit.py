"""Subscription and fork client logic without a server: a canned-response transport stands
in for the server where a reference-server setup cannot produce the answer (webhooks are
off on the test server), plus the pure fork header checks (PROTOCOL §4.2, §6.2)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import requests.adapters

from durable_streams import (
    InvalidOffsetError,
    Subscription,
    WebhookURLRejectedError,
    _fork,
    errors,
)


class Canned(requests.adapters.BaseAdapter):
    """Answers every request with one status and JSON body; records the requests."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__()
        self.status = status
        self.body = body
        self.requests: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        self.requests.append(request)
        response = requests.Response()
        response.status_code = self.status
        response._content = json.dumps(self.body).encode()
        response.headers["Content-Type"] = "application/json"
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        pass


def session_with(adapter: Canned) -> requests.Session:
    session = requests.Session()
    session.mount("http://", adapter)
    return session


def test_refused_webhook_url_says_which_urls_are_accepted() -> None:
    adapter = Canned(400, {"error": {"code": "WEBHOOK_URL_REJECTED",
                                     "message": "Webhook URL host is not allowed"}})
    with pytest.raises(WebhookURLRejectedError) as info:
        Subscription.create("http://srv/v1/stream", "hook", pattern="a/*",
                            webhook_url="http://10.0.0.1/hook", session=session_with(adapter))
    message = str(info.value)
    assert "https://" in message and "localhost" in message and "127." in message
    assert info.value.status == 400 and info.value.code == "WEBHOOK_URL_REJECTED"
    sent = json.loads(adapter.requests[0].body or b"{}")
    assert sent == {"type": "webhook", "pattern": "a/*",
                    "webhook": {"url": "http://10.0.0.1/hook"}}


@pytest.mark.parametrize("code", ["ALREADY_CLAIMED", "NO_PENDING_WORK"])
def test_claim_refusals_are_none(code: str) -> None:
    adapter = Canned(409, {"error": {"code": code, "current_holder": "w2", "generation": 3}})
    sub = Subscription("http://srv/v1/stream", "s", session=session_with(adapter))
    assert sub.claim("w1") is None
    assert json.loads(adapter.requests[0].body or b"{}") == {"worker": "w1"}
    assert adapter.requests[0].url == "http://srv/v1/stream/__ds/subscriptions/s/claim"


def test_claim_other_conflicts_raise() -> None:
    adapter = Canned(409, {"error": {"code": "INVALID_OFFSET", "message": "nope"}})
    sub = Subscription("http://srv/v1/stream", "s", session=session_with(adapter))
    with pytest.raises(InvalidOffsetError):
        sub.claim("w1")


def test_control_urls_encode_ids_and_nested_paths() -> None:
    adapter = Canned(204, None)
    sub = Subscription("http://srv/v1/stream/", "a b", session=session_with(adapter))
    sub.remove_stream("orders/eu/1")
    assert adapter.requests[0].url == (
        "http://srv/v1/stream/__ds/subscriptions/a%20b/streams/orders%2Feu%2F1")
    assert sub.stream_url("orders/a") == "http://srv/v1/stream/orders/a"


def test_messages_do_not_leak_query_secrets() -> None:
    adapter = Canned(404, {"error": {"code": "SUBSCRIPTION_NOT_FOUND", "message": "x"}})
    sub = Subscription("http://user:pw@srv/v1/stream", "s", session=session_with(adapter),
                       params={"token": "s3cret"})
    with pytest.raises(errors.SubscriptionNotFoundError) as info:
        sub.info()
    assert "s3cret" not in str(info.value) and "pw" not in str(info.value)


def test_fork_headers() -> None:
    h = _fork.fork_headers("http://h:80/v1/stream/a", "http://H/v1/stream/b",
                           offset="1_2", sub_offset=0)
    assert h == {"Stream-Forked-From": "/v1/stream/a", "Stream-Fork-Offset": "1_2"}
    h = _fork.fork_headers("http://h/a", "http://h/b", offset=None, sub_offset=3)
    assert h == {"Stream-Forked-From": "/a", "Stream-Fork-Sub-Offset": "3"}
    with pytest.raises(ValueError, match="same server"):
        _fork.fork_headers("http://h/a", "http://other/b", offset=None, sub_offset=None)
    with pytest.raises(ValueError, match="its own URL"):
        _fork.fork_headers("http://h/a", "http://h/a", offset=None, sub_offset=None)
    with pytest.raises(TypeError):
        _fork.fork_headers("http://h/a", "http://h/b", offset=None, sub_offset=True)
    with pytest.raises(ValueError, match="not a fork point"):
        _fork.fork_headers("http://h/a", "http://h/b", offset="now", sub_offset=None)
