"""State Protocol events: building them (writers) and checking them (readers).

A *change event* is ``{"type", "key", "value", "old_value"?, "headers": {"operation",
"txid"?, "timestamp"?}}``; a *control event* is ``{"headers": {"control"}}`` with
``control`` one of ``snapshot-start``, ``snapshot-end``, ``reset``. The operations are
``insert``, ``update``, ``delete`` and ``upsert`` (the last is not in the protocol text nor
in its JSON schema, but the TypeScript package writes and reads it; see the README's "State
Protocol" section).

Two directions, two strictness levels:

- :func:`change_event` / :func:`control_event` build what this library writes, and refuse
  anything the protocol does not allow (an empty type or key, a value that is not JSON, a
  timestamp that is not RFC 3339, an empty txid) with a ``ValueError``/``TypeError`` that
  says what to change, before anything is queued.
- :func:`check_event` checks what a reader received. Stream content is untrusted: a
  malformed event raises :class:`StateEventError`, whose message describes the problem
  without repeating the content. Fields the protocol does not list are accepted and kept
  (the server adds ``headers.offset`` to every event it serves; the TypeScript package
  knows ``headers.from``).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from typing import Any

__all__ = [
    "CHANGE_OPERATIONS",
    "CONTROLS",
    "SET_OPERATIONS",
    "StateEvent",
    "StateEventError",
    "change_event",
    "check_event",
    "control_event",
    "control_of",
    "encode_event",
    "format_timestamp",
    "is_change",
    "is_control",
]

#: A decoded state event: a JSON object.
StateEvent = dict[str, Any]

#: Operations that set the value at (type, key).
SET_OPERATIONS = frozenset({"insert", "update", "upsert"})
#: Every change operation this library writes and reads.
CHANGE_OPERATIONS = frozenset({"insert", "update", "upsert", "delete"})
#: Every control event.
CONTROLS = frozenset({"snapshot-start", "snapshot-end", "reset"})

_MISSING: Any = object()

# RFC 3339 section 5.6 "date-time" (the "T" separator, a "Z" or numeric offset).
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))\Z"
)


class StateEventError(ValueError):
    """A message read from a stream is not a valid State Protocol event.

    ``offset`` is the stream offset after the chunk that carried it, when known.
    """

    def __init__(self, message: str, *, offset: str | None = None) -> None:
        super().__init__(message if offset is None else f"{message} (chunk ending at {offset})")
        self.offset = offset


# -- writing -------------------------------------------------------------------------------


def format_timestamp(timestamp: object) -> str:
    """An RFC 3339 timestamp string from a timezone-aware ``datetime`` or a string.

    A ``datetime`` in UTC is written with ``Z``. A naive ``datetime`` is refused (its zone
    is unknown); a string is checked and returned unchanged.
    """
    if isinstance(timestamp, _dt.datetime):
        offset = timestamp.utcoffset()
        if offset is None:
            raise ValueError(
                "timestamp is a naive datetime (no timezone), so its instant is unknown; pass "
                "an aware one, e.g. datetime.now(timezone.utc)"
            )
        text = timestamp.isoformat()
        return text[:-6] + "Z" if offset == _dt.timedelta(0) and text.endswith("+00:00") else text
    if isinstance(timestamp, str):
        if not _valid_rfc3339(timestamp):
            raise ValueError(
                f"timestamp {timestamp!r} is not an RFC 3339 date-time; use e.g. "
                "'2025-01-15T10:30:00Z' or pass a timezone-aware datetime"
            )
        return timestamp
    raise TypeError(
        f"timestamp must be a timezone-aware datetime or an RFC 3339 string, got "
        f"{type(timestamp).__name__}"
    )


def _valid_rfc3339(text: str) -> bool:
    m = _RFC3339.match(text)
    if m is None:
        return False
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    try:
        _dt.datetime(year, month, day, hour, minute, min(second, 59))
    except ValueError:
        return False
    if second > 60:
        return False
    return m.group(9) is None or (int(m.group(9)) <= 23 and int(m.group(10)) <= 59)


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a non-empty str, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must be a non-empty str (State Protocol §5.1), got ''")
    return value


def _check_json(what: str, value: Any, type_: str, key: str) -> None:
    try:
        json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"the {what} of {type_!r}/{key!r} is not JSON-serialisable ({exc}); convert it "
            "first (e.g. dataclasses.asdict(obj), model.model_dump(mode='json')), or give a "
            "schemas= function for this type that returns plain JSON data"
        ) from None


def change_event(
    operation: str,
    type: str,
    key: str,
    value: Any = _MISSING,
    *,
    old_value: Any = _MISSING,
    txid: str | None = None,
    timestamp: object = None,
) -> StateEvent:
    """Build a checked change event (the dict that is written as JSON).

    ``value`` is required for ``insert``, ``update`` and ``upsert`` and omitted for
    ``delete`` unless given; ``old_value``, ``txid`` and ``timestamp`` are written only
    when given.
    """
    if operation not in CHANGE_OPERATIONS:
        raise ValueError(
            f"operation must be one of {sorted(CHANGE_OPERATIONS)}, got {operation!r}"
        )
    _check_name("type", type)
    _check_name("key", key)
    event: StateEvent = {"type": type, "key": key}
    if value is _MISSING:
        if operation != "delete":
            raise TypeError(f"{operation} of {type!r}/{key!r} needs a value")
    else:
        _check_json("value", value, type, key)
        event["value"] = value
    if old_value is not _MISSING:
        _check_json("old_value", old_value, type, key)
        event["old_value"] = old_value
    headers: dict[str, Any] = {"operation": operation}
    if txid is not None:
        headers["txid"] = _check_name("txid", txid)
    if timestamp is not None:
        headers["timestamp"] = format_timestamp(timestamp)
    event["headers"] = headers
    return event


def control_event(control: str) -> StateEvent:
    """``{"headers": {"control": control}}``, for ``snapshot-start``/``-end`` or ``reset``."""
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {sorted(CONTROLS)}, got {control!r}")
    return {"headers": {"control": control}}


def encode_event(event: StateEvent) -> str:
    """The compact JSON text of an event (what one append carries)."""
    return json.dumps(event, allow_nan=False, separators=(",", ":"), ensure_ascii=False)


# -- reading -------------------------------------------------------------------------------


def is_change(event: StateEvent) -> bool:
    """True for a change event (its headers carry ``operation``)."""
    headers = event.get("headers")
    return isinstance(headers, dict) and "operation" in headers


def is_control(event: StateEvent) -> bool:
    """True for a control event (its headers carry ``control``)."""
    headers = event.get("headers")
    return isinstance(headers, dict) and "control" in headers


def control_of(event: StateEvent) -> str | None:
    """The control name of a (checked) control event, ``None`` for a change event."""
    control = event["headers"].get("control")
    return control if isinstance(control, str) else None


def _describe(value: object) -> str:
    # Never the content itself: stream data is untrusted and may be large or hostile.
    if isinstance(value, str):
        return f"a str of {len(value)} characters"
    return "null" if value is None else f"a {type(value).__name__}"


def check_event(item: object, *, offset: str | None = None) -> StateEvent:
    """Return ``item`` if it is a valid State Protocol event, else raise StateEventError.

    Checked: a JSON object with a ``headers`` object holding exactly one of ``operation``
    (insert/update/upsert/delete) and ``control`` (snapshot-start/snapshot-end/reset); for
    a change, a non-empty string ``type`` and ``key``, a ``value`` unless it is a delete, a
    non-empty string ``txid`` and a string ``timestamp`` when present. Other fields are
    kept as they are.
    """
    # The common case first, with as few steps as possible (readers check every event).
    if type(item) is dict:
        headers = item.get("headers")
        if type(headers) is dict:
            operation = headers.get("operation")
            type_, key = item.get("type"), item.get("key")
            if (type(operation) is str and operation in CHANGE_OPERATIONS
                    and "control" not in headers and type(type_) is str and type_
                    and type(key) is str and key
                    and (operation == "delete" or "value" in item)):
                txid = headers.get("txid", _MISSING)
                timestamp = headers.get("timestamp", _MISSING)
                if ((txid is _MISSING or (type(txid) is str and txid))
                        and (timestamp is _MISSING or type(timestamp) is str)):
                    return item
    return _check_slowly(item, offset)


def _check_slowly(item: object, offset: str | None) -> StateEvent:
    if not isinstance(item, dict):
        raise StateEventError(f"a stream message is {_describe(item)}, not a JSON object "
                              "State Protocol event", offset=offset)
    headers = item.get("headers")
    if not isinstance(headers, dict):
        raise StateEventError(f"a message's headers is {_describe(headers)}, not an object "
                              "with 'operation' or 'control'", offset=offset)
    operation = headers.get("operation", _MISSING)
    control = headers.get("control", _MISSING)
    if operation is _MISSING:
        if control is _MISSING:
            raise StateEventError("a message's headers have neither 'operation' nor "
                                  "'control': it is not a State Protocol event", offset=offset)
        if not isinstance(control, str) or control not in CONTROLS:
            raise StateEventError(f"a control event's headers.control is {_describe(control)}"
                                  f", not one of {sorted(CONTROLS)}", offset=offset)
        return item
    if control is not _MISSING:
        raise StateEventError("a message's headers have both 'operation' and 'control'",
                              offset=offset)
    if not isinstance(operation, str) or operation not in CHANGE_OPERATIONS:
        raise StateEventError(f"a change event's headers.operation is {_describe(operation)}"
                              f", not one of {sorted(CHANGE_OPERATIONS)}", offset=offset)
    for field in ("type", "key"):
        value = item.get(field)
        if not isinstance(value, str) or not value:
            raise StateEventError(f"a change event's {field} is {_describe(value)}, not a "
                                  "non-empty string", offset=offset)
    if operation != "delete" and "value" not in item:
        raise StateEventError(f"an {operation} event has no value", offset=offset)
    txid = headers.get("txid", _MISSING)
    if txid is not _MISSING and (not isinstance(txid, str) or not txid):
        raise StateEventError(f"a change event's headers.txid is {_describe(txid)}, not a "
                              "non-empty string", offset=offset)
    timestamp = headers.get("timestamp", _MISSING)
    if timestamp is not _MISSING and not isinstance(timestamp, str):
        raise StateEventError(f"a change event's headers.timestamp is {_describe(timestamp)}"
                              ", not a string", offset=offset)
    return item

