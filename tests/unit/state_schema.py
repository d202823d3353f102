"""The State Protocol JSON schema (tests/unit/data/state-protocol.schema.json, the file that
ships with the protocol text), adjusted for what the reference implementations do
(README, "State Protocol"): ``upsert`` is an operation (with a required value, like
insert/update), and
the ``headers.offset`` that the server adds to every event it serves is set aside before
validating. Uses ``jsonschema`` when it is installed (the ``test`` extra), else a small
checker of the same rules."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("data") / "state-protocol.schema.json"


def load_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    schema = copy.deepcopy(schema)
    schema["definitions"]["ChangeHeaders"]["properties"]["operation"]["enum"].append("upsert")
    schema["definitions"]["ChangeMessage"]["allOf"].append({
        "if": {"properties": {"headers": {"properties": {"operation": {"const": "upsert"}}}}},
        "then": {"required": ["value"]},
    })
    return schema


def _strip_served(event: Any) -> Any:
    if isinstance(event, dict) and isinstance(event.get("headers"), dict):
        headers = {k: v for k, v in event["headers"].items() if k != "offset"
                   or "control" in event["headers"]}
        return {**event, "headers": headers}
    return event


def schema_errors(event: Any, *, served: bool = False) -> list[str]:
    """The schema's complaints about ``event`` ([] when valid)."""
    if served:
        event = _strip_served(event)
    try:
        import jsonschema
    except ImportError:  # pragma: no cover - the test extra installs it
        return _fallback(event)
    validator = jsonschema.Draft7Validator(load_schema(),
                                           format_checker=jsonschema.Draft7Validator
                                           .FORMAT_CHECKER)
    return [e.message for e in validator.iter_errors(event)]


def _fallback(event: Any) -> list[str]:  # pragma: no cover - without jsonschema only
    if not isinstance(event, dict) or not isinstance(event.get("headers"), dict):
        return ["not an object with headers"]
    h = event["headers"]
    if "control" in h:
        ok = (set(event) == {"headers"} and set(h) <= {"control", "offset"}
              and h["control"] in ("snapshot-start", "snapshot-end", "reset"))
        return [] if ok else ["bad control message"]
    problems = []
    if not set(event) <= {"type", "key", "value", "old_value", "headers"}:
        problems.append("extra fields")
    if not set(h) <= {"operation", "txid", "timestamp"}:
        problems.append("extra header fields")
    if h.get("operation") not in ("insert", "update", "delete", "upsert"):
        problems.append("bad operation")
    for f in ("type", "key"):
        if not isinstance(event.get(f), str) or not event[f]:
            problems.append(f"bad {f}")
    if h.get("operation") != "delete" and "value" not in event:
        problems.append("no value")
    if "txid" in h and (not isinstance(h["txid"], str) or not h["txid"]):
        problems.append("bad txid")
    return problems
