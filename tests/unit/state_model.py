"""A model of State Protocol materialisation and a hypothesis strategy of operations, shared
by the unit properties and the server test of random sequences."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from durable_streams.state import MaterializedState, SqliteState, change_event, control_event

TYPES, KEYS = ["a", "b", "c"], ["1", "2", "3", "4"]
op_strategy = st.one_of(
    st.tuples(st.sampled_from(["insert", "update", "upsert"]), st.sampled_from(TYPES),
              st.sampled_from(KEYS), st.integers(-5, 5) | st.none() | st.text(max_size=3)),
    st.tuples(st.just("delete"), st.sampled_from(TYPES), st.sampled_from(KEYS), st.none()),
    st.tuples(st.sampled_from(["reset", "snapshot-start", "snapshot-end"]), st.none(),
              st.none(), st.none()),
)


def to_event(op: tuple[str, Any, Any, Any]) -> dict[str, Any]:
    name, t, k, v = op
    if t is None:
        return control_event(name)
    return change_event(name, t, k) if name == "delete" else change_event(name, t, k, v)


def model(ops: list[tuple[str, Any, Any, Any]]) -> tuple[list[str], dict[tuple[str, str], Any]]:
    """Types in first-touch order since the last reset, and the (type, key) -> value map."""
    types: list[str] = []
    values: dict[tuple[str, str], Any] = {}
    for name, t, k, v in ops:
        if name == "reset":
            types, values = [], {}
        elif t is not None:
            if t not in types:
                types.append(t)
            if name == "delete":
                values.pop((t, k), None)
            else:
                values[(t, k)] = v
    return types, values


def flat(state: MaterializedState | SqliteState) -> tuple[list[str], dict[tuple[str, str], Any]]:
    return state.types, {(t, k): v for t, k, v in state}
