"""The webhook recipes (tests/recipes/webhook_*.py) served by the real Flask (werkzeug) and
Django (runserver's WSGIServer) servers, woken by the reference server (PROTOCOL §7.1)."""

from __future__ import annotations

import importlib
import io
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import requests

pytest.importorskip("cryptography")

from webhook_helpers import (  # noqa: E402
    acked_offsets,
    append,
    create_stream,
    create_webhook_subscription,
    delete_subscription,
    wait_for,
)

from durable_streams.testing import ReferenceServer  # noqa: E402

RECIPES = Path(__file__).with_name("recipes")


@pytest.fixture
def root(durable_streams_webhook_server: ReferenceServer) -> str:
    return durable_streams_webhook_server.stream_root


@pytest.fixture
def prefix() -> str:
    return f"rcp-{uuid.uuid4().hex[:10]}"


class Recorder:
    """WSGI middleware: keeps each request's raw body, signature header and status."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.calls: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]
                 ) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        call = {"path": environ.get("PATH_INFO"), "body": body,
                "signature": environ.get("HTTP_WEBHOOK_SIGNATURE")}
        self.calls.append(call)

        def recording_start(status: str, headers: Any, exc_info: Any = None) -> Any:
            call["status"] = int(status.split()[0])
            return start_response(status, headers, exc_info)

        return self.app(environ, recording_start)


@pytest.fixture
def flask_recipe(root: str, monkeypatch: pytest.MonkeyPatch
                 ) -> Iterator[tuple[ModuleType, str, Recorder]]:
    pytest.importorskip("flask")
    from werkzeug.serving import make_server

    monkeypatch.setenv("DS_STREAM_ROOT", root)
    monkeypatch.syspath_prepend(str(RECIPES))
    sys.modules.pop("webhook_flask", None)
    module = importlib.import_module("webhook_flask")
    recorder = Recorder(module.app.wsgi_app)
    module.app.wsgi_app = recorder
    server = make_server("127.0.0.1", 0, module.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield module, f"http://127.0.0.1:{server.server_port}", recorder
    finally:
        server.shutdown()
        server.server_close()
        if module._verifier is not None:
            module._verifier.close()
        sys.modules.pop("webhook_flask", None)


def feed(root: str, paths: list[str], rounds: int) -> dict[str, list[dict[str, int]]]:
    """Append ``rounds`` messages to each stream, interleaved, while wakes are handled."""
    sent: dict[str, list[dict[str, int]]] = {p: [] for p in paths}
    for i in range(rounds):
        for p in paths:
            item = {"i": i}
            append(f"{root}/{p}", json.dumps(item))
            sent[p].append(item)
    return sent


def tails(root: str, paths: list[str]) -> dict[str, str]:
    out = {}
    for p in paths:
        response = requests.head(f"{root}/{p}", timeout=10)
        out[p] = response.headers["Stream-Next-Offset"]
    return out


def by_stream(processed: list[dict[str, Any]], paths: list[str]) -> dict[str, list[Any]]:
    return {p: [e["item"] for e in processed if e["stream"] == p] for p in paths}


@pytest.mark.parametrize("endpoint", ["/webhooks/durable-streams",
                                      "/webhooks/durable-streams/async"])
def test_flask_recipe_processes_every_message_once(
        flask_recipe: tuple[ModuleType, str, Recorder], root: str, prefix: str,
        endpoint: str) -> None:
    module, base, recorder = flask_recipe
    paths = [f"{prefix}/a", f"{prefix}/b"]
    for p in paths:
        create_stream(root, p)
    sub = f"sub-{prefix}"
    create_webhook_subscription(root, sub, webhook_url=base + endpoint, streams=paths)
    try:
        sent = feed(root, paths, rounds=15)
        expected_tails = tails(root, paths)
        wait_for(lambda: acked_offsets(root, sub) == expected_tails, timeout=30,
                 what="every tail acked")
        # Exactly once, in order: reads that ran past a snapshot's tail were not re-done.
        assert by_stream(module.processed, paths) == sent
        deliveries = [c for c in recorder.calls if c["path"] == endpoint]
        assert deliveries and all(c["signature"] for c in deliveries)
        want = 200 if endpoint.endswith("streams") else 202
        assert {c["status"] for c in deliveries} == {want}

        # A captured delivery replayed within the window: accepted, but no work again.
        before = len(module.processed)
        replay = requests.post(base + endpoint, data=deliveries[-1]["body"], timeout=10,
                               headers={"Webhook-Signature": deliveries[-1]["signature"],
                                        "Content-Type": "application/json"})
        assert replay.status_code == want
        if endpoint.endswith("async"):
            module._wakes.join()
        assert len(module.processed) == before

        # Unsigned or tampered: 401 before any parsing or work.
        body = deliveries[-1]["body"]
        unsigned = requests.post(base + endpoint, data=body, timeout=10)
        assert unsigned.status_code == 401
        assert unsigned.json() == {"error": "missing_header"}
        tampered = requests.post(base + endpoint, data=body.replace(b'"w_', b'"w_x'),
                                 headers={"Webhook-Signature": deliveries[-1]["signature"]},
                                 timeout=10)
        assert tampered.status_code == 401
        assert tampered.json() == {"error": "bad_signature"}
        assert len(module.processed) == before
    finally:
        delete_subscription(root, sub)


DJANGO_CHILD = """
import json, sys
import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="recipe-test",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF="webhook_test_urls",
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    INSTALLED_APPS=[],
    DS_STREAM_ROOT=sys.argv[1],
    LOGGING_CONFIG=None,
)
django.setup()

import types
from django.http import JsonResponse
from django.urls import path
from django.core.servers.basehttp import run
from django.core.wsgi import get_wsgi_application
import webhook_django

urls = types.ModuleType("webhook_test_urls")
urls.urlpatterns = webhook_django.urlpatterns + [
    path("processed", lambda request: JsonResponse({"processed": webhook_django.processed})),
]
sys.modules["webhook_test_urls"] = urls
run("127.0.0.1", 0, get_wsgi_application(), threading=True,
    on_bind=lambda port: print(port, flush=True))
"""


@pytest.fixture
def django_app(root: str) -> Iterator[str]:
    pytest.importorskip("django")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(RECIPES), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.Popen([sys.executable, "-c", DJANGO_CHILD, root], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        port: list[str] = []
        reader = threading.Thread(target=lambda: port.append(proc.stdout.readline()),  # type: ignore[union-attr]
                                  daemon=True)
        reader.start()
        reader.join(60)
        assert port and port[0].strip().isdigit(), "the Django server did not start"
        yield f"http://127.0.0.1:{port[0].strip()}"
    finally:
        proc.kill()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_django_recipe_under_runserver(django_app: str, root: str, prefix: str) -> None:
    paths = [f"{prefix}/a", f"{prefix}/b"]
    for p in paths:
        create_stream(root, p)
    sub = f"sub-{prefix}"
    create_webhook_subscription(root, sub, webhook_url=django_app + "/webhooks/durable-streams",
                                streams=paths)
    try:
        sent = feed(root, paths, rounds=10)
        expected_tails = tails(root, paths)
        wait_for(lambda: acked_offsets(root, sub) == expected_tails, timeout=30,
                 what="every tail acked")
        processed = requests.get(django_app + "/processed", timeout=10).json()["processed"]
        assert by_stream(processed, paths) == sent
        unsigned = requests.post(django_app + "/webhooks/durable-streams", data=b"{}",
                                 timeout=10)
        assert unsigned.status_code == 401 and unsigned.json() == {"error": "missing_header"}
        assert requests.get(django_app + "/webhooks/durable-streams",
                            timeout=10).status_code == 405
    finally:
        delete_subscription(root, sub)
