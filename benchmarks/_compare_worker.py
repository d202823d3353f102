"""One side of the before/after comparison (``benchmarks/compare.py``), in its own process.

Run as ``python benchmarks/_compare_worker.py`` by an interpreter that imports the
``durable_streams`` under test: the current tree (``PYTHONPATH`` = the worktree) or another
revision installed into ``benchmarks/.venv-rev-<short>``. It measures with the *current*
benchmark code (``benchmarks/producer.py``, public API only: ``IdempotentProducer``,
``DurableStream``), so both sides run the same measurement and only the library differs.

The project root is deliberately NOT put on ``sys.path`` (that would import the current
``durable_streams`` into the other revision's process); ``benchmarks`` is registered as a
package pointing at this directory instead.

Protocol: one JSON task per stdin line; one ``RESULT <json>`` stdout line per task.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
import types
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if "benchmarks" not in sys.modules:
    package = types.ModuleType("benchmarks")
    package.__path__ = [HERE]
    sys.modules["benchmarks"] = package
if sys.path and os.path.abspath(sys.path[0] or ".") == HERE:
    sys.path.pop(0)  # ``import _common`` style imports are not used here

from benchmarks import producer  # noqa: E402
from benchmarks._common import bytes_messages, json_messages  # noqa: E402

_messages: dict[tuple[str, int], list[Any]] = {}


def _get_messages(mode: str, n: int) -> list[Any]:
    key = (mode, n)
    if key not in _messages:
        _messages[key] = json_messages(n) if mode == "json" else bytes_messages(n)
    return _messages[key]


def run(task: dict[str, Any]) -> dict[str, Any]:
    kind = task["task"]
    url = task.get("url", "")
    if kind == "hello":
        import durable_streams

        return {"file": durable_streams.__file__,
                "version": getattr(durable_streams, "__version__", "?"),
                "python": sys.version.split()[0]}
    if kind == "throughput":
        return producer.throughput(url, _get_messages(task["mode"], task["n"]),
                                   json_mode=task["mode"] == "json", threads=task["threads"])
    if kind == "large":
        return producer.large_messages(url, task["n"])
    if kind == "caller_cost":
        return dict(producer.caller_cost(url, task["n"]))
    if kind == "latency":
        return dict(producer.low_rate_latency(url, task["n"]))
    raise ValueError(f"unknown task {kind!r}")


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = run(json.loads(line))
        except Exception as exc:  # reported to the parent, which marks the row failed
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write("RESULT " + json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
