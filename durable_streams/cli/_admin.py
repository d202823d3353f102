"""``create``, ``head``, ``delete`` and ``close``: one request each."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from .. import _protocol as P
from ..stream import DurableStream, StreamInfo
from ._common import (
    EXIT_OK,
    Commands,
    handle_for,
    headers_of,
    non_negative_int,
    note,
    resolve_url,
    shown,
)


def cmd_create(args: argparse.Namespace) -> int:
    url = resolve_url(args.url)
    handle = DurableStream.create(
        url,
        content_type=args.content_type,
        ttl_seconds=args.ttl,
        expires_at=args.expires_at,
        closed=args.closed,
        headers=headers_of(args),
        timeout=args.timeout,
    )
    with handle:
        if handle.created:
            note(f"created {shown(url)} ({handle.content_type or P.DEFAULT_CONTENT_TYPE})")
        else:
            note(f"{shown(url)} already exists with the same configuration")
    return EXIT_OK


def _info_dict(url: str, info: StreamInfo) -> dict[str, Any]:
    return {
        "url": shown(url),  # never the credentials or query values
        "content_type": info.content_type,
        "offset": info.offset,
        "closed": info.closed,
        "ttl_seconds": info.ttl_seconds,
        "expires_at": info.expires_at,
        "etag": info.etag,
        "cache_control": info.cache_control,
    }


def cmd_head(args: argparse.Namespace) -> int:
    url = resolve_url(args.url)
    with handle_for(args, url) as handle:
        info = handle.head()
    data = _info_dict(url, info)
    if args.json:
        sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
    else:
        rows = [
            ("url", shown(url)),
            ("content-type", info.content_type or "-"),
            ("offset", info.offset or "-"),
            ("closed", "yes" if info.closed else "no"),
            ("ttl", f"{info.ttl_seconds} s" if info.ttl_seconds is not None else "-"),
            ("expires-at", info.expires_at or "-"),
            ("etag", info.etag or "-"),
        ]
        for key, value in rows:
            sys.stdout.write(f"{key + ':':<14}{value}\n")
    sys.stdout.flush()
    return EXIT_OK


def cmd_delete(args: argparse.Namespace) -> int:
    url = resolve_url(args.url)
    with handle_for(args, url) as handle:
        handle.delete()
    note(f"deleted {shown(url)}")
    return EXIT_OK


def cmd_close(args: argparse.Namespace) -> int:
    url = resolve_url(args.url)
    with handle_for(args, url) as handle:
        offset = handle.close_stream(final_message=args.message)
    sys.stdout.write(offset + "\n")
    sys.stdout.flush()
    note(f"closed {shown(url)}")
    return EXIT_OK


def register(commands: Commands) -> None:
    """Add ``create``, ``head``, ``delete`` and ``close``."""
    p = commands.add(
        "create", "create a stream (or confirm it exists with the same settings)",
        "Create a stream (PUT). Succeeds if it already exists with the same settings.")
    commands.add_url(p)
    p.add_argument("--content-type", "-t", metavar="TYPE",
                   help="content type, e.g. application/json (JSON mode) or text/plain "
                        f"(default: the server's, usually {P.DEFAULT_CONTENT_TYPE})")
    ttl = p.add_mutually_exclusive_group()
    ttl.add_argument("--ttl", type=non_negative_int, metavar="SECONDS",
                     help="delete the stream this many seconds after its last use")
    ttl.add_argument("--expires-at", metavar="TIME",
                     help="delete the stream at this RFC 3339 time")
    p.add_argument("--closed", action="store_true", help="create it already closed")
    p.set_defaults(func=cmd_create)

    p = commands.add(
        "head", "show a stream's metadata",
        "Show the stream's content type, tail offset, closed flag and expiry.")
    commands.add_url(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_head)

    p = commands.add("delete", "delete a stream and its data", "Delete the stream (DELETE).")
    commands.add_url(p)
    p.set_defaults(func=cmd_delete)

    p = commands.add(
        "close", "close a stream (EOF for every reader)",
        "Close the stream: readers see EOF and appends are refused. Prints the final "
        "offset on stdout. An optional final message is appended atomically with the "
        "close (JSON text for a JSON stream).")
    commands.add_url(p)
    p.add_argument("message", metavar="FINAL_MESSAGE", nargs="?",
                   help="a last message to append with the close")
    p.set_defaults(func=cmd_close)
