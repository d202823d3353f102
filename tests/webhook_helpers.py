"""Test helpers for webhook subscriptions (PROTOCOL §6.2, §6.3, §7.1).

Subscriptions are created through the library's ``Subscription.create(..., webhook_url=...)``;
reads of their state are raw HTTP, so the tests check the server, not our parsing.
``Receiver`` is a tiny loopback HTTP endpoint that records every delivery and answers
with whatever the test's ``respond`` function returns.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests

from durable_streams import Subscription

JSON = "application/json"


def create_webhook_subscription(root: str, sub_id: str, *, webhook_url: str,
                                streams: list[str] | None = None, pattern: str | None = None,
                                lease_ttl_ms: int | None = None) -> dict[str, Any]:
    """A webhook subscription (§6.2) through the library's ``Subscription.create``;
    returns the server's document."""
    with Subscription.create(root, sub_id, webhook_url=webhook_url, streams=streams,
                             pattern=pattern, lease_ttl_ms=lease_ttl_ms) as sub:
        return dict(sub.info().raw)


def subscription_info(root: str, sub_id: str) -> dict[str, Any]:
    """``GET {root}/__ds/subscriptions/{id}`` (§6.3)."""
    response = requests.get(f"{root}/__ds/subscriptions/{sub_id}", timeout=10)
    response.raise_for_status()
    doc: dict[str, Any] = response.json()
    return doc


def delete_subscription(root: str, sub_id: str) -> None:
    requests.delete(f"{root}/__ds/subscriptions/{sub_id}", timeout=10)


def acked_offsets(root: str, sub_id: str) -> dict[str, str]:
    return {s["path"]: s["acked_offset"] for s in subscription_info(root, sub_id)["streams"]}


def create_stream(root: str, path: str, content_type: str = JSON) -> str:
    url = f"{root}/{path}"
    response = requests.put(url, headers={"Content-Type": content_type}, timeout=10)
    assert response.status_code in (200, 201), response.text
    return url


def append(url: str, data: str, content_type: str = JSON) -> str:
    """Append and return the new tail offset."""
    response = requests.post(url, data=data.encode(), headers={"Content-Type": content_type},
                             timeout=10)
    assert response.status_code in (200, 204), response.text
    return response.headers["Stream-Next-Offset"]


def wait_for(predicate: Callable[[], Any], *, timeout: float = 10.0,
             interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Delivery:
    body: bytes
    signature: str | None
    at: float  # monotonic time of arrival


Respond = Callable[[Delivery], "tuple[int, bytes]"]


class Receiver:
    """A loopback webhook endpoint: records deliveries, answers with ``respond(delivery)``
    (default: 200 with an empty JSON object, i.e. "not done")."""

    def __init__(self, respond: Respond | None = None) -> None:
        self.respond: Respond = respond or (lambda d: (200, b"{}"))
        self.deliveries: queue.Queue[Delivery] = queue.Queue()
        self.all: list[Delivery] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                delivery = Delivery(self.rfile.read(length),
                                    self.headers.get("Webhook-Signature"), time.monotonic())
                outer.all.append(delivery)
                try:
                    status, body = outer.respond(delivery)
                except Exception:  # a failing test callback: answer 500, keep serving
                    status, body = 500, b"{}"
                self.send_response(status)
                self.send_header("Content-Type", JSON)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                outer.deliveries.put(delivery)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hook"
        self._thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                        daemon=True)
        self._thread.start()

    def next(self, timeout: float = 10.0) -> Delivery:
        try:
            return self.deliveries.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no webhook delivery within {timeout}s") from None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def done_reply(_: Delivery) -> tuple[int, bytes]:
    return 200, json.dumps({"done": True}).encode()
