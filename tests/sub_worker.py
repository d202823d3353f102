"""A worker process for tests/test_workers.py.

    python sub_worker.py ROOT SUB_ID WORKER OUT_FILE work STOP_AFTER
        follow the wake stream with Subscription.claims() for STOP_AFTER seconds; every item
        processed is written to OUT_FILE as one JSON line {"worker", "path", "item"}.
    python sub_worker.py ROOT SUB_ID WORKER OUT_FILE hang TIMEOUT
        claim once (polling until a claim is won), print "CLAIMED <generation>" and block
        with the lease held (the heartbeat thread keeps it) until killed.
"""

from __future__ import annotations

import json
import sys
import threading
import time

from durable_streams import Subscription


def work(sub: Subscription, worker: str, out_path: str, stop_after: float) -> None:
    with open(out_path, "a", encoding="utf-8") as out:
        print("READY", flush=True)
        for claim in sub.claims(worker, stop_after=stop_after):
            with claim:
                for linked in claim.pending:
                    with claim.read(linked.path) as response:
                        for item in response.iter_json():
                            out.write(json.dumps({"worker": worker, "path": linked.path,
                                                  "item": item}) + "\n")
                    out.flush()
                    claim.ack({linked.path: response.offset})


def hang(sub: Subscription, worker: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        claim = sub.claim(worker)
        if claim is not None:
            print(f"CLAIMED {claim.generation}", flush=True)
            threading.Event().wait(timeout)  # hold the lease until killed
            return
        time.sleep(0.02)
    raise SystemExit("no claim won")


def main() -> None:
    root, sub_id, worker, out_path, mode, seconds = sys.argv[1:7]
    sub = Subscription(root, sub_id)
    if mode == "work":
        work(sub, worker, out_path, float(seconds))
    else:
        hang(sub, worker, float(seconds))


if __name__ == "__main__":
    main()
