"""Command-line subcommands for forks and subscriptions, registered into the main
``durable-streams`` parser by :func:`register`:

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
import textwrap
from typing import Any

from . import errors
from .stream import DurableStream
from .subscriptions import Subscription, SubscriptionInfo

__all__ = ["register"]


def _cli() -> Any:
    from . import cli  # the main CLI module: helpers, exit codes, parser class

    return cli


def _root(args: argparse.Namespace) -> str:
    cli = _cli()
    root = (args.root or os.environ.get(cli.URL_ENV, "")).strip()
    if not root:
        raise cli.UsageError(
            f"no stream root: pass --root https://host/v1/stream or export "
            f"{cli.URL_ENV}=https://host/v1/stream"
        )
    if not root.startswith(("http://", "https://")):
        raise cli.UsageError(f"the stream root must be an http(s) URL, got {root!r}")
    return root


def _subscription(args: argparse.Namespace) -> Subscription:
    cli = _cli()
    return Subscription(_root(args), args.id, headers=cli._headers(args), timeout=args.timeout)


def _not_found_is_3(func: Any) -> Any:
    """Subscription-not-found exits 3 like a missing stream (the main CLI's rule)."""

    def run(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
            return result
        except errors.SubscriptionNotFoundError as exc:
            cli = _cli()
            cli._err(exc)
            return int(cli.EXIT_NOT_FOUND)

    return run


def cmd_fork(args: argparse.Namespace) -> int:
    cli = _cli()
    src = cli.resolve_url(args.src)
    dst = cli.resolve_url(args.dst)
    with DurableStream(src, headers=cli._headers(args), timeout=args.timeout) as source:
        fork = source.fork(dst, offset=args.offset, sub_offset=args.sub_offset,
                           ttl_seconds=args.ttl, expires_at=args.expires_at)
    with fork:
        where = f"at {args.offset}" if args.offset else "at its tail"
        if fork.created:
            cli._info(f"forked {src} {where} to {dst}")
        else:
            cli._info(f"{dst} already exists as the same fork")
    return int(cli.EXIT_OK)


def cmd_sub_create(args: argparse.Namespace) -> int:
    cli = _cli()
    sub = Subscription.create(
        _root(args), args.id, pattern=args.pattern, streams=args.stream or None,
        wake_stream=args.wake_stream, webhook_url=args.webhook_url,
        lease_ttl_ms=args.lease_ttl_ms, description=args.description,
        headers=cli._headers(args), timeout=args.timeout,
    )
    with sub:
        if sub.created:
            cli._info(f"created subscription {args.id}")
        else:
            cli._info(f"subscription {args.id} already exists with the same configuration")
    return int(cli.EXIT_OK)


def _info_dict(info: SubscriptionInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "type": info.type,
        "pattern": info.pattern,
        "wake_stream": info.wake_stream,
        "webhook_url": info.webhook_url,
        "lease_ttl_ms": info.lease_ttl_ms,
        "status": info.status,
        "created_at": info.created_at,
        "description": info.description,
        "streams": [{"path": s.path, "link_type": s.link_type,
                     "acked_offset": s.acked_offset} for s in info.streams],
    }


def cmd_sub_info(args: argparse.Namespace) -> int:
    cli = _cli()
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
            ("webhook-url", info.webhook_url or "-"),
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
    return int(cli.EXIT_OK)


def cmd_sub_delete(args: argparse.Namespace) -> int:
    cli = _cli()
    with _subscription(args) as sub:
        sub.delete()
    cli._info(f"deleted subscription {args.id}")
    return int(cli.EXIT_OK)


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``fork`` and ``subscription`` to the main parser's subcommands ``sub``;
    ``common`` is the parent parser holding the connection options."""
    cli = _cli()

    def add(parent: Any, name: str, help_text: str, description: str) -> Any:
        return parent.add_parser(
            name, help=help_text, description=textwrap.fill(description, 79),
            epilog=cli.EPILOG, parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    url_help = f"stream URL, or a name joined to ${cli.URL_ENV}"
    p = add(sub, "fork", "fork a stream at an offset (or its tail) into a new stream",
            "Create DST as a fork of SRC (PROTOCOL 4.2): DST starts with SRC's data up to "
            "OFFSET (default: SRC's current tail) and then lives on its own. Succeeds if DST "
            "already is the same fork. DST must be on the same server as SRC.")
    p.add_argument("src", metavar="SRC", help=url_help)
    p.add_argument("dst", metavar="DST", help=url_help)
    p.add_argument("--offset", "-o", metavar="OFFSET",
                   help="fork point: an offset the server returned (default: the tail)")
    p.add_argument("--sub-offset", type=cli._non_negative_int, metavar="N",
                   help="also inherit N messages (JSON) or bytes past OFFSET")
    ttl = p.add_mutually_exclusive_group()
    ttl.add_argument("--ttl", type=cli._non_negative_int, metavar="SECONDS",
                     help="the fork's own TTL (default: inherit the source's expiry)")
    ttl.add_argument("--expires-at", metavar="TIME", help="the fork's own RFC 3339 expiry")
    p.set_defaults(func=cmd_fork)

    group = sub.add_parser(
        "subscription", help="create, show or delete a subscription (pull-wake or webhook)",
        description="Manage subscriptions: server-side cursors over many streams that wake "
                    "workers (PROTOCOL 6).",
        epilog=cli.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = group.add_subparsers(dest="action", metavar="ACTION",
                                   parser_class=type(group))
    actions.required = True
    root_help = f"the stream root the paths are relative to (default: ${cli.URL_ENV})"

    p = add(actions, "create", "create a subscription (or confirm an identical one)",
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
    p.add_argument("--lease-ttl-ms", type=cli._positive_int, metavar="MS",
                   help="worker lease, 1000-600000 (server default: 30000)")
    p.add_argument("--description", metavar="TEXT")
    p.set_defaults(func=_not_found_is_3(cmd_sub_create))

    p = add(actions, "info", "show a subscription and its streams' acked offsets",
            "Show the subscription's configuration, status and linked streams.")
    p.add_argument("id", metavar="ID", help="subscription id")
    p.add_argument("--root", metavar="URL", help=root_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_not_found_is_3(cmd_sub_info))

    p = add(actions, "delete", "delete a subscription",
            "Delete the subscription (its streams are not touched). Deleting a missing "
            "subscription succeeds.")
    p.add_argument("id", metavar="ID", help="subscription id")
    p.add_argument("--root", metavar="URL", help=root_help)
    p.set_defaults(func=_not_found_is_3(cmd_sub_delete))

