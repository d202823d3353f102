#!/usr/bin/env python3
r"""Recipe: a script that publishes a full inventory as State Protocol state.

    INVENTORY_STREAM_URL=https://streams.example.com/v1/stream/inventory \
        ./state_inventory.py stock.json        # {"apple": 3, "pear": 1, ...}

Every run replaces the whole state: ``snapshot(reset=True)`` writes ``snapshot-start``,
``reset``, one ``upsert`` per item and ``snapshot-end``, so readers that follow the stream
(``follow_state``, ``durable-streams state --follow``) go from yesterday's inventory to
today's in one step, never through an empty or half-filled one. Every event carries the
run's txid, printed on stdout at the end so that a caller can wait for it
(``view.wait_for_txid(txid)``). Exit status 0 only when every event was acknowledged.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid

from durable_streams import DeliveryError, DurableStreamError
from durable_streams.state import StateProducer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Publish an inventory as State Protocol state.")
    parser.add_argument("json_file", help='a JSON object: {"item": count, ...}')
    parser.add_argument("--stream", default=os.environ.get("INVENTORY_STREAM_URL"),
                        help="stream URL (default: $INVENTORY_STREAM_URL)")
    args = parser.parse_args(argv)
    if not args.stream:
        parser.error("no stream URL: pass --stream or set INVENTORY_STREAM_URL")
    with open(args.json_file, encoding="utf-8") as f:
        stock = json.load(f)
    if not isinstance(stock, dict):
        parser.error(f"{args.json_file} must hold a JSON object of item -> count")

    txid = uuid.uuid4().hex
    try:
        with StateProducer(args.stream, "inventory-job", auto_claim=True) as state, \
                state.snapshot(reset=True):
            for item, count in stock.items():
                state.upsert("stock", str(item), {"count": count}, txid=txid)
    except DeliveryError as exc:
        print(f"state-inventory: {len(exc.undelivered)} events were not delivered: {exc}",
              file=sys.stderr)
        return 1
    except DurableStreamError as exc:
        print(f"state-inventory: {exc}", file=sys.stderr)
        return 1
    print(txid)
    return 0


if __name__ == "__main__":
    sys.exit(main())
