#!/usr/bin/env python3
r"""Recipe: a cron job that appends one night's export to a durable stream.

    # crontab -e
    EXPORT_STREAM_URL=https://streams.example.com/v1/stream/orders
    0 2 * * *  /opt/jobs/nightly_export.py /var/exports/orders-$(date +\%F).csv

Each CSV row becomes one JSON message. The producer id is the same every night: with
``auto_claim=True`` each run claims a new epoch, so tonight's first batch is not mistaken for
a retry of last night's. Leaving the ``with`` block flushes and releases the producer but
leaves the stream open for tomorrow (closing it would be ``producer.close_stream()``).
Exit status 0 only when every row was acknowledged by the server.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys

from durable_streams import DeliveryError, DurableStreamError, IdempotentProducer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Append a CSV export to a stream.")
    parser.add_argument("csv_file")
    parser.add_argument("--stream", default=os.environ.get("EXPORT_STREAM_URL"),
                        help="stream URL (default: $EXPORT_STREAM_URL)")
    args = parser.parse_args(argv)
    if not args.stream:
        parser.error("no stream URL: pass --stream or set EXPORT_STREAM_URL")

    sent = 0
    try:
        with IdempotentProducer(args.stream, producer_id="nightly-export", auto_claim=True,
                                content_type="application/json") as producer, \
                open(args.csv_file, newline="", encoding="utf-8") as rows:
            for row in csv.DictReader(rows):
                producer.append(json.dumps(row))
                sent += 1
    except DeliveryError as exc:
        print(f"nightly-export: {len(exc.undelivered)} of {sent} rows were not delivered: "
              f"{exc}", file=sys.stderr)
        return 1
    except DurableStreamError as exc:
        print(f"nightly-export: {exc}", file=sys.stderr)
        return 1
    return 0  # silent on success: cron mails whatever a job prints


if __name__ == "__main__":
    sys.exit(main())
