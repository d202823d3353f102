"""Shared fixtures. The reference server comes from ``durable_streams.testing`` (the same
pytest plugin users get): ``durable_streams_server`` (session-wide) and
``durable_stream_url`` (a fresh stream URL)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from producer_helpers import FAST

from durable_streams import DurableStream, IdempotentProducer
from durable_streams.testing import ReferenceServer

settings.register_profile(
    "ci", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def server(durable_streams_server: ReferenceServer) -> Iterator[ReferenceServer]:
    """The session's reference server, with injected faults cleared after each test."""
    yield durable_streams_server
    if durable_streams_server.running:
        durable_streams_server.clear_faults()


@pytest.fixture
def url(server: ReferenceServer) -> str:
    """A fresh (not yet created) stream URL."""
    return server.stream_url()


@pytest.fixture
def json_stream(url: str) -> Iterator[DurableStream]:
    with DurableStream.create(url, content_type="application/json") as handle:
        yield handle


@pytest.fixture
def text_stream(url: str) -> Iterator[DurableStream]:
    with DurableStream.create(url, content_type="text/plain") as handle:
        yield handle


@pytest.fixture
def producers() -> Iterator[list[IdempotentProducer]]:
    """Producers to close quietly after the test (so a failing test leaves no threads)."""
    made: list[IdempotentProducer] = []
    yield made
    for p in made:
        with contextlib.suppress(Exception):
            p.close(timeout=5)


@pytest.fixture
def make(producers: list[IdempotentProducer]) -> Callable[..., IdempotentProducer]:
    def factory(stream: DurableStream | str, producer_id: str = "p", **kw: Any
                ) -> IdempotentProducer:
        kw.setdefault("retry", FAST)
        p = IdempotentProducer(stream, producer_id, **kw)
        producers.append(p)
        return p

    return factory
