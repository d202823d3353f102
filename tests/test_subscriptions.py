"""Subscriptions (PROTOCOL §6) and single-worker claims (§7.2, §7.3) against the reference
server: create / re-confirm / conflict, membership, info, delete, claim, ack, release,
heartbeat and fencing."""

from __future__ import annotations

import gc
import threading

import pytest
from sub_helpers import JSON, Space, dumps, poll, root_of

from durable_streams import (
    AckResult,
    BadRequestError,
    Claim,
    FencedError,
    InvalidOffsetError,
    StreamNotFoundError,
    Subscription,
    SubscriptionExistsError,
    SubscriptionInfo,
    SubscriptionNotFoundError,
    _claim,
)
from durable_streams.testing import ReferenceServer


@pytest.fixture
def space(server: ReferenceServer) -> Space:
    return Space(root_of(server))


def test_create_reconfirm_and_conflict(space: Space) -> None:
    sub = space.subscription(lease_ttl_ms=5000, description="orders")
    assert sub.created is True
    again = Subscription.create(space.root, sub.subscription_id, pattern=space.path("orders/*"),
                                wake_stream=space.path("wake"), lease_ttl_ms=5000,
                                description="orders")
    assert again.created is False  # §6.2: identical configuration -> 200
    with pytest.raises(SubscriptionExistsError, match="SUBSCRIPTION_ALREADY_EXISTS") as info:
        Subscription.create(space.root, sub.subscription_id, pattern=space.path("orders/*"),
                            wake_stream=space.path("wake"), lease_ttl_ms=6000)
    assert info.value.status == 409
    assert info.value.code == "SUBSCRIPTION_ALREADY_EXISTS"


def test_create_checks_arguments_before_any_request() -> None:
    root = "http://127.0.0.1:1/v1/stream"  # nothing listens: a request would not be a ValueError
    with pytest.raises(ValueError, match="exactly one of wake_stream"):
        Subscription.create(root, "s", pattern="a/*")
    with pytest.raises(ValueError, match="pattern= .* and/or streams="):
        Subscription.create(root, "s", wake_stream="w")
    with pytest.raises(ValueError, match="1000 to 600000"):
        Subscription.create(root, "s", pattern="a/*", wake_stream="w", lease_ttl_ms=10)
    with pytest.raises(ValueError, match="not a URL"):
        Subscription.create(root, "s", streams=["http://x/y"], wake_stream="w")
    with pytest.raises(ValueError, match="root_url"):
        Subscription("v1/stream", "s")


def test_webhook_needs_a_webhook_enabled_server(space: Space) -> None:
    # The test server runs without `webhooks: true`: 400 INVALID_REQUEST.
    with pytest.raises(BadRequestError, match="INVALID_REQUEST"):
        Subscription.create(space.root, space.prefix + "-hook", pattern=space.path("x/*"),
                            webhook_url="https://example.com/hook")


def test_info_membership_and_delete(space: Space) -> None:
    old = space.create("orders/old")
    tail_at_creation = old.append({"n": 1})
    sub = space.subscription(lease_ttl_ms=2000, description="d")
    info = sub.info()
    assert isinstance(info, SubscriptionInfo)
    assert (info.id, info.type, info.pattern) == (sub.subscription_id, "pull-wake",
                                                  space.path("orders/*"))
    assert info.wake_stream == space.path("wake") and info.lease_ttl_ms == 2000
    assert info.status == "active" and info.description == "d" and info.created_at
    # §6.2: streams that match at creation are linked at their tail
    assert info.acked_offsets() == {space.path("orders/old"): tail_at_creation}
    assert info.streams[0].link_type == "glob"
    # a stream that appears later is linked from its beginning (server: acked_offset -1)
    space.create("orders/new").append({"n": 2})
    poll(lambda: space.path("orders/new") in sub.info().acked_offsets(),
         what="orders/new linked")
    assert sub.info().acked_offsets()[space.path("orders/new")] == "-1"
    # explicit membership, nested path (URL-encoded on removal)
    nested = space.path("other/deep/x")
    space.create("other/deep/x")
    sub.add_streams([nested])
    sub.add_streams([nested])  # idempotent
    links = {s.path: s.link_type for s in sub.info().streams}
    assert links[nested] == "explicit"
    # explicit wins over glob in responses; removing it leaves the glob link (§6.1)
    sub.add_streams([space.path("orders/old")])
    assert {s.path: s.link_type for s in sub.info().streams}[space.path("orders/old")] == \
        "explicit"
    sub.remove_stream(space.path("orders/old"))
    sub.remove_stream(nested)
    sub.remove_stream(nested)  # absent link: idempotent
    links = {s.path: s.link_type for s in sub.info().streams}
    assert nested not in links
    assert links[space.path("orders/old")] == "glob"
    sub.delete()
    with pytest.raises(SubscriptionNotFoundError) as info_err:
        sub.info()
    assert info_err.value.status == 404
    sub.delete()  # deleting again succeeds (204)
    with pytest.raises(SubscriptionNotFoundError):
        sub.claim("w")


def test_claim_read_ack_done(space: Space) -> None:
    sub = space.subscription(lease_ttl_ms=5000)
    assert sub.claim("w1") is None  # NO_PENDING_WORK
    a = space.create("orders/a")
    a.append({"order": 1})
    a.append({"order": 2})
    poll(lambda: [w for w in space.wakes() if w["subscription_id"] == sub.subscription_id],
         what="a wake event")
    claim = sub.claim("w1")
    assert isinstance(claim, Claim)
    try:
        assert [s.path for s in claim.pending] == [space.path("orders/a")]
        linked = claim.stream(space.path("orders/a"))
        assert linked.acked_offset == "-1" and linked.has_pending
        assert sub.claim("w2") is None  # ALREADY_CLAIMED
        with claim.read(space.path("orders/a")) as response:
            assert response.read_json() == [{"order": 1}, {"order": 2}]
            offset = response.offset
        assert offset >= linked.tail_offset
        # INVALID_OFFSET: -1, an unknown stream, an offset beyond the tail
        with pytest.raises(InvalidOffsetError, match="INVALID_OFFSET") as err:
            claim.ack({space.path("orders/a"): "-1"})
        assert err.value.status == 409
        with pytest.raises(InvalidOffsetError):
            claim.ack({space.path("orders/nope"): offset})
        with pytest.raises(InvalidOffsetError):
            claim.ack({space.path("orders/a"): "9" * 16 + offset[16:]})
        progress = claim.ack({space.path("orders/a"): offset})  # also a heartbeat
        assert progress == AckResult(ok=True, next_wake=False)
        assert claim.ack({}, done=True).next_wake is False
        assert claim.finished and not claim.fenced
    finally:
        if not claim.finished:
            claim.release()
    assert sub.info().acked_offsets()[space.path("orders/a")] == offset
    assert sub.claim("w1") is None  # nothing left
    with pytest.raises(RuntimeError, match="already ended"):
        claim.ack({})


def test_a_done_ack_says_when_work_is_left(space: Space) -> None:
    # PROTOCOL §7.2: the done ack's answer says whether the server wakes a worker again.
    # Claim.ack() and Wake.callback() both answer with an AckResult.
    sub = space.subscription(lease_ttl_ms=5000)
    a = space.create("orders/a")
    first = a.append({"n": 1})
    claim = poll(lambda: sub.claim("w1"), what="a claim")
    a.append({"n": 2})  # arrives after the claim's snapshot; the ack below stops before it
    result = claim.ack({space.path("orders/a"): first}, done=True)
    assert isinstance(result, AckResult)
    assert result.ok and result.next_wake and claim.next_wake is True
    # The old spelling (`if claim.ack(...):`, when ack() returned a bool) still works, loudly.
    with pytest.warns(DeprecationWarning, match="result.next_wake"):
        assert bool(result) is True
    again = poll(lambda: sub.claim("w2"), what="the rest of the work")
    with again:
        with again.read(space.path("orders/a")) as r:
            assert r.read_json() == [{"n": 2}]
        again.ack({space.path("orders/a"): r.offset})
    assert again.next_wake is False


def test_context_manager_acks_done_or_releases(space: Space) -> None:
    sub = space.subscription(lease_ttl_ms=5000)
    a = space.create("orders/a")
    a.append({"n": 1})
    claim = poll(lambda: sub.claim("w1"), what="a claim")
    with pytest.raises(ZeroDivisionError), claim:
        claim.read(space.path("orders/a")).read_json()
        1 / 0  # noqa: B018 - the job fails: the claim is released, work offered again
    assert claim.finished
    assert sub.info().acked_offsets()[space.path("orders/a")] == "-1"
    # released with work pending: a new wake (generation + 1) and another worker gets it
    again = poll(lambda: sub.claim("w2"), what="the work offered again")
    assert again.generation > claim.generation
    with again:
        with again.read(space.path("orders/a")) as r:
            assert r.read_json() == [{"n": 1}]
        again.ack({space.path("orders/a"): r.offset})
    assert again.finished and again.next_wake is False
    assert sub.info().acked_offsets()[space.path("orders/a")] == r.offset
    assert sub.claim("w1") is None


def test_heartbeat_keeps_a_long_jobs_lease(space: Space) -> None:
    sub = space.subscription(lease_ttl_ms=1000)
    space.create("orders/a").append({"n": 1})
    claim = poll(lambda: sub.claim("slow"), what="a claim")
    job_done = threading.Event()
    with claim:
        # A job of 2.5 lease periods; meanwhile the lease stays with this worker.
        job_done.wait(2.5)
        assert sub.claim("other") is None
        assert not claim.fenced
        with claim.read(space.path("orders/a")) as r:
            r.read_json()
        claim.ack({space.path("orders/a"): r.offset})
    assert claim.finished and not claim.fenced


def test_lease_expiry_fences_the_holder_and_rewakes(space: Space) -> None:
    sub = space.subscription(lease_ttl_ms=1000)
    space.create("orders/a").append({"n": 1})
    stalled = poll(lambda: sub.claim("stalled", heartbeat=False), what="a claim")
    gen = stalled.generation
    # §7.3: the lease expires, the holder is cleared and a new wake (generation + 1) written
    poll(lambda: [w for w in space.wakes() if w["generation"] > gen], timeout=10,
         what="a re-wake after lease expiry")
    taker = poll(lambda: sub.claim("taker"), what="another worker's claim")
    assert taker.generation > gen
    with pytest.raises(FencedError, match="lease .* was lost") as err:
        stalled.ack({space.path("orders/a"): "0000000000000000_0000000000000001"})
    assert err.value.code == "FENCED"
    assert stalled.fenced and stalled.finished
    with pytest.raises(FencedError):
        stalled.release()  # refused locally now, no request
    with taker:
        with taker.read(space.path("orders/a")) as r:
            assert r.read_json() == [{"n": 1}]
        taker.ack({space.path("orders/a"): r.offset})
    assert sub.claim("anyone") is None


def test_heartbeat_thread_notices_fencing(space: Space, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    sub = space.subscription(lease_ttl_ms=1000)
    space.create("orders/a").append({"n": 1})
    # Heartbeats every 2 s for a 1 s lease: the lease runs out before the first heartbeat.
    monkeypatch.setattr(_claim, "HEARTBEATS_PER_LEASE", 0.5)
    claim = poll(lambda: sub.claim("late"), what="a claim")
    # the expiry is noticed by the server; the next heartbeat gets FENCED
    assert claim.wait_fenced(timeout=10), "the heartbeat thread never saw the fencing"
    assert claim.fenced
    with pytest.raises(FencedError), claim:
        pass  # a normal exit acks done: refused, the lease is gone
    other = poll(lambda: sub.claim("other"), what="the work for another worker")
    other.release()


def test_ack_json_body_shape(space: Space) -> None:
    # acks may be given for several streams at once
    sub = space.subscription(lease_ttl_ms=5000)
    a, b = space.create("orders/a"), space.create("orders/b")
    a.append(dumps({"a": 1}))
    b.append(dumps({"b": 1}))
    poll(lambda: len({w["stream"] for w in space.wakes()}) >= 1, what="wakes")
    # both links are there once both appends were answered; claim until both are pending
    claim = poll(lambda: sub.claim("w"), what="a claim")
    with claim:
        offsets = {}
        for linked in claim.pending:
            with claim.read(linked.path) as r:
                r.read_json()
                offsets[linked.path] = r.offset
        claim.ack(offsets)
    acked = sub.info().acked_offsets()
    for path, offset in offsets.items():
        assert acked[path] == offset
    assert JSON


def test_a_dropped_claim_stops_heartbeating_and_its_lease_expires(space: Space) -> None:
    sub = space.subscription(lease_ttl_ms=1000)
    space.create("orders/a").append({"n": 1})
    claim = poll(lambda: sub.claim("forgetful"), what="a claim")
    gen = claim.generation
    del claim  # neither acked nor released: the heartbeat must not keep the lease forever
    gc.collect()
    poll(lambda: [w for w in space.wakes() if w["generation"] > gen], timeout=10,
         what="a re-wake after the dropped claim's lease expired")
    again = poll(lambda: sub.claim("careful"), what="the work offered again")
    again.release()


def test_claims_needs_the_wake_stream(space: Space) -> None:
    sub = Subscription.create(space.root, space.prefix + "-nowake",
                              pattern=space.path("orders/*"), wake_stream=space.path("none"))
    with pytest.raises(StreamNotFoundError, match="wake stream .* does not exist"):
        next(sub.claims("w", stop_after=5))
