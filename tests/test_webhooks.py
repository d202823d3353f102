"""Webhook wakes against the reference server (PROTOCOL §6.2, §6.5, §7.1, §7.3).

The server runs with ``webhooks: true`` (fixture ``durable_streams_webhook_server``); a
loopback receiver (tests/webhook_helpers.py) records each signed delivery."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator

import pytest
import requests

pytest.importorskip("cryptography")

from webhook_helpers import (  # noqa: E402
    Delivery,
    Receiver,
    acked_offsets,
    append,
    create_stream,
    create_webhook_subscription,
    delete_subscription,
    done_reply,
    subscription_info,
    wait_for,
)

from durable_streams import (  # noqa: E402
    FencedError,
    Wake,
    WebhookSignatureError,
    WebhookURLRejectedError,
    WebhookVerifier,
)
from durable_streams.testing import ReferenceServer  # noqa: E402
from durable_streams.webhooks import jwks_url_for  # noqa: E402


@pytest.fixture
def wserver(durable_streams_webhook_server: ReferenceServer) -> ReferenceServer:
    return durable_streams_webhook_server


@pytest.fixture
def root(wserver: ReferenceServer) -> str:
    return wserver.stream_root


@pytest.fixture
def prefix() -> str:
    return f"wh-{uuid.uuid4().hex[:10]}"


class JwksFetches:
    """Counts the verifier's JWKS requests as the network sees them: a ``requests.Session``
    given to the verifier (public API) with a response hook recording each URL."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.session = requests.Session()
        self.session.hooks["response"].append(self._seen)

    def _seen(self, response: requests.Response, *args: object, **kwargs: object) -> None:
        if response.url.endswith("/__ds/jwks.json"):
            self.urls.append(response.url)

    @property
    def count(self) -> int:
        return len(self.urls)


@pytest.fixture
def fetches() -> Iterator[JwksFetches]:
    counter = JwksFetches()
    yield counter
    counter.session.close()


@pytest.fixture
def verifier(root: str, fetches: JwksFetches) -> Iterator[WebhookVerifier]:
    with WebhookVerifier.for_stream_root(root, session=fetches.session) as v:
        yield v


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def subs(root: str) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for sub in made:
        delete_subscription(root, sub)


def subscribe(root: str, subs: list[str], receiver: Receiver, **kw: object) -> str:
    sub = f"sub-{uuid.uuid4().hex[:10]}"
    create_webhook_subscription(root, sub, webhook_url=receiver.url, **kw)  # type: ignore[arg-type]
    subs.append(sub)
    return sub


def test_valid_delivery_is_verified_and_reads_the_pending_data(
        root: str, prefix: str, verifier: WebhookVerifier, receiver: Receiver,
        subs: list[str]) -> None:
    # §6.2: a stream that appears after a pattern subscription starts at "-1".
    sub = subscribe(root, subs, receiver, pattern=f"{prefix}/*")
    url = create_stream(root, f"{prefix}/orders")
    tail = append(url, json.dumps([{"n": 1}, {"n": 2}]))
    delivery = receiver.next()
    wake = verifier.verify(delivery.body, delivery.signature)
    assert wake.subscription_id == sub and wake.generation >= 1
    linked = wake.stream(f"{prefix}/orders")
    assert linked.acked_offset == "-1" and linked.has_pending
    assert linked.tail_offset == tail
    assert wake.stream_root == root
    assert wake.callback_url == f"{root}/__ds/subscriptions/{sub}/callback"
    with wake.read(f"{prefix}/orders") as response:
        assert response.read_json() == [{"n": 1}, {"n": 2}]
        assert response.offset == tail
    assert wake.callback_token not in repr(wake)
    wake.callback()  # finish, so the subscription is idle again


def test_refused_deliveries(root: str, prefix: str, verifier: WebhookVerifier,
                            receiver: Receiver, subs: list[str],
                            fetches: JwksFetches) -> None:
    url = create_stream(root, f"{prefix}/a")
    subscribe(root, subs, receiver, streams=[f"{prefix}/a"])
    append(url, '{"x": 1}')
    d = receiver.next()
    assert d.signature is not None
    good = verifier.verify(d.body, d.signature)
    fields = dict(p.split("=", 1) for p in d.signature.split(","))
    t = int(fields["t"])

    def refused(body: bytes, header: str | None, **kw: float) -> str:
        with pytest.raises(WebhookSignatureError) as exc:
            verifier.verify(body, header, **kw)
        return exc.value.reason

    # Tampered body: one byte of the generation changed.
    tampered = d.body.replace(f'"generation":{good.generation}'.encode(),
                              f'"generation":{good.generation + 1}'.encode())
    assert tampered != d.body
    assert refused(tampered, d.signature) == "bad_signature"
    # Re-serialised JSON is not the raw body either.
    assert refused(json.dumps(json.loads(d.body)).encode(), d.signature) == "bad_signature"
    # Wrong key: a signature made with another Ed25519 key under the server's kid.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    forged = Ed25519PrivateKey.generate().sign(f"{t}.".encode() + d.body)
    forged_b64 = base64.urlsafe_b64encode(forged).rstrip(b"=").decode()
    assert refused(d.body, f"t={t},kid={fields['kid']},ed25519={forged_b64}") \
        == "bad_signature"
    # Stale and future timestamps (the delivery replayed late, or a skewed clock).
    assert refused(d.body, d.signature, now=t + 301) == "stale_timestamp"
    assert refused(d.body, d.signature, now=t - 301) == "future_timestamp"
    assert refused(d.body, None) == "missing_header"
    assert refused(d.body, "t=1,kid=x") == "malformed_header"
    assert fetches.count == 1  # one JWKS fetch for all of the above
    good.callback()


def test_synchronous_done_acks_the_snapshot_tails(root: str, prefix: str,
                                                  verifier: WebhookVerifier,
                                                  subs: list[str]) -> None:
    seen: list[Wake] = []

    def respond(d: Delivery) -> tuple[int, bytes]:
        wake = verifier.verify(d.body, d.signature)  # verify first, then work
        seen.append(wake)
        return 200, wake.reply_done()

    with Receiver(respond) as receiver:
        a = create_stream(root, f"{prefix}/a")
        b = create_stream(root, f"{prefix}/b")
        sub = subscribe(root, subs, receiver, streams=[f"{prefix}/a", f"{prefix}/b"])
        tail_a = append(a, '{"a": 1}')
        receiver.next()
        # §7.1: the server acks every tail of the snapshot once the reply says done.
        wait_for(lambda: acked_offsets(root, sub)[f"{prefix}/a"] == tail_a,
                 what="the tail of a to be acked")
        tail_b = append(b, '{"b": 1}')
        receiver.next()
        wait_for(lambda: acked_offsets(root, sub) == {f"{prefix}/a": tail_a,
                                                      f"{prefix}/b": tail_b},
                 what="both tails acked")
    assert [w.generation for w in seen] == [seen[0].generation, seen[0].generation + 1]
    assert len({w.wake_id for w in seen}) == 2
    assert subscription_info(root, sub)["status"] == "active"


def test_asynchronous_callback_acks_and_a_replay_is_fenced(root: str, prefix: str,
                                                           verifier: WebhookVerifier,
                                                           receiver: Receiver,
                                                           subs: list[str]) -> None:
    url = create_stream(root, f"{prefix}/a")
    sub = subscribe(root, subs, receiver, streams=[f"{prefix}/a"])
    before = acked_offsets(root, sub)[f"{prefix}/a"]
    first = append(url, '{"n": 1}')
    tail = append(url, '{"n": 2}')
    d = receiver.next()  # answered 200 "{}": not done, the wake stays open
    wake = verifier.verify(d.body, d.signature)
    assert acked_offsets(root, sub)[f"{prefix}/a"] == before
    with wake.read(f"{prefix}/a") as response:  # from the snapshot's acked offset
        assert response.read_json() == [{"n": 1}, {"n": 2}]
    # Progress without done: acks the first message and keeps the wake (lease extended).
    result = wake.callback({f"{prefix}/a": first}, done=False)
    assert result.ok and not result.next_wake
    assert acked_offsets(root, sub)[f"{prefix}/a"] == first
    with wake.read(f"{prefix}/a", offset=first) as response:  # resume after the progress
        assert response.read_json() == [{"n": 2}]
    wake.callback()  # done: acks the snapshot's tail
    assert acked_offsets(root, sub)[f"{prefix}/a"] == wake.tails()[f"{prefix}/a"]
    assert wake.tails()[f"{prefix}/a"] in (first, tail)
    assert acked_offsets(root, sub)[f"{prefix}/a"] <= tail
    # §7.3: the wake is finished; the same callback again is fenced.
    with pytest.raises(FencedError) as exc:
        wake.callback()
    assert exc.value.status == 409 and exc.value.code == "FENCED"
    assert wake.callback_token not in str(exc.value)


def test_a_500_from_the_receiver_is_retried_and_then_succeeds(root: str, prefix: str,
                                                              verifier: WebhookVerifier,
                                                              subs: list[str]) -> None:
    answers = iter([(500, b'{"error": "busy"}')])

    def respond(d: Delivery) -> tuple[int, bytes]:
        verifier.verify(d.body, d.signature)
        return next(answers, (200, Wake.DONE_BODY))

    with Receiver(respond) as receiver:
        url = create_stream(root, f"{prefix}/a")
        sub = subscribe(root, subs, receiver, streams=[f"{prefix}/a"])
        tail = append(url, '{"n": 1}')
        first = receiver.next()
        # While the retry is scheduled the subscription reports "failed" (§6.3).
        wait_for(lambda: subscription_info(root, sub)["status"] == "failed",
                 timeout=0.7, interval=0.02, what='status "failed" before the retry')
        # §7.1: backoff starts at 1 s (±20 %): the retry comes within a bounded time.
        second = receiver.next(timeout=10)
        assert 0.7 <= second.at - first.at <= 6.0  # 0.8-1.2 s, plus slack for a busy box
        w1 = Wake.parse(first.body)
        w2 = verifier.verify(second.body, second.signature)
        assert (w2.wake_id, w2.generation) == (w1.wake_id, w1.generation)  # same wake
        wait_for(lambda: acked_offsets(root, sub)[f"{prefix}/a"] == tail, what="the ack")
        assert subscription_info(root, sub)["status"] == "active"
    assert len(receiver.all) == 2


def test_key_rotation_after_a_restart_costs_one_refetch(prefix: str) -> None:
    with ReferenceServer(webhooks=True) as private, Receiver(done_reply) as receiver:
        root = private.stream_root
        fetches = JwksFetches()
        verifier = WebhookVerifier(jwks_url_for(root), min_refresh_interval_s=0,
                                   session=fetches.session)

        def deliver() -> Wake:
            sub = f"sub-{uuid.uuid4().hex[:8]}"
            url = create_stream(root, f"{prefix}/{sub}")
            create_webhook_subscription(root, sub, webhook_url=receiver.url,
                                        streams=[f"{prefix}/{sub}"])
            append(url, '{"n": 1}')
            d = receiver.next()
            return verifier.verify(d.body, d.signature)

        deliver()
        deliver()
        old_kids = verifier.key_ids
        assert fetches.count == 1
        private.restart()  # a new process: a new signing key, so a new kid (§6.5)
        deliver()
        assert verifier.key_ids != old_kids
        assert fetches.count == 2  # exactly one refetch for the new kid
        deliver()
        assert fetches.count == 2
        assert fetches.urls == [jwks_url_for(root)] * 2
        verifier.close()
        fetches.session.close()


def test_refused_webhook_url(root: str, prefix: str) -> None:
    # §6.2/§12.8: plain http only for localhost and 127.0.0.x; private hosts are refused.
    with pytest.raises(WebhookURLRejectedError) as exc:
        create_webhook_subscription(root, f"sub-{prefix}", webhook_url="http://10.0.0.1/h",
                                    streams=[f"{prefix}/a"])
    assert exc.value.status == 400 and exc.value.code == "WEBHOOK_URL_REJECTED"
    # The message says which URLs the server does accept.
    assert "https://" in str(exc.value) and "localhost" in str(exc.value)


def test_webhooks_are_off_unless_asked_for(durable_streams_server: ReferenceServer,
                                           prefix: str) -> None:
    from durable_streams import BadRequestError
    with Receiver() as receiver, pytest.raises(BadRequestError):
        create_webhook_subscription(durable_streams_server.stream_root, f"sub-{prefix}",
                                    webhook_url=receiver.url, streams=[f"{prefix}/a"])


def test_jwks_is_served_with_a_max_age(root: str, verifier: WebhookVerifier,
                                       fetches: JwksFetches) -> None:
    verifier.refresh()
    assert fetches.count == 1
    assert all(kid.startswith("ds_") for kid in verifier.key_ids) and verifier.key_ids
    started = time.monotonic()
    verifier.key_ids  # noqa: B018 - no fetch for reading the cache
    assert fetches.count == 1 and time.monotonic() - started < 1


def test_an_expired_lease_fences_the_old_wake(root: str, prefix: str,
                                              verifier: WebhookVerifier, receiver: Receiver,
                                              subs: list[str]) -> None:
    # §7.3: the webhook lease starts with the wake; when it expires unanswered, a new wake
    # (generation + 1) is delivered and the old wake's token is fenced.
    url = create_stream(root, f"{prefix}/a")
    sub = subscribe(root, subs, receiver, streams=[f"{prefix}/a"], lease_ttl_ms=1000)
    tail = append(url, '{"n": 1}')
    old = verifier.verify(*_parts(receiver.next()))
    new = verifier.verify(*_parts(receiver.next(timeout=5)))  # after ~1 s
    assert new.generation == old.generation + 1 and new.wake_id != old.wake_id
    with pytest.raises(FencedError):
        old.callback()
    import dataclasses

    from durable_streams import SubscriptionNotFoundError, UnauthorizedError
    with pytest.raises(UnauthorizedError) as exc:  # 401 TOKEN_INVALID
        forged = "f" + new.callback_token[1:]  # the signed payload changed: HMAC mismatch
        assert forged != new.callback_token
        dataclasses.replace(new, callback_token=forged).callback()
    assert exc.value.code == "TOKEN_INVALID"
    assert new.callback().ok
    assert acked_offsets(root, sub)[f"{prefix}/a"] == tail
    delete_subscription(root, sub)
    with pytest.raises(SubscriptionNotFoundError):
        new.callback()


def _parts(d: Delivery) -> tuple[bytes, str | None]:
    return d.body, d.signature
