"""MaterializedState, BlockAssembler and SqliteState without a server (STATE-PROTOCOL.md §6):
tables for each rule, and hypothesis properties (random operation sequences with resets and
snapshots against a model; a SQLite view crashed at any point and resumed equals the
in-memory one)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from durable_streams.state import (
    BlockAssembler,
    MaterializedState,
    SqliteState,
    StateEventError,
    change_event,
    control_event,
)

from .state_model import flat, model, op_strategy, to_event


def ins(t: str, k: str, v: Any, **kw: Any) -> dict[str, Any]:
    return change_event("insert", t, k, v, **kw)


def upd(t: str, k: str, v: Any) -> dict[str, Any]:
    return change_event("update", t, k, v)


def ups(t: str, k: str, v: Any) -> dict[str, Any]:
    return change_event("upsert", t, k, v)


def dele(t: str, k: str) -> dict[str, Any]:
    return change_event("delete", t, k)


RESET, START, END = (control_event(c) for c in ("reset", "snapshot-start", "snapshot-end"))


# -- MaterializedState rules ----------------------------------------------------------------
def test_protocol_section_6_example() -> None:
    state = MaterializedState()
    state.apply_batch([ins("user", "1", {"name": "Alice"}), ins("user", "2", {"name": "Bob"}),
                       upd("user", "1", {"name": "Alice Smith"})])
    assert state.collection("user") == {"1": {"name": "Alice Smith"}, "2": {"name": "Bob"}}
    assert state.get("user", "1") == {"name": "Alice Smith"}
    assert state.get("user", "9") is None and state.get("user", "9", 0) == 0
    assert state.types == ["user"] and len(state) == 2 and ("user", "2") in state


def test_set_operations_delete_and_reset() -> None:
    state = MaterializedState()
    state.apply(ups("a", "k", 1))           # upsert of a new key sets it
    state.apply(ins("a", "k", 2))           # insert of an existing key replaces it
    state.apply(upd("b", "x", 3))           # update of an unknown key sets it
    assert state.to_dict() == {"a": {"k": 2}, "b": {"x": 3}}
    state.apply(dele("a", "k"))
    state.apply(dele("c", "never"))         # a delete of nothing still makes the type known
    assert state.to_dict() == {"a": {}, "b": {"x": 3}, "c": {}}
    assert state.types == ["a", "b", "c"]
    state.apply(RESET)
    assert state.to_dict() == {} and state.types == []
    state.apply(ins("b", "y", None))        # null is a value
    assert ("b", "y") in state and state.get("b", "y", "absent") is None


def test_snapshot_markers_are_boundaries_only() -> None:
    state = MaterializedState()
    state.apply(ins("a", "1", 1))
    state.apply(START)
    assert state.in_snapshot and state.to_dict() == {"a": {"1": 1}}
    state.apply(ins("a", "2", 2))
    state.apply(END)
    assert not state.in_snapshot and state.to_dict() == {"a": {"1": 1, "2": 2}}
    assert state.applied_count == 4


def test_a_bad_event_in_a_batch_applies_nothing() -> None:
    state = MaterializedState()
    bad = {"type": "a", "key": "2", "headers": {"operation": "insert"}}
    with pytest.raises(StateEventError, match="no value"):
        state.apply_batch([ins("a", "1", 1), bad], offset="0_2")
    assert state.to_dict() == {} and state.offset is None


def test_collection_is_a_read_only_consistent_copy() -> None:
    state = MaterializedState()
    state.apply(ins("a", "1", 1))
    view = state.collection("a")
    with pytest.raises(TypeError):
        view["2"] = 2  # type: ignore[index]
    state.apply(ins("a", "2", 2))
    assert dict(view) == {"1": 1}           # a copy taken at the call
    assert state.collection("nothing") == {}


def test_batches_are_atomic_for_readers() -> None:
    # A reader holding locked() sees a whole batch or none of it.
    state = MaterializedState()
    seen: list[int] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            with state.locked() as s:
                seen.append(len(s))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(200):
            state.apply_batch([RESET, *[ins("a", str(i), i) for i in range(50)]], offset=str(n))
    finally:
        stop.set()
        thread.join(10)
    assert seen and set(seen) <= {0, 50}
    assert state.offset == "199"


# -- a model and random sequences -----------------------------------------------------------
@given(st.lists(op_strategy, max_size=60), st.data())
def test_random_sequences_match_the_model(ops: list[tuple[str, Any, Any, Any]],
                                          data: st.DataObject) -> None:
    events = [to_event(op) for op in ops]
    one = MaterializedState()
    for event in events:
        one.apply(event)
    assert flat(one) == model(ops)
    # Any split into batches gives the same state.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(events)), max_size=5)))
    batched, start = MaterializedState(), 0
    for cut in [*cuts, len(events)]:
        batched.apply_batch(events[start:cut])
        start = cut
    assert batched.to_dict() == one.to_dict() and batched.types == one.types


# -- BlockAssembler ------------------------------------------------------------------------
def test_snapshot_spanning_chunks_is_held_until_its_end() -> None:
    blocks = BlockAssembler()
    assert blocks.add([ins("a", "0", 0)], up_to_date=False) == [ins("a", "0", 0)]
    assert blocks.add([RESET, START, ins("a", "1", 1)], up_to_date=True) is None
    assert blocks.holding and blocks.held_events == 3
    assert blocks.add([], up_to_date=True) is None        # a heartbeat: still inside
    assert blocks.add([ins("a", "2", 2), END, ins("a", "3", 3)], up_to_date=True) == [
        RESET, START, ins("a", "1", 1), ins("a", "2", 2), END, ins("a", "3", 3)]
    assert not blocks.holding


def test_a_reset_inside_a_snapshot_is_part_of_the_block() -> None:
    # What StateProducer.snapshot(reset=True) writes: the state is replaced in one step.
    blocks = BlockAssembler()
    assert blocks.add([START, RESET], up_to_date=True) is None
    assert blocks.add([ins("a", "1", 1)], up_to_date=True) is None
    assert blocks.add([END], up_to_date=True) == [START, RESET, ins("a", "1", 1), END]


def test_a_block_beyond_max_held_is_released_in_parts_not_dropped() -> None:
    blocks = BlockAssembler(max_held=3)
    assert blocks.add([START, ins("a", "1", 1)], up_to_date=True) is None
    part = blocks.add([ins("a", "2", 2), ins("a", "3", 3)], up_to_date=True)
    assert part == [START, ins("a", "1", 1), ins("a", "2", 2), ins("a", "3", 3)]
    assert blocks.split_blocks == 1
    assert blocks.add([ins("a", "4", 4)], up_to_date=True) is None  # still inside the block
    assert blocks.add([END], up_to_date=True) == [ins("a", "4", 4), END]
    with pytest.raises(ValueError, match="max_held"):
        BlockAssembler(max_held=0)


def test_reset_ending_a_chunk_waits_for_what_follows() -> None:
    blocks = BlockAssembler()
    assert blocks.add([ins("a", "1", 1), RESET], up_to_date=False) is None
    assert blocks.add([ins("a", "2", 2)], up_to_date=False) == [ins("a", "1", 1), RESET,
                                                               ins("a", "2", 2)]
    # At the tail (up to date) a reset is applied at once: nothing else is known to follow.
    assert blocks.add([RESET], up_to_date=True) == [RESET]
    assert blocks.add([], up_to_date=True) == []


def chunked(events: list[dict[str, Any]], cuts: list[int]
            ) -> list[tuple[list[dict[str, Any]], str, bool]]:
    bounds = sorted(set([0, *cuts, len(events)]))
    chunks = [(events[a:b], f"{i + 1:04d}", b == len(events))
              for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))]
    return chunks or [([], "0001", True)]


@given(st.lists(op_strategy, max_size=50), st.lists(st.integers(0, 50), max_size=8))
def test_groups_keep_every_event_once_in_order_and_never_split_a_snapshot(
        ops: list[tuple[str, Any, Any, Any]], cuts: list[int]) -> None:
    events = [to_event(op) for op in ops]
    blocks, out = BlockAssembler(), []
    for chunk, _offset, up_to_date in chunked(events, [c for c in cuts if c <= len(events)]):
        group = blocks.add(chunk, up_to_date)
        if group is not None:
            # After a group the state is never inside a snapshot block.
            state = MaterializedState()
            state.apply_batch(out + group)
            assert not state.in_snapshot
            out.extend(group)
    if not blocks.holding:
        assert out == events
    else:  # an unfinished snapshot at the end is held, not dropped or applied half
        assert out == events[:len(out)] and blocks.held_events == len(events) - len(out)


# -- SqliteState ---------------------------------------------------------------------------
def test_sqlite_schema_offset_and_sql(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SqliteState(path) as db:
        assert db.offset is None and db.to_dict() == {}
        db.apply_batch([ins("user", "1", {"name": "Ann", "age": 31}),
                        ins("user", "2", {"name": "Bo", "age": 20}), dele("user", "2"),
                        ups("team", "t", ["x"])], offset="0_4")
        assert db.offset == "0_4" and db.applied_count == 4
        assert db.to_dict() == {"user": {"1": {"name": "Ann", "age": 31}},
                                "team": {"t": ["x"]}}
    # Another connection queries it with plain SQL.
    con = sqlite3.connect(path)
    assert con.execute("SELECT key, json_extract(value, '$.name') FROM ds_state "
                       "WHERE type = 'user'").fetchall() == [("1", "Ann")]
    assert con.execute("SELECT value FROM ds_state_meta WHERE name = 'offset'"
                       ).fetchone() == ("0_4",)
    con.close()
    with SqliteState(path) as again:
        assert again.offset == "0_4" and again.get("team", "t") == ["x"]
        assert again.types == ["user", "team"]
        assert again.query("SELECT count(*) FROM ds_state") == [(2,)]


def test_sqlite_refuses_another_stream_and_bad_prefix(tmp_path: Path) -> None:
    with SqliteState(tmp_path / "s.db") as db:
        db.bind_stream("http://u:pw@h/one?token=t")
        db.bind_stream("http://u:pw@h/one?token=t")
        with pytest.raises(ValueError, match="holds the state of http://\\*\\*\\*@h/one"):
            db.bind_stream("http://h/two")
        assert "pw" not in str(db.query("SELECT value FROM ds_state_meta"))
    with pytest.raises(ValueError, match="table_prefix"):
        SqliteState(tmp_path / "x.db", table_prefix="x; DROP TABLE")


class Crash(Exception):
    pass


class CrashingSqlite(SqliteState):
    """Fails inside the transaction of the ``at``-th group after ``partial`` events."""

    def __init__(self, path: Path, at: int, partial: int) -> None:
        super().__init__(path)
        self.at, self.partial, self.groups = at, partial, 0

    def _apply_all(self, events: list[dict[str, Any]]) -> None:
        if self.groups == self.at:
            super()._apply_all(events[:self.partial])
            raise Crash
        self.groups += 1
        super()._apply_all(events)


def follow_chunks(store: MaterializedState | SqliteState,
                  chunks: list[tuple[list[dict[str, Any]], str, bool]]) -> None:
    """What StateFollower does with each chunk, from the store's offset on."""
    blocks = BlockAssembler()
    start = 0 if store.offset is None else int(store.offset)
    for events, offset, up_to_date in chunks[start:]:
        group = blocks.add(events, up_to_date)
        if group is not None:
            store.apply_batch(group, offset=offset)


@settings(max_examples=40)
@given(st.lists(op_strategy, max_size=40), st.lists(st.integers(0, 40), max_size=8),
       st.integers(0, 10), st.integers(0, 10))
def test_sqlite_crashed_anywhere_then_resumed_equals_memory(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, Any, Any, Any]],
        cuts: list[int], crash_group: int, partial: int) -> None:
    events = [to_event(op) for op in ops]
    chunks = chunked(events, [c for c in cuts if c <= len(events)])
    path = tmp_path_factory.mktemp("crash") / "view.db"
    memory = MaterializedState()
    follow_chunks(memory, chunks)
    crashing = CrashingSqlite(path, crash_group, partial)
    with contextlib.suppress(Crash):
        follow_chunks(crashing, chunks)
    crashing.close()  # the process is gone; the cut transaction was rolled back
    with SqliteState(path) as resumed:
        follow_chunks(resumed, chunks)
        assert flat(resumed) == flat(memory)
        assert resumed.offset == memory.offset
        # Nothing applied twice, nothing missed: every applied event counted once.
        assert resumed.applied_count == memory.applied_count
