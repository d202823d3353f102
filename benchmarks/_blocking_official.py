# mypy: ignore-errors
# (it imports the official package, which only exists inside its own virtualenv)
"""The official client's blocking calls, for ``blocking.py`` (run in its virtualenv).

``python _blocking_official.py '{"url": ..., "n": ...}'`` prints ``RESULT <json>`` with, per
call, p50 wall time and mean thread CPU time in milliseconds.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import uuid

CT = "application/octet-stream"
BODY = b"x" * 100


def _stats(samples):
    walls = sorted(w for w, _ in samples)
    return {"p50_ms": walls[max(0, (len(walls) + 1) // 2 - 1)] * 1e3,
            "cpu_ms": sum(c for _, c in samples) / len(samples) * 1e3, "n": len(samples)}


def _measure(fn):
    c0, t0 = time.thread_time(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, time.thread_time() - c0


def run(url: str, n: int):
    from durable_streams import DurableStream

    def name() -> str:
        return f"{url}/official-blk-{uuid.uuid4().hex}"

    handle = DurableStream.create(name(), content_type=CT)
    small = DurableStream.create(name(), content_type=CT)
    for _ in range(5):
        small.append(BODY)

    def create():
        DurableStream.create(name(), content_type=CT).close()

    calls = {
        "create": create,
        "append 100 B": lambda: handle.append(BODY),
        "head": handle.head,
        "small catch-up read": lambda: small.stream(live=False).read_bytes(),
    }
    for _ in range(max(n // 20, 5)):
        for fn in calls.values():
            fn()
    samples = {k: [] for k in calls}
    for _ in range(n):
        for k, fn in calls.items():
            samples[k].append(_measure(fn))
    return {k: _stats(v) for k, v in samples.items()}


def main() -> None:
    task = json.loads(sys.argv[1])
    try:
        result = run(task["url"], int(task["n"]))
    except Exception as exc:
        traceback.print_exc()
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
