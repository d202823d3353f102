"""The producer at its edges (issue 16), against the real reference server: no message and
no exception of the application's code stops it, ``maybe_stored`` tells the truth, sender
threads start as work needs them, ``close(timeout=T)`` returns within T.

Streams are read back with plain ``requests`` (producer_helpers), never the library's reader.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
from producer_helpers import JSON, Errors, producer_threads, read_raw, wait_until

from durable_streams import (
    DeliveryError,
    DurableStream,
    IdempotentProducer,
)
from durable_streams.testing import ReferenceServer

pytestmark = pytest.mark.timeout(60)

DEEP = "[" * 3000 + "]" * 3000


def test_deep_json_is_sent_and_the_producer_goes_on(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    # PROTOCOL.md §7.1: a JSON-mode append is one JSON value per message; 3000 levels is
    # valid JSON (Python's json raises RecursionError on it).
    producer = make(json_stream, content_type=JSON)
    producer.append(json.dumps("before"))
    producer.append(DEEP)
    producer.append(json.dumps("after"))
    producer.flush(timeout=20)
    producer.append(json.dumps("later"))  # the producer still works
    producer.flush(timeout=20)
    raw = read_raw(json_stream.url)
    assert raw.startswith(b'["before",' + b"[" * 3000)
    assert raw.endswith(b"]" * 3000 + b',"after","later"]')
    assert producer.stats().messages_failed == 0


def test_deep_invalid_json_fails_alone(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    errors = Errors()
    producer = make(json_stream, content_type=JSON, on_error=errors, linger_ms=50)
    bad = "[" * 3000 + "]" * 2999
    for m in (json.dumps("a"), bad, json.dumps("b")):
        producer.append(m)
    with pytest.raises(DeliveryError) as info:
        producer.flush(timeout=20)
    assert info.value.undelivered == (bad.encode(),)
    assert "unterminated array" in str(info.value)
    producer.append(json.dumps("c"))
    producer.flush(timeout=20)
    assert json.loads(read_raw(json_stream.url)) == ["a", "b", "c"]


def _raise_on_post(counter: list[int], times: int) -> Callable[..., Any]:
    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        if response.request.method == "POST" and counter[0] < times:
            counter[0] += 1
            raise RuntimeError("the application's response hook failed")
        return response
    return hook


def test_exception_after_the_send_is_maybe_stored_and_the_producer_goes_on(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    """A requests response hook of the application raises after the POST was answered:
    the batch IS stored, so it must be reported maybe_stored=True (never "certainly not
    stored"); later appends work."""
    counter = [0]
    session = requests.Session()
    session.hooks["response"].append(_raise_on_post(counter, 1))
    errors = Errors()
    producer = make(json_stream, content_type=JSON, session=session, on_error=errors)
    producer.append(json.dumps("first"))
    with pytest.raises(DeliveryError) as info:
        producer.flush(timeout=20)
    err = info.value.errors[0]
    assert err.maybe_stored is True
    assert "RuntimeError" in str(err) and "may have been stored" in str(err)
    assert err.undelivered == (b'"first"',)
    producer.append(json.dumps("second"))
    producer.flush(timeout=20)
    # the hook's batch really was stored: maybe_stored=False would have been a lie
    assert json.loads(read_raw(json_stream.url)) == ["first", "second"]
    assert errors.items and errors.items[0].maybe_stored


def test_exception_before_the_send_is_not_stored(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    """A header callable raising before anything is sent: that batch alone fails, certainly
    not stored; the next batch goes out."""
    calls = [0]

    def token() -> str:
        calls[0] += 1
        if calls[0] == 1:
            raise LookupError("token store unavailable")
        return "t"

    producer = make(json_stream, content_type=JSON, headers={"X-Token": token})
    producer.append(json.dumps("first"))
    with pytest.raises(DeliveryError) as info:
        producer.flush(timeout=20)
    err = info.value.errors[0]
    assert err.maybe_stored is False and "LookupError" in str(err)
    producer.append(json.dumps("second"))
    producer.flush(timeout=20)
    assert json.loads(read_raw(json_stream.url)) == ["second"]


def test_sender_threads_start_as_work_needs_them(
        json_stream: DurableStream, make: Callable[..., IdempotentProducer]) -> None:
    producer = make(json_stream, "lazy", content_type=JSON, max_in_flight=64)
    assert producer_threads("lazy") == []  # nothing before the first append
    for i in range(20):
        producer.append(json.dumps(i))
        producer.flush(timeout=20)  # one batch at a time: one sender is enough
    # one busy sender plus at most a spare, not 64
    assert 1 <= len(producer_threads("lazy")) <= 3
    assert json.loads(read_raw(json_stream.url)) == list(range(20))


def test_close_with_a_timeout_returns_within_it(server: ReferenceServer, url: str,
                                                make: Callable[..., IdempotentProducer]
                                                ) -> None:
    DurableStream.create(url, content_type=JSON).close()
    # every POST hangs for 3 s: close(timeout=1) must return within ~1 s (it was T + 2 s)
    server.inject_fault(url, delayMs=3_000, count=100, method="POST")
    errors = Errors()
    producer = make(url, content_type=JSON, on_error=errors, request_timeout=(2.0, 30.0))
    producer.append(json.dumps("x"))
    start = time.monotonic()
    with pytest.raises((TimeoutError, DeliveryError)):
        producer.close(timeout=1.0)
    elapsed = time.monotonic() - start
    assert elapsed < 1.6, f"close(timeout=1.0) took {elapsed:.2f}s"
    # the request on the wire finishes on its own thread: the message ends acknowledged
    # (the delayed POST is stored) or reported, never neither
    assert wait_until(lambda: producer.stats().messages_acked + len(errors.undelivered) == 1,
                      15)


def test_close_timeout_zero_is_bounded(json_stream: DurableStream,
                                       make: Callable[..., IdempotentProducer]) -> None:
    producer = make(json_stream, content_type=JSON)
    producer.append(json.dumps("x"))
    done = threading.Event()
    start = time.monotonic()
    try:
        producer.close(timeout=0)
    except (TimeoutError, DeliveryError):
        pass
    finally:
        done.set()
    assert time.monotonic() - start < 0.6
