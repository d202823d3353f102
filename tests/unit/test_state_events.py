"""State Protocol events: what the writer builds and refuses, what the reader accepts
(STATE-PROTOCOL.md §4, §5; server-free)."""

from __future__ import annotations

import datetime as dt
import json
import math
from typing import Any

import pytest

from durable_streams.state import StateEventError, change_event, check_event, control_event
from durable_streams.state.events import encode_event, format_timestamp

from .state_schema import schema_errors

UTC = dt.timezone.utc


# -- building (§5.1) ------------------------------------------------------------------------
def test_insert_event_shape_and_schema() -> None:
    event = change_event("insert", "user", "user:1", {"name": "Alice"}, txid="tx-1",
                         timestamp=dt.datetime(2025, 1, 15, 10, 30, tzinfo=UTC))
    assert event == {"type": "user", "key": "user:1", "value": {"name": "Alice"},
                     "headers": {"operation": "insert", "txid": "tx-1",
                                 "timestamp": "2025-01-15T10:30:00Z"}}
    assert schema_errors(event) == []
    assert json.loads(encode_event(event)) == event


@pytest.mark.parametrize("operation", ["insert", "update", "upsert", "delete"])
def test_every_operation_validates_against_the_schema(operation: str) -> None:
    value = None if operation == "delete" else {"n": 1}
    kwargs: dict[str, Any] = {} if value is None else {"value": value}
    event = change_event(operation, "t", "k", **kwargs, old_value={"n": 0})
    assert schema_errors(event) == []


@pytest.mark.parametrize("control", ["snapshot-start", "snapshot-end", "reset"])
def test_control_events_validate(control: str) -> None:
    assert control_event(control) == {"headers": {"control": control}}
    assert schema_errors(control_event(control)) == []


def test_schema_check_is_not_vacuous() -> None:
    # The adjusted schema still refuses what the protocol refuses.
    assert schema_errors({"type": "", "key": "k", "value": 1, "headers": {"operation": "insert"}})
    assert schema_errors({"type": "t", "key": "k", "headers": {"operation": "upsert"}})
    assert schema_errors({"type": "t", "key": "k", "value": 1, "headers": {"operation": "x"}})
    served = {"type": "t", "key": "k", "value": 1,
              "headers": {"operation": "insert", "offset": "0_1"}}
    assert schema_errors(served)  # the served headers.offset is outside the schema...
    assert schema_errors(served, served=True) == []  # ...and set aside for served events


def test_delete_omits_value_unless_given() -> None:
    assert "value" not in change_event("delete", "t", "k")
    assert change_event("delete", "t", "k", None)["value"] is None


@pytest.mark.parametrize(("args", "exc", "words"), [
    (("insert", "", "k", 1), ValueError, "type must be a non-empty str"),
    (("insert", "t", "", 1), ValueError, "key must be a non-empty str"),
    (("insert", 3, "k", 1), TypeError, "type must be a non-empty str, got int"),
    (("insert", "t", 7, 1), TypeError, "key must be a non-empty str, got int"),
    (("insert", "t", "k"), TypeError, "needs a value"),
    (("update", "t", "k"), TypeError, "needs a value"),
    (("merge", "t", "k", 1), ValueError, "operation must be one of"),
    (("insert", "t", "k", {1, 2}), TypeError, "not JSON-serialisable"),
    (("insert", "t", "k", math.nan), TypeError, "not JSON-serialisable"),
    (("insert", "t", "k", {"when": dt.date(2025, 1, 1)}), TypeError, "schemas="),
])
def test_bad_events_are_refused_with_the_fix(args: tuple[Any, ...], exc: type[Exception],
                                             words: str) -> None:
    with pytest.raises(exc, match=words):
        change_event(*args)


def test_txid_must_be_non_empty() -> None:
    with pytest.raises(ValueError, match="txid must be a non-empty str"):
        change_event("insert", "t", "k", 1, txid="")
    with pytest.raises(TypeError, match="txid"):
        change_event("insert", "t", "k", 1, txid=5)  # type: ignore[arg-type]


def test_old_value_must_be_json() -> None:
    with pytest.raises(TypeError, match="old_value of 't'/'k'"):
        change_event("update", "t", "k", 1, old_value=object())


# -- timestamps (RFC 3339) ------------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    (dt.datetime(2025, 1, 15, 10, 30, 0, 123000, tzinfo=UTC), "2025-01-15T10:30:00.123000Z"),
    (dt.datetime(2025, 1, 15, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
     "2025-01-15T12:00:00+02:00"),
    ("2025-01-15T10:30:00Z", "2025-01-15T10:30:00Z"),
    ("2025-01-15T10:30:00.5+05:30", "2025-01-15T10:30:00.5+05:30"),
    ("2016-12-31T23:59:60Z", "2016-12-31T23:59:60Z"),  # a leap second
])
def test_timestamps_formatted_or_kept(value: object, expected: str) -> None:
    assert format_timestamp(value) == expected


@pytest.mark.parametrize("bad", ["2025-01-15", "2025-01-15 10:30:00Z", "2025-02-30T10:00:00Z",
                                 "2025-01-15T24:00:00Z", "2025-01-15T10:30:00",
                                 "2025-01-15T10:30:00+25:00", "yesterday", ""])
def test_bad_timestamp_strings_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        change_event("insert", "t", "k", 1, timestamp=bad)


def test_naive_datetime_refused() -> None:
    with pytest.raises(ValueError, match="naive datetime"):
        format_timestamp(dt.datetime(2025, 1, 1))
    with pytest.raises(TypeError, match="timezone-aware datetime or an RFC 3339 string"):
        format_timestamp(1700000000)


# -- checking what a reader received (§9.1, §9.3) -------------------------------------------
def test_served_events_with_unknown_header_fields_are_accepted() -> None:
    served = {"type": "t", "key": "k", "value": 1,
              "headers": {"operation": "upsert", "offset": "0_5", "from": "x"}}
    assert check_event(served) is served
    assert check_event({"headers": {"control": "reset", "offset": "0_5"}})


@pytest.mark.parametrize(("item", "words"), [
    ([1, 2], "is a list, not a JSON object"),
    ({"type": "t"}, "headers is null"),
    ({"headers": {}}, "neither 'operation' nor 'control'"),
    ({"headers": {"control": "rewind"}}, "headers.control is a str of 6 characters"),
    ({"headers": {"control": "reset", "operation": "insert"}}, "both"),
    ({"headers": {"control": ["reset"]}}, "headers.control is a list"),
    ({"type": "t", "key": "k", "value": 1, "headers": {"operation": {"x": 1}}},
     "operation is a dict"),
    ({"type": "t", "key": "k", "headers": {"operation": "insert"}}, "has no value"),
    ({"type": "t", "key": "k", "headers": {"operation": "upsert"}}, "has no value"),
    ({"type": "", "key": "k", "value": 1, "headers": {"operation": "insert"}}, "type is a str"),
    ({"type": "t", "key": 5, "value": 1, "headers": {"operation": "insert"}}, "key is a int"),
    ({"type": "t", "key": "k", "value": 1, "headers": {"operation": "drop"}}, "operation is"),
    ({"type": "t", "key": "k", "value": 1, "headers": {"operation": "insert", "txid": ""}},
     "txid"),
    ({"type": "t", "key": "k", "headers": {"operation": "delete", "timestamp": 5}},
     "timestamp is a int"),
])
def test_malformed_events_are_refused(item: object, words: str) -> None:
    with pytest.raises(StateEventError, match=words) as info:
        check_event(item, offset="0_9")
    assert info.value.offset == "0_9"


def test_refusals_never_echo_stream_content() -> None:
    secret = "<script>alert('pwned')</script>" * 10
    with pytest.raises(StateEventError) as info:
        check_event({"type": "t", "key": "k", "value": 1, "headers": {"operation": secret}})
    assert "script" not in str(info.value)
