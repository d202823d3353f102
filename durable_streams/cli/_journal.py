"""``journal DIR``: what a crash-safe journal still holds, and ``--drain`` to deliver it.

The journal records its stream as ``scheme://host:port/path`` only (no secrets), so a
drain that needs credentials takes the URL (or a name joined to ``$DURABLE_STREAMS_URL``)
as an argument; it must name the journal's stream. Exit codes: 0 (nothing pending, or all
delivered), 75 (still pending: the server cannot be reached yet), 1/3/4 as for ``append``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from .. import _protocol as P
from .. import errors
from .._producer.journal import identity_of
from .._producer.journal_replay import JournalSummary, summarize
from ..producer import IdempotentProducer
from ._common import (
    EXIT_JOURNALED,
    EXIT_OK,
    Commands,
    UsageError,
    err,
    fmt_bytes,
    fmt_count,
    handle_for,
    note,
    positive_float,
    resolve_url,
)


def journal_delivery_ms(wait: float) -> float:
    """The producer's ``delivery_timeout_ms`` for a command that journals and waits ``wait``
    seconds for delivery: messages still pending when the wait ends stay journaled
    (:func:`still_journaled`) instead of failing at the delivery timeout, so the producer's
    own timeout is pushed well past the wait (and past every retry)."""
    return max(wait * 10_000.0, 3_600_000.0)


def still_journaled(undelivered: int, stream: str, journal: str, *,
                    of: int | None = None) -> int:
    """Say that ``undelivered`` (``of`` all the messages, when given) messages are not
    delivered to ``stream`` yet but kept in ``journal``, and return ``EXIT_JOURNALED``."""
    count = fmt_count(undelivered) + (f" of {fmt_count(of)}" if of is not None else "")
    err(f"{count} messages are not delivered to {stream} yet: they are kept in the journal "
        f"{journal}, and the next run with this journal (or `journal --drain`) delivers "
        "them first")
    return EXIT_JOURNALED


def _summary(directory: str) -> JournalSummary:
    if not os.path.isdir(directory):
        raise UsageError(f"{directory!r} is not a directory (give the --journal DIR of "
                         "an earlier run)")
    try:
        s = summarize(directory)
    except ValueError as exc:
        raise errors.DurableStreamError(str(exc)) from None
    if s is None:
        raise UsageError(f"{directory!r} holds no journal")
    return s


def _show(s: JournalSummary, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps({
            "stream": s.stream, "producer_id": s.producer_id,
            "content_type": s.content_type, "epoch": s.epoch, "next_seq": s.next_seq,
            "pending_batches": s.pending_batches, "pending_messages": s.pending_messages,
            "pending_bytes": s.pending_bytes, "segments": s.segments,
            "disk_bytes": s.disk_bytes,
        }, separators=(",", ":")) + "\n")
        return
    sys.stdout.write(f"stream:       {s.stream}\n")
    sys.stdout.write(f"producer id:  {s.producer_id}\n")
    sys.stdout.write(f"content type: {s.content_type or '(unknown)'}\n")
    sys.stdout.write(f"epoch/seq:    {'-' if s.epoch is None else s.epoch}/{s.next_seq}\n")
    sys.stdout.write(f"pending:      {fmt_count(s.pending_messages)} messages in "
                     f"{fmt_count(s.pending_batches)} batches, "
                     f"{fmt_bytes(s.pending_bytes)}\n")
    sys.stdout.write(f"on disk:      {s.segments} segments, {fmt_bytes(s.disk_bytes)}\n")


def _drain(args: argparse.Namespace, s: JournalSummary) -> int:
    url = resolve_url(args.url) if args.url else s.stream
    if identity_of(url) != s.stream:
        raise UsageError(f"the journal belongs to {s.stream}, not {identity_of(url)}")
    if not s.pending_messages:
        note("nothing pending")
        return EXIT_OK
    with handle_for(args, url) as handle:
        producer = IdempotentProducer(
            handle, s.producer_id, auto_claim=True, journal=args.journal,
            content_type=s.content_type or P.DEFAULT_CONTENT_TYPE, validate_json=False,
            delivery_timeout_ms=journal_delivery_ms(args.delivery_timeout),
            flush_at_exit=False)
        try:
            producer.flush(timeout=args.delivery_timeout)
        except (TimeoutError, errors.TransportError, errors.DeliveryError):
            pass  # judged by what the journal still holds, below
        finally:
            with contextlib.suppress(TimeoutError, errors.DurableStreamError):
                producer.close(timeout=1.0)
    left = _summary(args.journal)
    if left.pending_messages:
        return still_journaled(left.pending_messages, s.stream, args.journal)
    note(f"delivered {fmt_count(s.pending_messages)} messages to {s.stream}")
    return EXIT_OK


def cmd_journal(args: argparse.Namespace) -> int:
    s = _summary(args.journal)
    if args.drain:
        return _drain(args, s)
    _show(s, args.json)
    return EXIT_OK


def register(commands: Commands) -> None:
    """Add ``journal``."""
    p = commands.add(
        "journal", "show what a crash-safe journal still holds, or deliver it (--drain)",
        "Show a journal's stream, producer id, epoch/seq and what is pending (read only, "
        "while a producer may hold it). --drain delivers the pending messages: exit 0 "
        f"once all are acknowledged, {EXIT_JOURNALED} if the server cannot be reached "
        "yet (they stay journaled).")
    p.add_argument("journal", metavar="DIR", help="the journal directory")
    p.add_argument("url", metavar="URL", nargs="?",
                   help="with --drain: the stream URL with credentials (default: the "
                        "journal's own, which holds no secrets); it must name the same stream")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--drain", action="store_true", help="deliver the pending messages")
    p.add_argument("--delivery-timeout", type=positive_float, default=30.0, metavar="SECONDS",
                   help="with --drain: how long to try (default: 30)")
    p.set_defaults(func=cmd_journal)
