"""The README recipes (tests/recipes/) run against the real server, so they cannot rot."""

from __future__ import annotations

import contextlib
import csv
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from durable_streams import DeliveryError, DurableStream, DurableStreamError, stream
from durable_streams.testing import ReferenceServer

RECIPES = Path(__file__).with_name("recipes")
JSON = "application/json"


def read_items(url: str) -> list[Any]:
    with stream(url) as response:
        return response.read_json()


@pytest.fixture
def events_url(server: ReferenceServer) -> str:
    url = server.stream_url()
    DurableStream.create(url, content_type=JSON).close()
    return url


def _load(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(RECIPES))
    sys.modules.pop(name, None)
    return importlib.import_module(name)


@pytest.fixture
def flask_events(events_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    pytest.importorskip("flask")
    monkeypatch.setenv("EVENTS_STREAM_URL", events_url)
    module = _load("flask_events", monkeypatch)
    yield module
    producer = module._producer
    if producer is not None and module._producer_pid == os.getpid():
        producer.close()
    sys.modules.pop("flask_events", None)


def test_flask_recipe_appends_from_many_request_threads(flask_events: ModuleType,
                                                        events_url: str) -> None:
    app = flask_events.app
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        client = app.test_client()
        for i in range(50):
            response = client.post("/events", json={"worker": t, "i": i})
            with lock:
                statuses.append(response.status_code)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert statuses == [202] * 400
    assert app.test_client().post("/events", data="nope").status_code == 400

    producer = flask_events.events()
    assert producer is flask_events.events()  # one process-wide producer
    producer.flush()
    items = read_items(events_url)
    assert sorted((e["worker"], e["i"]) for e in items) == [
        (t, i) for t in range(8) for i in range(50)]
    for t in range(8):
        assert [e["i"] for e in items if e["worker"] == t] == list(range(50))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_flask_recipe_after_fork_builds_a_new_producer(flask_events: ModuleType,
                                                       events_url: str) -> None:
    # What gunicorn --preload does: the master used the app (and its producer), then forks.
    client = flask_events.app.test_client()
    assert client.post("/events", json={"who": "master"}).status_code == 202
    master_producer = flask_events.events()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child ("worker")
        code = 1
        try:
            worker_client = flask_events.app.test_client()
            ok = worker_client.post("/events", json={"who": "worker"}).status_code == 202
            producer = flask_events.events()
            ok = ok and producer is not master_producer
            producer.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert client.post("/events", json={"who": "master again"}).status_code == 202
    master_producer.flush()
    assert sorted(e["who"] for e in read_items(events_url)) == [
        "master", "master again", "worker"]


@pytest.fixture
def flask_missing(server: ReferenceServer, monkeypatch: pytest.MonkeyPatch
                  ) -> Iterator[tuple[ModuleType, str]]:
    """The Flask recipe pointed at a stream that does not exist yet."""
    pytest.importorskip("flask")
    url = server.stream_url()
    monkeypatch.setenv("EVENTS_STREAM_URL", url)
    module = _load("flask_events", monkeypatch)
    yield module, url
    producer = module._producer
    if producer is not None and module._producer_pid == os.getpid():
        with contextlib.suppress(DurableStreamError, TimeoutError):
            producer.close(timeout=10)
    sys.modules.pop("flask_events", None)


def test_flask_recipe_recovers_once_the_missing_stream_exists(
        flask_missing: tuple[ModuleType, str], caplog: pytest.LogCaptureFixture) -> None:
    module, url = flask_missing
    client = module.app.test_client()
    # The first request: accepted (the producer buffers it), then refused by the server.
    assert client.post("/events", json={"n": "lost"}).status_code == 202
    first = module.events()
    with pytest.raises(DeliveryError):
        first.flush(timeout=20)  # the 404 stopped the producer; the event was reported
    assert any("were not delivered" in r.getMessage() for r in caplog.records)
    DurableStream.create(url, content_type=JSON).close()
    # Every later request succeeds: the stopped producer is replaced by itself.
    t0 = time.monotonic()
    codes = [client.post("/events", json={"n": n}).status_code for n in range(5)]
    elapsed = time.monotonic() - t0
    assert codes == [202] * 5
    assert elapsed < 5, f"replacing the stopped producer held a request for {elapsed:.1f}s"
    assert module.events() is not first
    module.events().flush(timeout=20)
    assert [e["n"] for e in read_items(url)] == list(range(5))


DJANGO_CHILD = """
import json, sys
import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="recipe-test",
    ALLOWED_HOSTS=["testserver"],
    ROOT_URLCONF="django_events",
    MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
    INSTALLED_APPS=[],
    EVENTS_STREAM_URL=sys.argv[1],
)
django.setup()

from django.test import Client, RequestFactory
import django_events

client = Client()
codes = [client.post("/events", data=json.dumps({"n": n}), content_type="application/json")
         .status_code for n in range(20)]
codes.append(client.post("/events", data="not json", content_type="application/json")
             .status_code)
codes.append(client.get("/events").status_code)
request = RequestFactory().post("/events", data=json.dumps({"n": "factory"}),
                                content_type="application/json")
codes.append(django_events.track_event(request).status_code)
django_events.events().flush()
print(json.dumps(codes))
"""


def test_django_recipe(events_url: str) -> None:
    pytest.importorskip("django")
    # A subprocess: django.conf.settings can be configured once per process.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(RECIPES), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-c", DJANGO_CHILD, events_url],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    codes = json.loads(proc.stdout)
    assert codes == [202] * 20 + [400, 405, 202]
    items = read_items(events_url)
    assert [e["n"] for e in items] == [*range(20), "factory"]
    assert all("user" in e for e in items)


DJANGO_RECOVERY_CHILD = """
import json, sys
import django
from django.conf import settings

settings.configure(DEBUG=False, SECRET_KEY="recipe-test", ALLOWED_HOSTS=["testserver"],
                   ROOT_URLCONF="django_events", MIDDLEWARE=[], INSTALLED_APPS=[],
                   EVENTS_STREAM_URL=sys.argv[1])
django.setup()

from django.test import Client
from durable_streams import DeliveryError, DurableStream
import django_events

client = Client()
post = lambda n: client.post("/events", data=json.dumps({"n": n}),
                             content_type="application/json").status_code
codes = [post("lost")]  # the stream does not exist yet
first = django_events.events()
try:
    first.flush(timeout=20)
    refused = False
except DeliveryError:
    refused = True  # the 404 stopped the producer
DurableStream.create(sys.argv[1], content_type="application/json").close()
codes += [post(n) for n in range(5)]
replaced = django_events.events() is not first
django_events.events().flush(timeout=20)
print(json.dumps({"codes": codes, "refused": refused, "replaced": replaced}))
"""


def test_django_recipe_recovers_once_the_missing_stream_exists(
        server: ReferenceServer) -> None:
    pytest.importorskip("django")
    url = server.stream_url()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(RECIPES), *filter(None, [os.environ.get("PYTHONPATH")])]))
    proc = subprocess.run([sys.executable, "-c", DJANGO_RECOVERY_CHILD, url],
                          capture_output=True, text=True, timeout=90, env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result == {"codes": [202] * 6, "refused": True, "replaced": True}
    assert [e["n"] for e in read_items(url)] == list(range(5))
    assert "not delivered" in proc.stderr  # the lost event was reported (logged)


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_cron_recipe_two_nights(events_url: str, tmp_path: Path) -> None:
    script = RECIPES / "nightly_export.py"
    nights = []
    for night in (1, 2):
        rows = [{"order": f"{night}-{i}", "total": f"{i}.50", "note": "naïve, \"quoted\""}
                for i in range(300)]
        path = tmp_path / f"orders-{night}.csv"
        _write_csv(path, rows)
        nights.append(rows)
        proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True,
                              text=True, timeout=60,
                              env=dict(os.environ, EXPORT_STREAM_URL=events_url))
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == "" and proc.stderr == ""  # cron mails any output
    # Night 2 reused the producer id and was not taken for a duplicate of night 1.
    assert read_items(events_url) == nights[0] + nights[1]
    with DurableStream(events_url) as handle:
        assert handle.head().closed is False  # still open for tomorrow


def test_cron_recipe_reports_undelivered_rows(tmp_path: Path) -> None:
    # Nothing listens on the URL: the rows cannot be delivered; the job must say so and
    # exit non-zero. (A private server, stopped, gives a port that refuses connections.)
    with ReferenceServer() as private:
        url = private.stream_url()
    path = tmp_path / "orders.csv"
    _write_csv(path, [{"order": str(i)} for i in range(10)])
    env = dict(os.environ, EXPORT_STREAM_URL=url)
    code = (
        "import sys, durable_streams.producer as p, runpy\n"
        # A short delivery timeout for the test; the recipe itself keeps the default.
        "orig = p.IdempotentProducer.__init__\n"
        "def init(self, *a, **k):\n"
        "    k.setdefault('delivery_timeout_ms', 500)\n"
        "    orig(self, *a, **k)\n"
        "p.IdempotentProducer.__init__ = init\n"
        f"sys.argv = ['nightly_export.py', {str(path)!r}]\n"
        f"runpy.run_path({str(RECIPES / 'nightly_export.py')!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 1, proc.stderr
    assert "10 of 10 rows were not delivered" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cron_recipe_with_the_stream_missing_reports_every_row(
        server: ReferenceServer, tmp_path: Path) -> None:
    path = tmp_path / "orders.csv"
    _write_csv(path, [{"order": str(i)} for i in range(50)])
    proc = subprocess.run([sys.executable, str(RECIPES / "nightly_export.py"), str(path)],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, EXPORT_STREAM_URL=server.stream_url()))
    assert proc.returncode == 1, proc.stderr
    assert "50 of 50 rows were not delivered" in proc.stderr and "(404)" in proc.stderr
    assert "Traceback" not in proc.stderr
