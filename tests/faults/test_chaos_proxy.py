"""The chaos proxy itself: transparent without faults, and each fault does what it says."""

from __future__ import annotations

import json
import time

import pytest
import requests

import durable_streams
from durable_streams import DurableStream

from .chaos_proxy import ChaosProxy, FaultRates
from .harness import head_offset, read_json_stream
from .scenarios import JSON, new_json_stream

pytestmark = pytest.mark.timeout(60)


def _producer_post(url: str, seq: int, body: bytes, timeout: float = 5) -> requests.Response:
    return requests.post(url, data=body, timeout=timeout, headers={
        "Content-Type": JSON, "Producer-Id": "proxy-test", "Producer-Epoch": "0",
        "Producer-Seq": str(seq)})


def test_transparent_without_faults(origin: str) -> None:
    """Create, append, HEAD, catch-up, long-poll and SSE reads, delete: all through it."""
    with ChaosProxy(origin, methods=("GET", "HEAD", "POST", "PUT", "DELETE")) as proxy:
        url = f"{proxy.url}/transparent-{time.monotonic_ns()}"
        with DurableStream.create(url, content_type=JSON) as handle:
            for i in range(50):
                handle.append(json.dumps({"i": i, "pad": "x" * 500}))
            assert handle.head().offset == head_offset(origin + url[len(proxy.url):])
            items = durable_streams.stream(url).read_json()
            assert [item["i"] for item in items] == list(range(50))
            for mode in ("long-poll", "sse"):
                with durable_streams.stream(url, offset="-1", live=mode,
                                            stop_at_up_to_date=True) as response:
                    got = list(response.iter_json())
                assert [item["i"] for item in got] == list(range(50)), mode
            handle.delete()
        stats = proxy.stats()
    assert stats["relayed"] >= 50 + 4
    assert proxy.faults_injected() == 0


@pytest.mark.parametrize(("fault", "committed"), [
    ("drop_before", False), ("drop_after", True), ("reset_mid", True)])
def test_connection_faults(origin: str, fault: str, committed: bool) -> None:
    """The client always gets a transport error; only drop_before leaves the server alone."""
    url = new_json_stream(origin, fault)
    before = head_offset(url)
    with ChaosProxy(origin, FaultRates(**{fault: 1.0}), seed=3) as proxy:
        for seq in range(5):
            with pytest.raises(requests.exceptions.RequestException):
                _producer_post(proxy.url + url[len(origin):], seq, b'["x"]')
            if not committed:
                break
        assert proxy.stats()[fault] == (5 if committed else 1)
    items, _ = read_json_stream(url)
    if committed:
        assert items == ["x"] * 5  # the server stored every request the client never heard
    else:
        assert items == [] and head_offset(url) == before


def test_delay_and_timeout(origin: str) -> None:
    """A delayed answer arrives late; past the client's read timeout it is a timeout, and
    the server has committed the request all the same."""
    url = new_json_stream(origin, "delay")
    rates = FaultRates(delay=1.0, delay_min=0.3, delay_max=0.3)
    with ChaosProxy(origin, rates) as proxy:
        target = proxy.url + url[len(origin):]
        start = time.monotonic()
        assert _producer_post(target, 0, b'["a"]').status_code == 200
        assert time.monotonic() - start >= 0.3
        with pytest.raises(requests.exceptions.ReadTimeout):
            _producer_post(target, 1, b'["b"]', timeout=0.1)
        assert proxy.stats()["delay"] == 2
    assert read_json_stream(url)[0] == ["a", "b"]


def test_faults_apply_only_to_chosen_methods_and_are_seeded(origin: str) -> None:
    url = new_json_stream(origin, "seeded")
    path = url[len(origin):]
    draws: list[list[bool]] = []
    for _ in range(2):
        with ChaosProxy(origin, FaultRates(drop_before=0.5), seed=42) as proxy:
            outcome = []
            for _ in range(30):
                assert requests.head(proxy.url + path, timeout=5).status_code == 200
                try:
                    requests.post(proxy.url + path, data=b"[1]", timeout=5,
                                  headers={"Content-Type": JSON})
                    outcome.append(True)
                except requests.exceptions.ConnectionError:
                    outcome.append(False)
            draws.append(outcome)
    assert draws[0] == draws[1]
    assert 5 < draws[0].count(False) < 25
