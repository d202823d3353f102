"""Recipe: receive Durable Streams webhook wakes in Flask (PROTOCOL §7.1).

Two endpoints, pick one:

- ``POST /webhooks/durable-streams`` does quick work inside the request and answers
  ``{"done": true}``: the server then acks the tails of the wake's snapshot.
- ``POST /webhooks/durable-streams/async`` answers ``202`` at once and hands the wake to a
  worker thread, which reads, works and calls back with exactly the offsets it processed.

Both verify the RAW body before parsing anything, refuse what does not verify with 401,
and answer fast: the server waits for the answer (it has no timeout of its own) and retries
any non-2xx answer, with backoff from 1 s to 60 s, until one succeeds.

Replay protection: the verifier refuses timestamps more than ``tolerance_s`` (5 min) away,
and ``RecentWakes`` remembers wake ids handled in that window, so a captured delivery
replayed within it does no work twice. With several processes (gunicorn workers), keep
the ids and the cursors in your database instead of in memory.

Run:  DS_STREAM_ROOT=https://streams.example.com/v1/stream gunicorn webhook_flask:app
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time

from flask import Flask, Response, jsonify, request

from durable_streams import (
    DurableStreamError,
    FencedError,
    Wake,
    WebhookSignatureError,
    WebhookVerifier,
)

log = logging.getLogger(__name__)
app = Flask(__name__)

_lock = threading.Lock()
_verifier: WebhookVerifier | None = None


def verifier() -> WebhookVerifier:
    """One verifier per process: it caches the server's keys (thread-safe)."""
    global _verifier
    with _lock:
        if _verifier is None:
            _verifier = WebhookVerifier.for_stream_root(os.environ["DS_STREAM_ROOT"])
        return _verifier


class RecentWakes:
    """Wake ids seen within the replay window. ``first_time`` claims an id atomically;
    ``forget`` releases it when the work failed, so the server's retry is not skipped."""

    def __init__(self, ttl_s: float = 600.0) -> None:
        self.ttl_s = ttl_s
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def first_time(self, wake_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for old in [k for k, t in self._seen.items() if now - t > self.ttl_s]:
                del self._seen[old]
            if wake_id in self._seen:
                return False
            self._seen[wake_id] = now
            return True

    def forget(self, wake_id: str) -> None:
        with self._lock:
            self._seen.pop(wake_id, None)


recent = RecentWakes()

# Stand-ins for your database: what was processed, and per stream the offset up to which
# it was processed (store it in the same transaction as the work's effects).
processed: list[dict[str, object]] = []
cursors: dict[str, str] = {}
_db_lock = threading.Lock()


def work(wake: Wake) -> dict[str, str]:
    """Process every pending stream of ``wake``; return ``{path: offset processed up to}``.

    A read may return data appended after the wake's snapshot; the saved cursor makes the
    next wake start after it, so nothing is processed twice (offsets compare as strings,
    PROTOCOL §8, and ``"-1"`` sorts first)."""
    done: dict[str, str] = {}
    for linked in wake.pending:
        with _db_lock:
            start = max(linked.acked_offset, cursors.get(linked.path, "-1"))
        with wake.read(linked.path, offset=start) as response:
            items = response.read_json()
            with _db_lock:
                processed.extend({"stream": linked.path, "item": item} for item in items)
                cursors[linked.path] = response.offset
            done[linked.path] = response.offset
    return done


def _verified() -> Wake | Response:
    try:
        # The raw bytes, exactly as sent: verify BEFORE parsing (re-encoded JSON differs).
        return verifier().verify(request.get_data(cache=False),
                                 request.headers.get("Webhook-Signature"))
    except WebhookSignatureError as exc:
        log.warning("refused a webhook delivery: %s", exc.reason)
        return Response(json.dumps({"error": exc.reason}), status=401,
                        content_type="application/json")


@app.post("/webhooks/durable-streams")
def webhook_sync() -> Response:
    wake = _verified()
    if isinstance(wake, Response):
        return wake
    if recent.first_time(wake.wake_id):
        try:
            work(wake)
        except DurableStreamError:
            recent.forget(wake.wake_id)
            log.exception("webhook work failed; the server will retry")
            return Response(status=503)
    # {"done": true}: the server acks the snapshot's tails (also for a replayed wake id:
    # its work is done already).
    return Response(wake.reply_done(), status=200, content_type=Wake.DONE_CONTENT_TYPE)


# -- the asynchronous variant: a worker thread calls back ---------------------------------
_wakes: queue.Queue[Wake] = queue.Queue(maxsize=1000)
_worker: threading.Thread | None = None


def _work_forever() -> None:
    while True:
        wake = _wakes.get()
        try:
            acks = work(wake)
            # Ack exactly what was read; done ends the wake. Call back within the lease
            # (30 s by default), or send progress with done=False to extend it.
            wake.callback(acks, done=True)
        except FencedError:
            log.info("wake %s was superseded; a newer wake carries the work", wake.wake_id)
        except DurableStreamError:
            recent.forget(wake.wake_id)
            log.exception("webhook work failed; the wake is redelivered when its lease ends")
        finally:
            _wakes.task_done()


def _ensure_worker() -> None:
    global _worker
    with _lock:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_work_forever, name="webhook-worker",
                                       daemon=True)
            _worker.start()


@app.post("/webhooks/durable-streams/async")
def webhook_async() -> Response:
    wake = _verified()
    if isinstance(wake, Response):
        return wake
    if recent.first_time(wake.wake_id):
        _ensure_worker()
        try:
            _wakes.put_nowait(wake)
        except queue.Full:
            recent.forget(wake.wake_id)
            return Response(status=503)  # the server retries later
    # Not done: the worker calls back. Answer now, whatever the work takes.
    return jsonify(accepted=True), 202  # type: ignore[return-value]
