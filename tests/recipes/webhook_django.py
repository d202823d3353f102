"""Recipe: receive Durable Streams webhook wakes in a Django view (PROTOCOL §7.1).

In a real project this is a view in ``hooks/views.py`` plus a route in ``urls.py``; here
both share one module. The server's stream root comes from ``settings.DS_STREAM_ROOT``.

The view verifies the RAW body (``request.body``) before parsing anything, refuses what
does not verify with 401, does its quick work and answers ``{"done": true}``, so the
server acks the tails of the wake's snapshot. Answer fast: the server waits for the answer
(it has no timeout of its own) and retries any non-2xx answer with backoff (1 s to 60 s).
For longer work, answer 202 and call back from a worker (see webhook_flask.py's async
endpoint) instead.

Replay protection: the verifier refuses timestamps more than five minutes away; wake ids
handled within that window are remembered (here in memory, per process; with several
processes use your database or cache, e.g. ``cache.add(wake_id, 1, timeout=600)``).
"""

from __future__ import annotations

import threading
import time

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from durable_streams import DurableStreamError, Wake, WebhookSignatureError, WebhookVerifier

_lock = threading.Lock()
_verifier: WebhookVerifier | None = None
_seen: dict[str, float] = {}  # wake id -> when it was handled (the replay window)
REPLAY_WINDOW_S = 600.0

# Stand-ins for your models: the processed items and, per stream, the offset processed up
# to (saved with the items, so data read past the snapshot's tail is not processed twice).
processed: list[dict[str, object]] = []
cursors: dict[str, str] = {}


def verifier() -> WebhookVerifier:
    """One verifier per process; it caches the server's signing keys (thread-safe)."""
    global _verifier
    with _lock:
        if _verifier is None:
            _verifier = WebhookVerifier.for_stream_root(settings.DS_STREAM_ROOT)
        return _verifier


def _first_time(wake_id: str) -> bool:
    now = time.monotonic()
    with _lock:
        for old in [k for k, t in _seen.items() if now - t > REPLAY_WINDOW_S]:
            del _seen[old]
        if wake_id in _seen:
            return False
        _seen[wake_id] = now
        return True


def _work(wake: Wake) -> None:
    for linked in wake.pending:
        with _lock:
            start = max(linked.acked_offset, cursors.get(linked.path, "-1"))
        with wake.read(linked.path, offset=start) as response:
            items = response.read_json()
            with _lock:
                processed.extend({"stream": linked.path, "item": item} for item in items)
                cursors[linked.path] = response.offset


@csrf_exempt  # the signature is the authentication; there is no browser session here
@require_POST
def durable_streams_webhook(request: HttpRequest) -> HttpResponse:
    try:
        wake = verifier().verify(request.body, request.headers.get("Webhook-Signature"))
    except WebhookSignatureError as exc:
        return JsonResponse({"error": exc.reason}, status=401)
    if _first_time(wake.wake_id):
        try:
            _work(wake)
        except DurableStreamError:
            with _lock:
                _seen.pop(wake.wake_id, None)  # let the server's retry do the work
            return JsonResponse({"error": "try again"}, status=503)
    return HttpResponse(wake.reply_done(), content_type=Wake.DONE_CONTENT_TYPE)


urlpatterns = [path("webhooks/durable-streams", durable_streams_webhook)]
