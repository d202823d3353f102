"""Helpers shared by the producer test modules (the fixtures live in conftest.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from durable_streams import DurableStreamError, RetryPolicy

JSON = "application/json"
TEXT = "text/plain"
#: Fast retries so fault tests stay quick; the producer retries until delivery_timeout_ms.
FAST = RetryPolicy(initial_delay_ms=2, max_delay_ms=50)


def read_raw(url: str) -> bytes:
    response = requests.get(url, params={"offset": "-1"}, timeout=30)
    response.raise_for_status()
    return response.content


def read_json(url: str) -> list[Any]:
    body = json.loads(read_raw(url))
    assert isinstance(body, list)
    return body


def raw_post(url: str, body: bytes, headers: dict[str, str]) -> requests.Response:
    return requests.post(url, data=body, headers=headers, timeout=10)


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition the producer exposes no event for (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def producer_threads(producer_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t.name.startswith(f"ds-producer-{producer_id}-") and t.is_alive()]


class Errors:
    """An on_error callback that records what it gets and signals the first arrival."""

    def __init__(self) -> None:
        self.items: list[DurableStreamError] = []
        self.event = threading.Event()
        self.threads: set[str] = set()

    def __call__(self, err: DurableStreamError) -> None:
        self.threads.add(threading.current_thread().name)
        self.items.append(err)
        self.event.set()

    @property
    def undelivered(self) -> list[bytes]:
        return [m for e in self.items for m in e.undelivered]
