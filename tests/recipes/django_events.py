"""Recipe: a Django view that appends events to a durable stream.

In a real project this is ``events/stream.py`` (the producer) plus a view in
``events/views.py`` and a route in ``urls.py``; here all three share one module. The stream
URL comes from ``settings.EVENTS_STREAM_URL``.

The producer is created on first use in each process (so each gunicorn/uwsgi worker gets its
own, also with ``--preload``) and shared by all request threads. A producer that stopped
for good (the stream did not exist yet, or was deleted) is replaced on the next event, so the
view recovers by itself as soon as the stream exists; what the stopped one could not deliver
is logged by ``_report``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from durable_streams import BufferFullError, DurableStreamError, IdempotentProducer

log = logging.getLogger(__name__)

_lock = threading.Lock()
_producer: IdempotentProducer | None = None
_producer_pid = 0


def _report(err: DurableStreamError) -> None:
    # Called on the producer's callback thread with the events that could not be delivered.
    log.error("%d event(s) were not delivered to %s: %s", len(err.undelivered),
              settings.EVENTS_STREAM_URL, err)


def events() -> IdempotentProducer:
    """The process-wide producer, created on first use in each (worker) process."""
    global _producer, _producer_pid
    producer = _producer
    if producer is not None and _producer_pid == os.getpid():
        return producer
    with _lock:
        if _producer is None or _producer_pid != os.getpid():
            _producer = IdempotentProducer(
                settings.EVENTS_STREAM_URL,
                producer_id=f"django-{socket.gethostname()}-{os.getpid()}",
                auto_claim=True,
                content_type="application/json",
                max_block_ms=250,
                on_error=_report,
            )
            _producer_pid = os.getpid()
        return _producer


def _discard(stopped: IdempotentProducer) -> None:
    global _producer
    with _lock:
        if _producer is stopped:
            _producer = None
    with contextlib.suppress(DurableStreamError, TimeoutError):
        stopped.close(timeout=0)


def append_event(data: str) -> None:
    """Append one event (returns at once); a stopped producer is replaced once."""
    producer = events()
    try:
        producer.append(data)
    except BufferFullError:
        raise
    except DurableStreamError:  # stopped for good (stream missing, deleted, fenced...)
        _discard(producer)
        events().append(data)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@csrf_exempt  # an API endpoint called by other services; protect it with your own auth
@require_POST
def track_event(request: HttpRequest) -> JsonResponse:
    try:
        event = json.loads(request.body)
    except ValueError:
        return JsonResponse({"error": "expected JSON"}, status=400)
    if not isinstance(event, dict):
        return JsonResponse({"error": "expected a JSON object"}, status=400)
    event["user"] = getattr(getattr(request, "user", None), "username", None)
    try:
        append_event(json.dumps(event))  # returns at once; sent in the background
    except DurableStreamError:
        return JsonResponse({"error": "event stream unavailable"}, status=503)
    return JsonResponse({"status": "accepted"}, status=202)


urlpatterns = [path("events", track_event)]
