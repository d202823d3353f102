"""The State Protocol against the real reference server: StateProducer writes,
follow_state and SqliteState read (STATE-PROTOCOL.md; PROTOCOL.md §5.6-§5.8 for the reads),
and the ``state`` command."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unit.state_model import flat, model, op_strategy
from unit.state_schema import schema_errors

from durable_streams import DeliveryError, DurableStream, StreamNotFoundError, stream
from durable_streams.state import (
    MaterializedState,
    SqliteState,
    StateEventError,
    StateProducer,
    follow_state,
)
from durable_streams.testing import ReferenceServer

JSON = "application/json"
LIVE_MODES = ["long-poll", "sse"]


@pytest.fixture
def state_url(server: ReferenceServer) -> str:
    url = server.stream_url()
    DurableStream.create(url, content_type=JSON).close()
    return url


def served(url: str) -> list[Any]:
    with stream(url) as response:
        return response.read_json()


def materialise(url: str) -> MaterializedState:
    with follow_state(url, live=False) as view:
        assert view.wait_until_up_to_date(30)
    return view.state


def write_sample(sp: StateProducer) -> None:
    sp.insert("user", "1", {"name": "Ann"}, txid="t1", timestamp="2025-01-15T10:30:00Z")
    sp.insert("user", "2", {"name": "Bo"})
    sp.update("user", "1", {"name": "Ann B"}, old_value={"name": "Ann"}, txid="t2")
    sp.upsert("team", "x", ["1", "2"])
    sp.delete("user", "2", old_value={"name": "Bo"}, txid="t3")
    sp.upsert("flag", "dark", True)


# -- writing -------------------------------------------------------------------------------
def test_producer_events_are_stored_valid_and_materialise(state_url: str) -> None:
    with StateProducer(state_url, "writer-1") as sp:
        write_sample(sp)
        sp.reset()
        with sp.snapshot():
            sp.insert("user", "9", {"name": "Zed"}, txid="t4")
        offset = sp.flush()
    items = served(state_url)
    assert len(items) == 10
    for item in items:
        # The server adds headers.offset to every event; the rest is the protocol's schema.
        assert isinstance(item["headers"].get("offset"), str)
        assert schema_errors(item, served=True) == []
    state = materialise(state_url)
    assert state.to_dict() == {"user": {"9": {"name": "Zed"}}}
    assert state.offset == offset


def test_producer_options_pass_through(state_url: str) -> None:
    with StateProducer(state_url, "w", max_batch_items=1, linger_ms=0) as sp:
        for i in range(5):
            sp.upsert("n", str(i), i)
        sp.flush()
        assert sp.producer.stats().batches_sent == 5  # max_batch_items=1 reached it
    with pytest.raises(TypeError, match="no_such_option"):
        StateProducer(state_url, "w", no_such_option=1)


def test_schemas_convert_or_refuse_before_queueing(state_url: str) -> None:
    @dataclasses.dataclass
    class User:
        name: str
        age: int

    def user(value: Any) -> dict[str, Any]:
        if not isinstance(value, User):
            raise TypeError(f"a user must be a User, got {type(value).__name__}")
        return dataclasses.asdict(value)

    with StateProducer(state_url, "w", schemas={"user": user}) as sp:
        event = sp.insert("user", "1", User("Ann", 31))
        assert event["value"] == {"name": "Ann", "age": 31}
        with pytest.raises(TypeError, match="must be a User"):
            sp.insert("user", "2", {"name": "raw"})
        with pytest.raises(ValueError, match="RFC 3339"):
            sp.upsert("other", "k", 1, timestamp="noon")
        assert sp.producer.stats().messages_appended == 1  # the refused ones were not queued
    assert materialise(state_url).to_dict() == {"user": {"1": {"name": "Ann", "age": 31}}}


def test_a_non_json_stream_is_refused(server: ReferenceServer) -> None:
    url = server.stream_url()
    handle = DurableStream.create(url, content_type="text/plain")
    with pytest.raises(ValueError, match="need a JSON stream"):
        StateProducer(handle, "w")
    with pytest.raises(ValueError, match="JSON stream"):
        StateProducer(url, "w", content_type="text/plain")
    with pytest.raises(ValueError, match="application/json"):
        follow_state(url)
    # Given only the URL, the producer assumes JSON; the server refuses, and it is reported.
    sp = StateProducer(url, "w", delivery_timeout_ms=5000)
    sp.upsert("a", "b", 1)
    with pytest.raises(DeliveryError):
        sp.close()
    handle.close()


def test_snapshots_do_not_nest_and_end_even_on_error(state_url: str) -> None:
    with StateProducer(state_url, "w") as sp:
        with pytest.raises(RuntimeError, match="do not nest"), sp.snapshot(), sp.snapshot():
            pass
        with pytest.raises(KeyError), sp.snapshot():
            sp.upsert("a", "1", 1)
            raise KeyError("boom")
    controls = [i["headers"].get("control") for i in served(state_url)]
    assert controls == ["snapshot-start", "snapshot-end", "snapshot-start", None,
                        "snapshot-end"]


@settings(max_examples=15)
@given(ops=st.lists(op_strategy, max_size=40), flush_every=st.integers(1, 10))
def test_random_sequences_written_and_followed_match_the_model(
        durable_streams_server: ReferenceServer, ops: list[tuple[str, Any, Any, Any]],
        flush_every: int) -> None:
    url = durable_streams_server.stream_url()
    DurableStream.create(url, content_type=JSON).close()
    with StateProducer(url, "w") as sp, follow_state(url, live="long-poll") as view:
        for n, (name, t, k, v) in enumerate(ops):
            if name == "reset":
                sp.reset()
            elif name in ("snapshot-start", "snapshot-end"):
                sp.producer.append(json.dumps({"headers": {"control": name}}))
            elif name == "delete":
                sp.delete(t, k)
            else:
                getattr(sp, name)(t, k, v)
            if n % flush_every == 0:
                sp.flush()
        sp.insert("end", "end", 0, txid="end")
        sp.flush()
        if not any(name == "snapshot-start" for name, *_ in ops) or \
                [name for name, *_ in ops if name.startswith("snapshot")][-1] != "snapshot-start":
            assert view.wait_for_txid("end", 30)
            types, values = model([*ops, ("insert", "end", "end", 0)])
            assert flat(view.state) == (types, values)
        else:  # an unfinished snapshot block: held back, not applied in part
            assert view.wait_for_txid("end", 1) is False
    for item in served(url):
        assert schema_errors(item, served=True) == []


# -- following -----------------------------------------------------------------------------
@pytest.mark.parametrize("live", LIVE_MODES)
def test_follow_catches_up_then_follows_and_waits_for_txids(state_url: str, live: str) -> None:
    groups: list[list[dict[str, Any]]] = []
    with StateProducer(state_url, "w") as sp:
        sp.insert("user", "0", {"name": "early"}, txid="before")
        sp.flush()
        with follow_state(state_url, live=live, on_change=groups.append) as view:  # type: ignore[arg-type]
            assert view.wait_until_up_to_date(30)
            assert view.state.get("user", "0") == {"name": "early"}
            assert view.wait_for_txid("before", 5)
            assert view.wait_for_txid("never-written", 0.3) is False
            write_sample(sp)
            offset = sp.flush()
            assert view.wait_for_txid("t3", 30)
            assert view.state.to_dict() == {"user": {"0": {"name": "early"},
                                                     "1": {"name": "Ann B"}},
                                            "team": {"x": ["1", "2"]}, "flag": {"dark": True}}
            assert view.wait_until_up_to_date(30) and view.offset == offset
    assert sum(len(g) for g in groups) == 7
    assert view.running is False and view.error is None


def test_follow_from_a_saved_offset_sees_only_what_follows(state_url: str) -> None:
    with StateProducer(state_url, "w") as sp:
        sp.upsert("a", "1", 1)
        saved = sp.flush()
        sp.upsert("a", "2", 2)
        sp.flush()
    with follow_state(state_url, offset=saved, live=False) as view:
        assert view.wait_until_up_to_date(30)
    assert view.state.to_dict() == {"a": {"2": 2}}


@pytest.mark.parametrize("live", LIVE_MODES)
def test_no_reader_sees_half_a_reset_and_snapshot(state_url: str, live: str) -> None:
    # The snapshot (with its reset) is written in several appends, flushed apart, so the
    # follower receives it in several chunks; it must still be applied at once.
    n_parts, per_part = 4, 50
    with StateProducer(state_url, "w") as sp:
        for i in range(30):
            sp.upsert("row", f"old{i}", i)
        sp.flush()
        seen: set[frozenset[str]] = set()
        groups: list[list[dict[str, Any]]] = []
        stop = threading.Event()
        with follow_state(state_url, live=live, on_change=groups.append) as view:  # type: ignore[arg-type]
            assert view.wait_until_up_to_date(30)

            def reader() -> None:
                while not stop.is_set():
                    seen.add(frozenset(view.state.collection("row")))

            thread = threading.Thread(target=reader)
            thread.start()
            try:
                with sp.snapshot(reset=True):
                    for part in range(n_parts):
                        for i in range(per_part):
                            sp.upsert("row", f"new{part}-{i}", i)
                        sp.flush()
                sp.insert("row", "last", 0, txid="done")
                sp.flush()
                assert view.wait_for_txid("done", 30)
            finally:
                stop.set()
                thread.join(10)
    old = frozenset(f"old{i}" for i in range(30))
    new = frozenset(f"new{p}-{i}" for p in range(n_parts) for i in range(per_part))
    assert seen <= {old, new, new | {"last"}}, "a reader saw a reset or snapshot half applied"
    assert old in seen
    reset_group = next(g for g in groups if any(e["headers"].get("control") == "reset"
                                                 for e in g))
    controls = [e["headers"].get("control") for e in reset_group]
    assert controls[:2] == ["snapshot-start", "reset"] and "snapshot-end" in controls


def test_a_malformed_event_stops_the_view_or_is_skipped(state_url: str) -> None:
    with DurableStream(state_url, content_type=JSON) as handle:
        handle.append(json.dumps({"type": "a", "key": "1", "value": 1,
                                  "headers": {"operation": "insert"}}))
        handle.append(json.dumps({"hello": "not a state event"}))
        handle.append(json.dumps({"type": "a", "key": "2", "value": 2,
                                  "headers": {"operation": "insert"}}))
    view = follow_state(state_url, live=False)
    with pytest.raises(StateEventError):
        view.wait_until_up_to_date(30)
    with pytest.raises(StateEventError, match="headers is null, not an object"):
        view.close()
    assert isinstance(view.error, StateEventError)
    assert view.state.to_dict() == {}  # the bad chunk was not applied in part
    problems: list[StateEventError] = []
    with follow_state(state_url, live=False, on_invalid=problems.append) as skipping:
        assert skipping.wait_until_up_to_date(30)
    assert skipping.state.to_dict() == {"a": {"1": 1, "2": 2}}
    assert skipping.skipped == 1 and len(problems) == 1


def test_an_on_change_error_stops_the_view_and_is_raised(state_url: str) -> None:
    with StateProducer(state_url, "w") as sp:
        sp.upsert("a", "1", 1)

    def broken(events: Any) -> None:
        raise RuntimeError("callback bug")

    view = follow_state(state_url, live="long-poll", on_change=broken)
    with pytest.raises(RuntimeError, match="callback bug"):
        view.wait_until_up_to_date(30)
    with pytest.raises(RuntimeError, match="callback bug"):
        view.close()


def test_missing_stream_raises_at_once(server: ReferenceServer) -> None:
    with pytest.raises(StreamNotFoundError):
        follow_state(server.stream_url())


def test_close_stops_a_waiting_follower_promptly(state_url: str) -> None:
    view = follow_state(state_url, live="long-poll")
    assert view.wait_until_up_to_date(30)
    started = time.monotonic()
    view.close()
    assert time.monotonic() - started < 10 and not view.running


def test_eof_ends_the_view(state_url: str) -> None:
    with StateProducer(state_url, "w") as sp:
        sp.upsert("a", "1", 1)
        sp.producer.close_stream()
    with follow_state(state_url, live=True) as view:
        deadline = time.monotonic() + 30
        while view.running and time.monotonic() < deadline:
            view.wait_for_txid("none", 0.2)
    assert not view.running and view.up_to_date and view.state.get("a", "1") == 1


# -- the SQLite view -----------------------------------------------------------------------
def test_sqlite_view_resumes_without_repeating(state_url: str, tmp_path: Path) -> None:
    path = tmp_path / "view.db"
    with StateProducer(state_url, "w") as sp:
        write_sample(sp)
        sp.flush()
        with SqliteState(path) as db, db.follow(state_url, live=False) as view:
            assert view.wait_until_up_to_date(30)
            assert db.applied_count == 6
        sp.reset()
        sp.upsert("user", "7", {"name": "New"})
        sp.flush()
    with SqliteState(path) as db:
        first_offset = db.offset
        with db.follow(state_url, live=False) as view:
            assert view.wait_until_up_to_date(30)
        assert db.applied_count == 8  # the first six were not applied again
        assert db.offset != first_offset
        assert db.to_dict() == materialise(state_url).to_dict() == {
            "user": {"7": {"name": "New"}}}
        with pytest.raises(ValueError, match="holds the state of"):
            db.follow(state_url + "-other")


CHILD = """
import sys, time
from durable_streams.state import SqliteState
db = SqliteState(sys.argv[1])
view = db.follow(sys.argv[2], live=sys.argv[3] if sys.argv[3] != "none" else False)
print("started", flush=True)
if sys.argv[3] == "none":
    assert view.wait_until_up_to_date(60)
    view.close()
    print(db.applied_count, flush=True)
else:
    while True:
        time.sleep(1)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sqlite_view_survives_sigkill(state_url: str, tmp_path: Path) -> None:
    path = tmp_path / "view.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), state_url, "long-poll"],
                             stdout=subprocess.PIPE, text=True)
    total = 0
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "started"
        with StateProducer(state_url, "w") as sp:
            for round_ in range(40):
                if round_ == 20:
                    os.kill(child.pid, signal.SIGKILL)  # while it follows the writes
                if round_ % 7 == 3:
                    sp.reset()
                    total += 1
                for i in range(100):
                    sp.upsert(f"t{i % 3}", f"k{(round_ * 37 + i) % 150}", [round_, i])
                total += 100
                sp.flush()
    finally:
        child.kill()
        child.wait(10)
    with SqliteState(path) as db:
        assert db.offset is not None  # it had committed something before the kill
    resumed = subprocess.run([sys.executable, "-c", CHILD, str(path), state_url, "none"],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert int(resumed.stdout.split()[-1]) == total  # every event applied exactly once
    with SqliteState(path) as db:
        assert db.to_dict() == materialise(state_url).to_dict()
        assert db.types == materialise(state_url).types


# -- the README ----------------------------------------------------------------------------
def test_readme_state_section_runs(state_url: str) -> None:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("## State Protocol"):]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace('"http://127.0.0.1:4437/v1/stream/inventory"', repr(state_url))
    assert repr(state_url) in code, "the README's state snippet names its stream URL"
    namespace: dict[str, Any] = {}
    exec(compile(code, "README.md#state-protocol", "exec"), namespace)
    assert dict(namespace["users"]) == {"2": {"name": "Bo"}}
    assert namespace["offset"] == namespace["view"].offset


# -- the command line ----------------------------------------------------------------------
CLI = [sys.executable, "-m", "durable_streams"]


def test_cli_state_prints_the_state(state_url: str) -> None:
    with StateProducer(state_url, "w") as sp:
        write_sample(sp)
    proc = subprocess.run([*CLI, "state", state_url], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == materialise(state_url).to_dict()
    assert proc.stderr.startswith("offset: ")


def test_cli_state_follow_prints_each_change(state_url: str) -> None:
    with StateProducer(state_url, "w") as sp:
        sp.upsert("a", "1", 1)
        sp.flush()
        proc = subprocess.Popen([*CLI, "state", state_url, "--long-poll", "--stop-after", "60"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None
            assert json.loads(proc.stdout.readline()) == {"a": {"1": 1}}
            sp.upsert("a", "2", 2, txid="x")
            sp.delete("a", "1")
            sp.flush()
            lines = [json.loads(proc.stdout.readline()) for _ in range(2)]
        finally:
            proc.send_signal(signal.SIGINT)
            _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1].startswith("offset: ")
    assert [(e["key"], e["headers"]["operation"]) for e in lines] == [("2", "upsert"),
                                                                      ("1", "delete")]
    assert lines[0]["headers"]["txid"] == "x"


def test_cli_state_reports_a_malformed_stream(state_url: str) -> None:
    with DurableStream(state_url, content_type=JSON) as handle:
        handle.append(json.dumps({"headers": {"control": "explode"}}))
    proc = subprocess.run([*CLI, "state", state_url], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert "headers.control" in proc.stderr and "explode" not in proc.stderr


# -- the benchmark still runs --------------------------------------------------------------
def test_state_benchmark_runs_and_checks_the_readers_agree() -> None:
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "benchmarks/state.py", "--events", "3000",
                           "--repeat", "1", "--json"], cwd=root, capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["events"] == 3000 and result["entries"] > 0
    assert set(result["rates"]) >= {"ours", "sqlite"}
    assert "ratio SQLite / ours" in proc.stdout


@pytest.mark.skipif(os.name != "posix", reason="POSIX pipes")
def test_cli_state_follow_ends_when_the_pipe_closes(state_url: str) -> None:
    with StateProducer(state_url, "w") as sp:
        sp.upsert("a", "1", 1)
    shell = (f"{sys.executable} -m durable_streams state '{state_url}' --long-poll "
             "--stop-after 60 | head -1")
    started = time.monotonic()
    proc = subprocess.run(["sh", "-c", shell], capture_output=True, text=True, timeout=60)
    assert json.loads(proc.stdout) == {"a": {"1": 1}}
    assert time.monotonic() - started < 30  # not held until --stop-after
