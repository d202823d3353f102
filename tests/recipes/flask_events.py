"""Recipe: a Flask app that appends events to a durable stream.

One producer per process, shared by every request thread (``IdempotentProducer`` is
thread-safe), created on first use. Under gunicorn each worker process therefore gets its own
producer, even with ``--preload``: a producer created in the master before the fork would be
unusable in the workers (its sender threads do not survive a fork, and its sequence numbers
belong to the master), so the check below compares the process id and builds a new one.

A producer stops for good when the server refuses its appends (for example the stream does
not exist yet, or was deleted): ``append()`` then raises. ``append_event`` replaces a stopped
producer and tries once more, so the app recovers by itself as soon as the stream exists; the
events the stopped producer could not deliver are reported to ``_report`` (logged).

Run:  EVENTS_STREAM_URL=https://streams.example.com/v1/stream/events gunicorn flask_events:app
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading

from flask import Flask, Response, jsonify, request

from durable_streams import BufferFullError, DurableStreamError, IdempotentProducer

log = logging.getLogger(__name__)

EVENTS_URL = os.environ.get("EVENTS_STREAM_URL", "http://127.0.0.1:4437/v1/stream/events")

_lock = threading.Lock()
_producer: IdempotentProducer | None = None
_producer_pid = 0


def _report(err: DurableStreamError) -> None:
    # Called on the producer's callback thread with the events that could not be delivered.
    log.error("%d event(s) were not delivered to %s: %s", len(err.undelivered), EVENTS_URL, err)


def events() -> IdempotentProducer:
    """The process-wide producer, created on first use in each (worker) process."""
    global _producer, _producer_pid
    producer = _producer
    if producer is not None and _producer_pid == os.getpid():
        return producer
    with _lock:
        if _producer is None or _producer_pid != os.getpid():
            _producer = IdempotentProducer(
                EVENTS_URL,
                # Unique among live processes; auto_claim keeps a restarted worker that
                # happens to get the same pid from being taken for a duplicate.
                producer_id=f"web-{socket.gethostname()}-{os.getpid()}",
                auto_claim=True,
                content_type="application/json",
                max_block_ms=250,  # a full buffer (server down for long) answers 503 fast
                on_error=_report,
            )
            _producer_pid = os.getpid()
        return _producer


def _discard(stopped: IdempotentProducer) -> None:
    """Forget a producer that stopped for good; the next ``events()`` builds a new one."""
    global _producer
    with _lock:
        if _producer is stopped:
            _producer = None
    with contextlib.suppress(DurableStreamError, TimeoutError):
        stopped.close(timeout=0)  # its undelivered events were already passed to _report


def append_event(data: str) -> None:
    """Append one event (returns at once). Raises ``DurableStreamError`` if it is refused:
    ``BufferFullError`` while the server is down for long, or the refusal of a new producer."""
    producer = events()
    try:
        producer.append(data)
    except BufferFullError:
        raise
    except DurableStreamError:  # stopped for good (stream missing, deleted, fenced...)
        _discard(producer)
        events().append(data)  # a new producer: succeeds once the stream is back


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would stay locked forever in the child.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

app = Flask(__name__)


@app.post("/events")
def post_event() -> tuple[Response, int]:
    event = request.get_json(silent=True)
    if not isinstance(event, dict):
        return jsonify(error="expected a JSON object"), 400
    try:
        append_event(json.dumps(event))  # returns at once; sent in the background
    except DurableStreamError as exc:  # buffer full (the server is down for long)
        log.warning("event refused: %s", exc)
        return jsonify(error="event stream unavailable, retry later"), 503
    return jsonify(status="accepted"), 202
