# mypy: ignore-errors
# (it imports the official package, which only exists inside its own virtualenv)
"""Baseline tasks for the released official client (PyPI ``durable-streams`` 0.1.0).

Runs inside the client's own virtualenv (``benchmarks/.venv-official``), never in the
project's interpreter: both distributions are imported as ``durable_streams``. The runner
calls ``python _baseline_official.py '<json task>'`` and reads the last line, which is
``RESULT <json>``. Only the client's public API is used: ``AsyncDurableStream`` /
``DurableStream`` ``create``, ``append`` and ``delete``.

Tasks (all take ``url``, the server's base URL):

- ``async_throughput``: ``mode`` ("json"/"bytes"), ``n``, ``size``, ``patterns`` (list of
  ``[kind, concurrency]``: ``gather`` = waves of ``asyncio.gather`` over ``concurrency``
  appends, ``window`` = ``concurrency`` workers each awaiting one append at a time),
  ``repeat`` -> best msg/s per pattern.
- ``sync_append``: ``mode``, ``n``, ``size`` -> msg/s of a plain ``DurableStream.append``
  loop and the per-call latency summary (the blocking round trip).
- ``async_latency``: ``n``, ``size`` -> latency of one awaited ``append`` at a time.
- ``create``: ``n`` -> latency summary of ``DurableStream.create``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from typing import Any

from _common import (
    BYTES_TYPE,
    JSON_TYPE,
    bytes_messages,
    json_object,
    latency_summary,
    unique_name,
)
from _stored import check as check_stored


def _messages(mode: str, n: int, size: int) -> list[Any]:
    # JSON mode: the official client serialises Python values itself (a str would be stored
    # as a JSON string), so it gets the dicts whose json.dumps is our 100-byte JSON text.
    if mode == "json":
        return [json_object(i, size) for i in range(n)]
    return bytes_messages(n, size)


def _ct(mode: str) -> str:
    return JSON_TYPE if mode == "json" else BYTES_TYPE


def _check(url: str, mode: str, messages: list[Any]) -> dict[str, Any]:
    """Read the stream back before it is deleted: is every message stored?"""
    nbytes = None if mode == "json" else sum(len(m) for m in messages)
    return check_stored(url, messages=len(messages), nbytes=nbytes)


async def _one_async_run(url: str, mode: str, messages: list[Any], kind: str, conc: int
                         ) -> tuple[float, dict[str, Any]]:
    from durable_streams import AsyncDurableStream

    handle = await AsyncDurableStream.create(f"{url}/{unique_name('official-async')}",
                                             content_type=_ct(mode), timeout=120)
    try:
        t0 = time.perf_counter()
        if kind == "gather":
            for i in range(0, len(messages), conc):
                await asyncio.gather(*(handle.append(m) for m in messages[i:i + conc]))
        elif kind == "window":
            it = iter(messages)

            async def worker() -> None:
                for m in it:
                    await handle.append(m)

            await asyncio.gather(*(worker() for _ in range(conc)))
        else:
            raise ValueError(f"unknown pattern {kind!r}")
        elapsed = time.perf_counter() - t0
        stored = _check(handle.url, mode, messages)
        await handle.delete()
    finally:
        await handle.aclose()
    return len(messages) / elapsed, stored


def async_throughput(task: dict[str, Any]) -> dict[str, Any]:
    messages = _messages(task["mode"], task["n"], task["size"])
    rates: dict[str, float] = {}
    checks: dict[str, list[dict[str, Any]]] = {}
    for kind, conc in task["patterns"]:
        name = f"{kind}-{conc}"
        for _ in range(max(1, task.get("repeat", 1))):
            rate, stored = asyncio.run(_one_async_run(task["url"], task["mode"], messages,
                                                      kind, conc))
            checks.setdefault(name, []).append(stored)
            rates[name] = max(rates.get(name, 0.0), rate)
    return {"rates": rates, "checks": checks}


def sync_append(task: dict[str, Any]) -> dict[str, Any]:
    from durable_streams import DurableStream

    messages = _messages(task["mode"], task["n"], task["size"])
    handle = DurableStream.create(f"{task['url']}/{unique_name('official-sync')}",
                                  content_type=_ct(task["mode"]), timeout=60)
    lat = []
    try:
        pc = time.perf_counter
        t0 = pc()
        for m in messages:
            t = pc()
            handle.append(m)
            lat.append(pc() - t)
        elapsed = pc() - t0
        stored = _check(handle.url, task["mode"], messages)
        handle.delete()
    finally:
        handle.close()
    return {"rate": len(messages) / elapsed, "latency": latency_summary(lat), "checks": [stored]}


async def _async_latency(task: dict[str, Any]) -> dict[str, Any]:
    from durable_streams import AsyncDurableStream

    messages = _messages("json", task["n"], task["size"])
    handle = await AsyncDurableStream.create(f"{task['url']}/{unique_name('official-alat')}",
                                             content_type=JSON_TYPE, timeout=60)
    lat = []
    try:
        for m in messages:
            t = time.perf_counter()
            await handle.append(m)
            lat.append(time.perf_counter() - t)
        await handle.delete()
    finally:
        await handle.aclose()
    return {"latency": latency_summary(lat)}


def async_latency(task: dict[str, Any]) -> dict[str, Any]:
    return asyncio.run(_async_latency(task))


def create(task: dict[str, Any]) -> dict[str, Any]:
    # The default call, as a user writes it: no client passed, so each create makes its
    # own HTTP client and connection (as ours does without a session).
    from durable_streams import DurableStream

    lat = []
    for _ in range(task["n"]):
        url = f"{task['url']}/{unique_name('official-create')}"
        t = time.perf_counter()
        handle = DurableStream.create(url, content_type=JSON_TYPE)
        lat.append(time.perf_counter() - t)
        handle.delete()
        handle.close()
    return {"latency": latency_summary(lat)}


TASKS = {
    "async_throughput": async_throughput,
    "sync_append": sync_append,
    "async_latency": async_latency,
    "create": create,
}


def main() -> None:
    task = json.loads(sys.argv[1])
    try:
        import importlib.metadata

        result = TASKS[task["task"]](task)
        result["version"] = importlib.metadata.version("durable-streams")
    except Exception as exc:  # reported as an unavailable row, with the reason
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
