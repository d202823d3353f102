#!/usr/bin/env python3
r"""Recipe: a worker that processes orders from ``orders/*`` exactly once, for cron or systemd.

    # crontab -e: one run a minute; each run works for 55 s, then exits
    DS_ROOT=https://streams.example.com/v1/stream
    * * * * *  /opt/jobs/orders_worker.py --run-for 55

    # or a systemd unit (Restart=always), several instances sharing the work
    ExecStart=/opt/jobs/orders_worker.py --worker %H-%i

Every worker (any number, on any hosts) follows the same pull-wake subscription. The server
gives the lease to one worker at a time; that worker reads each pending order stream from
its acked offset, writes one result per order to the matching results stream
(``orders/eu`` -> ``results/orders/eu``) and acks.

Delivery is at-least-once: a worker that dies or stalls past its lease after writing some
results but before acking is fenced, and another worker redoes the same orders from the
same acked offset. Results are still written exactly once: each result is appended with a
``Stream-Seq`` that names its order, ``<acked offset at the claim>/<position after it>``.
A redo computes the same key for the same order, and the server refuses a key that is not
greater than the last one stored (409, :class:`SeqConflictError`): the worker takes that as
"already written" and moves on. Keys only grow, because acked offsets only grow and
offsets compare as strings (PROTOCOL §8; ``-1`` sorts before every offset). The server
keeps one ``Stream-Seq`` per stream, which is why each order stream gets its own results
stream. (An :class:`IdempotentProducer` is the tool for exactly-once writes by *one* writer;
it deliberately refuses to take another process's writes under its id as its own.)

Settings (environment or options): DS_ROOT (stream root), ORDERS_PATTERN (``orders/*``),
RESULTS_PREFIX (``results``), WAKE_STREAM (``wake/orders-worker``), SUBSCRIPTION
(``orders-worker``), LEASE_TTL_MS (30000). SIGTERM/SIGINT stop the worker after the claim in
hand. Exit status 0 on a clean stop, 1 on an error (printed on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from durable_streams import (
    Claim,
    DurableStream,
    DurableStreamError,
    FencedError,
    SeqConflictError,
    Subscription,
)

JSON = "application/json"


class LeaseLost(Exception):
    """The claim was fenced while its orders were being processed."""


def process(order: dict[str, Any]) -> dict[str, Any]:
    """The business logic: deterministic, so a redo computes the same result."""
    total = round(float(order["qty"]) * float(order["price"]), 2)
    return {"order_id": order["id"], "total": total}


def setup(root: str, args: argparse.Namespace) -> Subscription:
    """Create the wake stream and the subscription (both idempotent)."""
    DurableStream.create(f"{root}/{args.wake_stream}", content_type=JSON).close()
    return Subscription.create(root, args.subscription, pattern=args.pattern,
                               wake_stream=args.wake_stream, lease_ttl_ms=args.lease_ttl_ms,
                               description="orders worker recipe")


def handle(claim: Claim, results_root: str, worker: str, delay: float) -> None:
    for linked in claim.pending:
        start = linked.acked_offset  # where this work item starts; the same for a redo
        results_url = f"{results_root}/{linked.path}"
        with claim.read(linked.path) as orders, DurableStream.create(
                results_url, content_type=JSON) as results:
            for position, order in enumerate(orders.iter_json()):
                if claim.fenced:  # lease lost: another worker redoes this; stop writing
                    raise LeaseLost(f"lease lost while processing {linked.path}")
                result = process(order)
                result.update(stream=linked.path, worker=worker)
                # SeqConflictError: an earlier attempt at this work item stored it already
                with contextlib.suppress(SeqConflictError):
                    results.append(json.dumps(result), seq=f"{start}/{position:012d}")
                if delay:
                    time.sleep(delay)  # stands for slow work (ORDERS_WORKER_DELAY)
        claim.ack({linked.path: orders.offset})  # every result is stored before the ack


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    parser = argparse.ArgumentParser(description="Process orders exactly once.")
    parser.add_argument("--root", default=env("DS_ROOT"), help="stream root ($DS_ROOT)")
    parser.add_argument("--worker", default=env("WORKER_NAME")
                        or f"{socket.gethostname()}-{os.getpid()}")
    parser.add_argument("--run-for", type=float, default=float(env("RUN_SECONDS", "0")),
                        help="stop after this many seconds (0: until SIGTERM)")
    parser.add_argument("--pattern", default=env("ORDERS_PATTERN", "orders/*"))
    parser.add_argument("--results-prefix", default=env("RESULTS_PREFIX", "results"))
    parser.add_argument("--wake-stream", default=env("WAKE_STREAM", "wake/orders-worker"))
    parser.add_argument("--subscription", default=env("SUBSCRIPTION", "orders-worker"))
    parser.add_argument("--lease-ttl-ms", type=int, default=int(env("LEASE_TTL_MS", "30000")))
    args = parser.parse_args(argv)
    if not args.root:
        parser.error("no stream root: pass --root or set DS_ROOT")
    root = args.root.rstrip("/")
    delay = float(env("ORDERS_WORKER_DELAY", "0"))
    try:
        sub = setup(root, args)

        # Stop from a thread: a signal handler must not take locks the main thread holds.
        def on_signal(*_: object) -> None:
            threading.Thread(target=sub.stop, daemon=True).start()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        print(f"orders-worker {args.worker}: ready", flush=True)
        for claim in sub.claims(args.worker, stop_after=args.run_for or None):
            try:
                with claim:  # done-ack at the end; on an error, release: work is redone
                    handle(claim, f"{root}/{args.results_prefix}", args.worker, delay)
            except (LeaseLost, FencedError) as exc:  # another worker has it now
                print(f"orders-worker {args.worker}: {exc}", file=sys.stderr)
    except DurableStreamError as exc:
        print(f"orders-worker: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
