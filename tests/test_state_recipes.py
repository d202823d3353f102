"""The State Protocol recipes (tests/recipes/django_state/, tests/recipes/state_inventory.py)
against the real server: Django on SQLite publishes model changes after commit with the
transaction's txid, and a reader waits for that txid; a script publishes a full snapshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from durable_streams import DurableStream, stream
from durable_streams.state import follow_state
from durable_streams.testing import ReferenceServer

RECIPES = Path(__file__).with_name("recipes")
JSON = "application/json"


@pytest.fixture
def state_url(server: ReferenceServer) -> str:
    url = server.stream_url()
    DurableStream.create(url, content_type=JSON).close()
    return url


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(RECIPES), *filter(None, [os.environ.get("PYTHONPATH")])]))


DJANGO_CHILD = """
import json, sys
import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="recipe-test",
    ALLOWED_HOSTS=["testserver"],
    ROOT_URLCONF="django_state.urls",
    MIDDLEWARE=[],
    INSTALLED_APPS=["django_state.apps.DjangoStateConfig"],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": sys.argv[2]}},
    USE_TZ=True,
    STATE_STREAM_URL=sys.argv[1],
)
django.setup()
from django.core.management import call_command
call_command("migrate", run_syncdb=True, verbosity=0)

from django.test import Client
from django_state import state
from django_state.models import Todo

client = Client()
out = {}
r = client.post("/todos", data=json.dumps(["milk", "eggs", "tea"]), content_type="application/json")
out["bulk"] = r.json()
a, b, c = out["bulk"]["ids"]
out["patch"] = client.patch(f"/todos/{a}", data=json.dumps({"done": True}),
                            content_type="application/json").json()
out["fail"] = client.post("/todos/fail").json()
out["delete"] = client.delete(f"/todos/{b}").json()
Todo.objects.create(title="autocommit")  # outside atomic_txid: its own transaction
out["last"] = client.patch(f"/todos/{c}", data=json.dumps({"title": "green tea"}),
                           content_type="application/json").json()
out["rows"] = {str(t.pk): state._as_json(t) for t in Todo.objects.all()}
state.producer().close()
print(json.dumps(out))
"""


def test_django_models_publish_after_commit_and_readers_wait_for_the_txid(
        state_url: str, tmp_path: Path) -> None:
    pytest.importorskip("django")
    with follow_state(state_url, live="long-poll") as view:
        assert view.wait_until_up_to_date(30)
        proc = subprocess.run([sys.executable, "-c", DJANGO_CHILD, state_url,
                               str(tmp_path / "db.sqlite3")],
                              capture_output=True, text=True, timeout=120, env=_env())
        assert proc.returncode == 0, proc.stderr
        out: dict[str, Any] = json.loads(proc.stdout)
        # What a client does with the txid a view returned: wait until the reader has it.
        for step in ("bulk", "patch", "delete", "last"):
            assert view.wait_for_txid(out[step]["txid"], 30), step
        assert view.wait_for_txid(out["fail"]["txid"], 0) is False  # rolled back: never sent
        state = view.state.collection("django_state.todo")
    assert dict(state) == out["rows"]
    assert {row["title"] for row in out["rows"].values()} == {"milk", "green tea", "autocommit"}
    with stream(state_url) as response:
        events = response.read_json()
    assert [e["headers"]["operation"] for e in events] == [
        "insert", "insert", "insert", "update", "delete", "insert", "update"]
    bulk = {e["headers"]["txid"] for e in events[:3]}
    assert bulk == {out["bulk"]["txid"]}  # one transaction, one txid
    assert events[5]["headers"]["txid"] not in {out[s]["txid"] for s in out if s != "rows"}
    assert events[4]["old_value"]["title"] == "eggs"
    assert all("doomed" not in json.dumps(e) for e in events)


def test_inventory_script_replaces_the_state_in_one_step(state_url: str,
                                                         tmp_path: Path) -> None:
    script = RECIPES / "state_inventory.py"
    groups: list[list[dict[str, Any]]] = []
    with follow_state(state_url, live="long-poll", on_change=groups.append) as view:  # type: ignore[arg-type]
        assert view.wait_until_up_to_date(30)
        for night, stock in enumerate([{"apple": 3, "pear": 1}, {"pear": 5, "plum": 2}]):
            path = tmp_path / f"stock-{night}.json"
            path.write_text(json.dumps(stock))
            proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True,
                                  text=True, timeout=60,
                                  env=dict(_env(), INVENTORY_STREAM_URL=state_url))
            assert proc.returncode == 0, proc.stderr
            assert proc.stderr == ""
            txid = proc.stdout.strip()
            assert view.wait_for_txid(txid, 30)
            assert {k: v["count"] for k, v in view.state.collection("stock").items()} == stock
    # Each run reached the reader as one group: snapshot-start, reset, rows, snapshot-end.
    runs = [g for g in groups if g and g[0]["headers"].get("control") == "snapshot-start"]
    assert len(runs) == 2
    for g in runs:
        assert g[1]["headers"]["control"] == "reset"
        assert g[-1]["headers"]["control"] == "snapshot-end"
