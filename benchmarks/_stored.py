"""What a stream really holds after a throughput run: the check behind every throughput row.

A producer that reuses a (producer id, epoch) pair gets ``204 No Content`` for every batch
the server takes for a duplicate, and nothing is stored; its "throughput" is then the speed
of being ignored. So every throughput row reads its stream back before it is deleted and
compares what is stored with what was sent. A round whose count is wrong makes its row
invalid (``verdict`` below); it is never reported as a result.

Standard library only (``http.client``): it is imported by ``_baseline_official.py`` inside
the official client's virtualenv and by the before/after worker, where neither this project
nor urllib3 may be importable.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from collections.abc import Sequence
from typing import Any

JSON_TYPE = "application/json"


def _connection(url: str) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                      timeout=120)
    return conn, parts.path


def read_all(url: str) -> tuple[str, list[bytes]]:
    """GET the whole stream from its start (catch-up reads, following
    ``Stream-Next-Offset`` until ``Stream-Up-To-Date``); the content type and the bodies."""
    conn, path = _connection(url)
    bodies: list[bytes] = []
    offset = "-1"
    content_type = ""
    try:
        for _ in range(100_000):
            conn.request("GET", f"{path}?offset={urllib.parse.quote(offset, safe='')}")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: HTTP {resp.status}")
            content_type = (resp.getheader("content-type") or "").split(";")[0].strip()
            if body:
                bodies.append(body)
            nxt = resp.getheader("stream-next-offset")
            up_to_date = (resp.getheader("stream-up-to-date") or "").lower() == "true"
            if up_to_date or not nxt or (nxt == offset and not body):
                return content_type, bodies
            offset = nxt
        raise RuntimeError(f"GET {path}: no end after 100,000 reads")
    finally:
        conn.close()


def stored_counts(url: str) -> dict[str, int]:
    """``{"messages": ..., "bytes": ...}`` stored in the stream at ``url``.

    JSON streams: messages = items in the returned arrays, bytes = their compact
    re-serialisation is not comparable, so bytes = total body bytes. Byte streams:
    bytes = total length, messages = newline-terminated records (the benchmark's byte
    messages each end with ``\\n``; 1 MiB messages are counted by bytes only).
    """
    content_type, bodies = read_all(url)
    total = sum(len(b) for b in bodies)
    if content_type == JSON_TYPE:
        items = 0
        for body in bodies:
            value = json.loads(body)
            items += len(value) if isinstance(value, list) else 1
        return {"messages": items, "bytes": total}
    return {"messages": sum(b.count(b"\n") for b in bodies), "bytes": total}


def check(url: str, *, messages: int | None = None, nbytes: int | None = None
          ) -> dict[str, Any]:
    """Read the stream back; ``{"stored_ok": bool, "stored": "...", ...counts}``.

    ``messages``/``nbytes``: the expected counts (None: not checked)."""
    try:
        counts = stored_counts(url)
    except Exception as exc:  # a read failure is a failed check, not a crash of the run
        return {"stored_ok": False, "stored": f"read-back failed: {type(exc).__name__}: {exc}"}
    problems = []
    if messages is not None and counts["messages"] != messages:
        problems.append(f"{counts['messages']:,} of {messages:,} messages")
    if nbytes is not None and counts["bytes"] != nbytes:
        problems.append(f"{counts['bytes']:,} of {nbytes:,} bytes")
    return {"stored_ok": not problems,
            "stored": "stored " + ", ".join(problems) if problems else "count verified",
            "stored_messages": counts["messages"], "stored_bytes": counts["bytes"]}


def expected_bytes(messages: Sequence[Any], *, json_mode: bool) -> int | None:
    """Bytes a byte stream must hold after ``messages`` (None for JSON: the server may
    re-serialise, so only the item count is compared)."""
    if json_mode:
        return None
    return sum(len(m) for m in messages)


def delete(url: str) -> None:
    conn, path = _connection(url)
    try:
        conn.request("DELETE", path)
        conn.getresponse().read()
    finally:
        conn.close()


def verdict(results: Sequence[dict[str, Any]]) -> str | None:
    """None when every round's stored count was right; else why the row is invalid."""
    bad = [(i, r) for i, r in enumerate(results) if not r.get("stored_ok", False)]
    if not bad:
        return None
    i, r = bad[0]
    return (f"{len(bad)} of {len(results)} round(s) stored the wrong count "
            f"(round {i + 1}: {r.get('stored', 'not checked')})")
