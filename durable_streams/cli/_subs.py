"""Command-line subcommands for forks and subscriptions (a command group of
:mod:`durable_streams.cli`):

- ``fork SRC DST [--offset OFFSET] [--sub-offset N] [--ttl S | --expires-at T]``
- ``subscription create ID (--pattern GLOB | --stream PATH ...) (--wake-stream PATH |
  --webhook-url URL) [--lease-ttl-ms MS] [--description TEXT]``
- ``subscription info ID [--json]``, ``subscription delete ID``

Subscription commands take the stream root from ``--root`` or ``$DURABLE_STREAMS_URL``.
They follow the main CLI's output rules (data on stdout, one error line on stderr,
confirmations only on a terminal) and exit codes (3: not found, 4: conflict).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from ..stream import DurableStream
from ..subscriptions import Subscription, SubscriptionInfo
from ._common import (
    EXIT_OK,
    URL_ENV,
    Commands,
    UsageError,
    headers_of,
    non_negative_int,
    note,
    positive_int,
    resolve_url,
    shown,
    shown_arg,
)

__all__ = ["register"]



def _root(args: argparse.Namespace) -> tuple[str, dict[str, str]]:
    """The stream root without its query, and the query (``?token=...``) as params: the
    subscription's URLs are the root's path plus more path, with the query at the end."""
    root = (args.root or os.environ.get(URL_ENV, "")).strip()
    if not root:
        raise UsageError(
            f"no stream root: pass --root https://host/v1/stream or export "
            f"{URL_ENV}=https://host/v1/stream"
        )
    if not root.startswith(("http://", "https://")):
        raise UsageError(f"the stream root must be an http(s) URL, got {shown_arg(root)!r}")
    parts = urlsplit(root)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), params


def _subscription(args: argparse.Namespace) -> Subscription:
    root, params = _root(args)
    return Subscription(root, args.id, headers=headers_of(args), params=params or None,
                        timeout=args.timeout)



def cmd_fork(args: argparse.Namespace) -> int:
    src = resolve_url(args.src)
    dst = resolve_url(args.dst)
    with DurableStream(src, headers=headers_of(args), timeout=args.timeout) as source:
        fork = source.fork(dst, offset=args.offset, sub_offset=args.sub_offset,
                           ttl_seconds=args.ttl, expires_at=args.expires_at)
    with fork:
        where = f"at {args.offset}" if args.offset else "at its tail"
        if fork.created:
            note(f"forked {shown(src)} {where} to {shown(dst)}")
        else:
            note(f"{shown(dst)} already exists as the same fork")
    return EXIT_OK


def cmd_sub_create(args: argparse.Namespace) -> int:
    root, params = _root(args)
    sub = Subscription.create(
        root, args.id, pattern=args.pattern, streams=args.stream or None,
        wake_stream=args.wake_stream, webhook_url=args.webhook_url,
        lease_ttl_ms=args.lease_ttl_ms, description=args.description,
        headers=headers_of(args), params=params or None, timeout=args.timeout,
    )
    with sub:
        if sub.created:
            note(f"created subscription {args.id}")
        else:
            note(f"subscription {args.id} already exists with the same configuration")
    return EXIT_OK


def _info_dict(info: SubscriptionInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "type": info.type,
        "pattern": info.pattern,
        "wake_stream": info.wake_stream,
        "webhook_url": shown(info.webhook_url) if info.webhook_url else None,
        "lease_ttl_ms": info.lease_ttl_ms,
        "status": info.status,
        "created_at": info.created_at,
        "description": info.description,
        "streams": [{"path": s.path, "link_type": s.link_type,
                     "acked_offset": s.acked_offset} for s in info.streams],
    }


def cmd_sub_info(args: argparse.Namespace) -> int:
    with _subscription(args) as sub:
        info = sub.info()
    if args.json:
        sys.stdout.write(json.dumps(_info_dict(info), separators=(",", ":")) + "\n")
    else:
        rows = [
            ("id", info.id),
            ("type", info.type),
            ("pattern", info.pattern or "-"),
            ("wake-stream", info.wake_stream or "-"),
            ("webhook-url", shown(info.webhook_url) if info.webhook_url else "-"),
            ("lease-ttl", f"{info.lease_ttl_ms} ms"),
            ("status", info.status or "-"),
            ("created-at", info.created_at or "-"),
            ("description", info.description or "-"),
            ("streams", str(len(info.streams))),
        ]
        for key, value in rows:
            sys.stdout.write(f"{key + ':':<14}{value}\n")
        for s in info.streams:
            sys.stdout.write(f"  {s.path}  {s.link_type}  acked {s.acked_offset}\n")
    sys.stdout.flush()
    return EXIT_OK


def cmd_sub_delete(args: argparse.Namespace) -> int:
    with _subscription(args) as sub:
        sub.delete()
    note(f"deleted subscription {args.id}")
    return EXIT_OK


def register(commands: Commands) -> None:
    """Add ``fork`` and ``subscription create|info|delete``."""
    url_help = commands.url_help
    p = commands.add("fork", "fork a stream at an offset (or its tail) into a new stream",
                     "Create DST as a fork of SRC (PROTOCOL 4.2): DST starts with SRC's data "
                     "up to OFFSET (default: SRC's current tail) and then lives on its own. "
                     "Succeeds if DST already is the same fork. DST must be on the same "
                     "server as SRC.")
    p.add_argument("src", metavar="SRC", help=url_help)
    p.add_argument("dst", metavar="DST", help=url_help)
    p.add_argument("--offset", "-o", metavar="OFFSET",
                   help="fork point: an offset the server returned (default: the tail)")
    p.add_argument("--sub-offset", type=non_negative_int, metavar="N",
                   help="also inherit N messages (JSON) or bytes past OFFSET")
    ttl = p.add_mutually_exclusive_group()
    ttl.add_argument("--ttl", type=non_negative_int, metavar="SECONDS",
                     help="the fork's own TTL (default: inherit the source's expiry)")
    ttl.add_argument("--expires-at", metavar="TIME", help="the fork's own RFC 3339 expiry")
    p.set_defaults(func=cmd_fork)

    actions = commands.add_group(
        "subscription", "create, show or delete a subscription (pull-wake or webhook)",
        "Manage subscriptions: server-side cursors over many streams that wake workers "
        "(PROTOCOL 6).")
    root_help = f"the stream root the paths are relative to (default: ${URL_ENV})"

    p = commands.add_action(
        actions, "create", "create a subscription (or confirm an identical one)",
            "Create the subscription ID (PUT). Stream paths are relative to the stream root. "
            "Succeeds if it exists with the same configuration; exit 4 if it exists with "
            "another one.")
    p.add_argument("id", metavar="ID", help="subscription id")
    p.add_argument("--root", metavar="URL", help=root_help)
    p.add_argument("--pattern", metavar="GLOB",
                   help="streams to follow: * matches one path segment, ** any number")
    p.add_argument("--stream", action="append", metavar="PATH",
                   help="an explicit stream to follow (repeatable)")
    delivery = p.add_mutually_exclusive_group(required=True)
    delivery.add_argument("--wake-stream", metavar="PATH",
                          help="pull-wake: the (existing, JSON) stream wakes are written to")
    delivery.add_argument("--webhook-url", metavar="URL", help="webhook delivery URL")
    p.add_argument("--lease-ttl-ms", type=positive_int, metavar="MS",
                   help="worker lease, 1000-600000 (server default: 30000)")
    p.add_argument("--description", metavar="TEXT")
    p.set_defaults(func=cmd_sub_create)

    p = commands.add_action(actions, "info", "show a subscription and its streams' acked offsets",
            "Show the subscription's configuration, status and linked streams.")
    p.add_argument("id", metavar="ID", help="subscription id")
    p.add_argument("--root", metavar="URL", help=root_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_sub_info)

    p = commands.add_action(actions, "delete", "delete a subscription",
            "Delete the subscription (its streams are not touched). Deleting a missing "
            "subscription succeeds.")
    p.add_argument("id", metavar="ID", help="subscription id")
    p.add_argument("--root", metavar="URL", help=root_help)
    p.set_defaults(func=cmd_sub_delete)

