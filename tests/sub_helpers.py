"""Helpers shared by the subscription and worker tests: a per-test namespace under the
reference server's subscription root (``/v1/stream``), and polling with a deadline."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from durable_streams import DurableStream, Subscription, stream
from durable_streams.testing import ReferenceServer

JSON = "application/json"
T = TypeVar("T")


def root_of(server: ReferenceServer) -> str:
    """Subscriptions on the reference server see only streams under /v1/stream/."""
    return f"{server.url}/v1/stream"


@dataclass
class Space:
    """A unique prefix on the subscription root: ``{prefix}/orders/a``, ``{prefix}/wake``."""

    root: str
    prefix: str = field(default_factory=lambda: "t" + uuid.uuid4().hex[:12])
    subs: list[Subscription] = field(default_factory=list)

    def path(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def url(self, name: str) -> str:
        return f"{self.root}/{self.path(name)}"

    def create(self, name: str, content_type: str = JSON) -> DurableStream:
        return DurableStream.create(self.url(name), content_type=content_type)

    def subscription(self, name: str = "sub", **kw: Any) -> Subscription:
        kw.setdefault("wake_stream", self.path("wake"))
        if "pattern" not in kw and "streams" not in kw:
            kw["pattern"] = self.path("orders/*")
        if kw.get("wake_stream") is not None:
            DurableStream.create(f"{self.root}/{kw['wake_stream']}", content_type=JSON).close()
        sub = Subscription.create(self.root, f"{self.prefix}-{name}", **kw)
        self.subs.append(sub)
        return sub

    def wakes(self) -> list[dict[str, Any]]:
        with stream(self.url("wake")) as r:
            return r.read_json()


def poll(fn: Callable[[], T | None], *, timeout: float = 10.0, what: str = "condition",
         interval: float = 0.02) -> T:
    """Call ``fn`` until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)  # polling the server with a deadline, not synchronisation


def items(url: str, offset: str = "-1") -> list[Any]:
    with stream(url, offset=offset) as r:
        return r.read_json()


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
