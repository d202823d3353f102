"""``append``: messages from arguments or stdin, exactly once, through a producer."""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from .. import _protocol as P
from .. import errors
from .._producer.journal_replay import peek_content_type
from ..producer import IdempotentProducer
from ..stream import DurableStream, StreamInfo
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_JOURNALED,
    EXIT_OK,
    Commands,
    UsageError,
    err,
    exit_code_for,
    fmt_bytes,
    fmt_count,
    handle_for,
    note,
    positive_float,
    resolve_url,
    shown,
    stderr_is_tty,
)
from ._journal import journal_delivery_ms, still_journaled

#: How many invalid input lines ``append --lines`` reports one by one.
_MAX_LINE_REPORTS = 100
_STDIN_CHUNK = 64 * 1024


@dataclass
class _AppendState:
    """What ``append`` did, for the final report."""

    read: int = 0  # messages taken from the input and handed to the producer
    invalid: int = 0  # input lines (or the whole input) rejected before sending
    failed_early: threading.Event = field(default_factory=threading.Event)
    stopped_early: bool = False  # stopped reading the input after a delivery failure
    first_failure: errors.DurableStreamError | None = None


class _Progress:
    """Messages/bytes acknowledged and the rate, redrawn on one stderr line twice a second."""

    def __init__(self, producer: IdempotentProducer, out: IO[str]) -> None:
        self._producer = producer
        self._out = out
        self._stop = threading.Event()
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="durable-streams-progress",
                                        daemon=True)
        self._width = 0

    def start(self) -> _Progress:
        self._thread.start()
        return self

    def _line(self) -> str:
        stats = self._producer.stats()
        elapsed = max(time.monotonic() - self._start, 1e-9)
        return (f"{fmt_count(stats.messages_acked)} messages, "
                f"{fmt_bytes(stats.bytes_acked)} acknowledged, "
                f"{fmt_count(stats.messages_acked / elapsed)} msg/s")

    def _draw(self, text: str, end: str = "") -> None:
        pad = max(self._width - len(text), 0)
        self._width = len(text)
        with contextlib.suppress(OSError, ValueError):
            self._out.write("\r" + text + " " * pad + end)
            self._out.flush()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._draw(self._line())

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=2)
        self._draw(self._line(), end="\n")


def _iter_lines(stream: IO[bytes]) -> Iterator[bytes]:
    yield from stream


def _iter_chunks(stream: IO[bytes]) -> Iterator[bytes]:
    read1 = getattr(stream, "read1", None)
    while True:
        chunk = read1(_STDIN_CHUNK) if read1 is not None else stream.read(_STDIN_CHUNK)
        if not chunk:
            return
        yield chunk


def _check_json(data: bytes) -> str | None:
    """None if ``data`` is one valid JSON value in UTF-8, else the reason."""
    try:
        P.load_json(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return f"not UTF-8 ({exc.reason} at byte {exc.start})"
    except ValueError as exc:
        return f"not valid JSON ({exc})"
    return None


def _messages_from_args(data: Sequence[str], json_mode: bool) -> list[bytes]:
    out = []
    for i, text in enumerate(data, 1):
        raw = text.encode("utf-8", "surrogateescape")
        if not raw:
            raise UsageError(f"DATA argument {i} is empty (the server refuses empty appends)")
        if json_mode:
            reason = _check_json(raw)
            if reason is not None:
                raise UsageError(f"DATA argument {i} is {reason}; nothing was sent")
        out.append(raw)
    return out


def _messages_from_stdin(args: argparse.Namespace, json_mode: bool, state: _AppendState,
                         stdin: IO[bytes]) -> Iterable[bytes]:
    """The messages to append, read lazily from stdin; invalid lines are reported here."""
    if args.lines:
        for lineno, line in enumerate(_iter_lines(stdin), 1):
            if json_mode:
                text = line.strip()
                if not text:
                    continue  # blank lines separate nothing in JSON mode
                reason = _check_json(text)
                if reason is not None:
                    state.invalid += 1
                    if state.invalid <= _MAX_LINE_REPORTS:
                        err(f"line {lineno}: {reason}; skipped")
                    elif state.invalid == _MAX_LINE_REPORTS + 1:
                        err("more invalid lines follow; not reporting them one by one")
                    continue
                yield text
            else:
                yield line  # with its line terminator, so read gives the input back
        return
    if json_mode:
        data = stdin.read()
        if not data.strip():
            return
        reason = _check_json(data)
        if reason is not None:
            state.invalid += 1
            err(f"stdin is {reason} (a JSON stream takes one JSON value per message; use "
                 "--lines for one value per line); nothing was sent")
            return
        yield data.strip()
        return
    yield from _iter_chunks(stdin)


def cmd_append(args: argparse.Namespace) -> int:
    url = resolve_url(args.url)
    handle = handle_for(args, url)
    with handle:
        try:
            info = handle.head()
        except (errors.TransportError, errors.ServerError) as exc:
            # With a journal, a server that cannot be reached is not the end: journal the
            # input (its content type known from an earlier run, or --content-type) and exit 75.
            known = peek_content_type(args.journal) if args.journal else None
            if args.journal and args.content_type:
                if known is not None and P.media_type(known) != P.media_type(
                        args.content_type):
                    raise UsageError(f"--content-type {args.content_type} does not match "
                                     f"the journal's {known}") from None
                known = known or args.content_type
            if known is None:
                if args.journal:
                    note("the journal does not know the stream's content type yet: give "
                         "--content-type to journal the input while the server is down")
                raise
            note(f"{shown(url)} cannot be reached ({exc}); journaling the input in {args.journal}")
            info = StreamInfo(offset="", content_type=known, closed=False, ttl_seconds=None,
                              expires_at=None, etag=None, cache_control=None)
        if args.content_type and P.media_type(args.content_type) != P.media_type(
                info.content_type):
            raise UsageError(f"--content-type {args.content_type} does not match the "
                             f"stream's {info.content_type or P.DEFAULT_CONTENT_TYPE}")
        if info.closed:
            raise errors.StreamClosedError(
                f"the stream {shown(url)} is closed; appends are refused", url=url,
                final_offset=info.offset,
            )
        json_mode = P.is_json(info.content_type)
        arg_messages: list[bytes] | None = None
        if args.data:
            if args.lines:
                raise UsageError("give DATA arguments or --lines (stdin), not both")
            arg_messages = _messages_from_args(args.data, json_mode)
        return _run_append(args, url, handle, info, json_mode, arg_messages)


def _run_append(args: argparse.Namespace, url: str, handle: DurableStream, info: StreamInfo,
                json_mode: bool, arg_messages: list[bytes] | None) -> int:
    state = _AppendState()

    def on_error(err: errors.DurableStreamError) -> None:
        if state.first_failure is None:
            state.first_failure = err
        state.failed_early.set()

    stable_id = args.producer_id is not None
    if args.journal and not stable_id:
        raise UsageError("--journal needs --producer-id (the journal belongs to one writer id)")
    producer_id = args.producer_id or (
        f"durable-streams-cli-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )
    delivery_ms = args.delivery_timeout * 1000.0
    journal_opts: dict[str, object] = {}
    if args.journal:
        journal_opts = {"journal": args.journal}
        delivery_ms = journal_delivery_ms(args.delivery_timeout)  # pending: stays journaled
    producer = IdempotentProducer(
        handle,
        producer_id,
        # A stable id is reused run after run (cron): claim a fresh epoch rather than have
        # tonight's first batch taken for a duplicate of last night's.
        auto_claim=stable_id,
        linger_ms=args.linger_ms,
        delivery_timeout_ms=delivery_ms,
        max_block_ms=delivery_ms,
        content_type=info.content_type or P.DEFAULT_CONTENT_TYPE,
        validate_json=False,  # validated line by line above, with line numbers
        on_error=on_error,
        flush_at_exit=False,
        **journal_opts,  # type: ignore[arg-type]
    )
    show_progress = args.progress == "always" or (args.progress == "auto" and stderr_is_tty())
    progress = _Progress(producer, sys.stderr).start() if show_progress else None
    stdin = sys.stdin.buffer
    source: Iterable[bytes] = (arg_messages if arg_messages is not None
                               else _messages_from_stdin(args, json_mode, state, stdin))
    terminal: BaseException | None = None
    interrupted = False
    try:
        try:
            for message in source:
                if state.failed_early.is_set():
                    # The server refused or is gone: stop reading the input (a writer
                    # upstream gets EPIPE, as with `| head`) rather than drop it silently.
                    state.stopped_early = True
                    break
                try:
                    producer.append(message)
                except ValueError as exc:  # too large for one request
                    state.invalid += 1
                    err(f"message {state.read + state.invalid}: {exc}; skipped")
                    continue
                state.read += 1
        except errors.DurableStreamError as exc:  # fenced, closed, buffer full...
            terminal = exc
        except KeyboardInterrupt:
            interrupted = True
        close_offset: str | None = None
        flush_error: BaseException | None = None
        try:
            # On Ctrl-C, give what was read a short chance to land; a second Ctrl-C ends it.
            producer.flush(timeout=min(5.0, args.delivery_timeout) if interrupted
                           else args.delivery_timeout if args.journal else None)
            if args.close and not interrupted and terminal is None:
                close_offset = producer.close_stream()
        except (errors.DurableStreamError, TimeoutError) as exc:
            flush_error = exc
        try:
            producer.close(timeout=1.0 if (interrupted or flush_error) else None)
        except (errors.DurableStreamError, TimeoutError) as exc:
            flush_error = flush_error or exc
    finally:
        if progress is not None:
            progress.stop()
    stats = producer.stats()
    undelivered = stats.messages_appended - stats.messages_acked
    if interrupted:
        err(f"interrupted: {fmt_count(stats.messages_acked)} messages delivered, "
             f"{fmt_count(undelivered)} not delivered")
        return EXIT_INTERRUPTED
    cause: BaseException | None = terminal or flush_error or state.first_failure
    abandoned = state.first_failure is None or isinstance(state.first_failure,
                                                          errors.ProducerClosedError)
    if args.journal and undelivered and abandoned and terminal is None and isinstance(
            flush_error, (TimeoutError, errors.DeliveryError)):
        return still_journaled(undelivered, shown(url), args.journal,
                               of=stats.messages_appended)
    if undelivered or terminal is not None or flush_error is not None:
        first = cause
        if isinstance(first, errors.DeliveryError) and first.errors:
            first = first.errors[0]
        stopped = "; stopped reading the input" if state.stopped_early else ""
        err(f"{fmt_count(undelivered)} of {fmt_count(stats.messages_appended)} messages "
             f"were not delivered to {shown(url)}{stopped}: {first}")
        return exit_code_for(cause) if cause is not None else EXIT_FAILED
    if state.invalid:
        err(f"{fmt_count(state.invalid)} input line(s) were invalid and skipped; "
             f"{fmt_count(stats.messages_acked)} messages delivered")
        return EXIT_FAILED
    if close_offset is not None:
        note(f"closed {shown(url)} at offset {close_offset}")
    return EXIT_OK


def register(commands: Commands) -> None:
    """Add ``append``."""
    p = commands.add(
        "append", "append messages from arguments or stdin (exactly once)",
        "Append messages through an idempotent producer (batched, retried without "
        "duplicates). Each DATA argument is one message; without DATA, stdin is read: "
        "with --lines each line is one message (a JSON stream needs one JSON value per "
        "line: invalid lines are reported with their number and skipped, the rest is "
        "sent, and the exit code is 1; blank lines are ignored; for other streams the "
        "line is sent with its newline). Without --lines stdin is streamed in chunks "
        "(a JSON stream takes the whole input as one JSON value). The stream is never "
        "closed unless --close is given. On a terminal, progress is shown on stderr.")
    commands.add_url(p)
    p.add_argument("data", metavar="DATA", nargs="*", help="messages to append")
    p.add_argument("--lines", "-l", action="store_true",
                   help="read stdin line by line, one message per line")
    p.add_argument("--producer-id", metavar="ID",
                   help="a writer id reused run after run, e.g. 'nightly-backup' (one run "
                        "at a time per id): each run claims a new epoch under it, so a run "
                        "is never taken for a retry of the previous one (default: a unique "
                        "id per run)")
    p.add_argument("--journal", metavar="DIR",
                   help="journal accepted messages in DIR (crash-safe; needs --producer-id): "
                        "if they cannot all be delivered within --delivery-timeout, the run "
                        f"exits {EXIT_JOURNALED} once its input is journaled, and the next run "
                        "with this journal delivers it first")
    p.add_argument("--content-type", "-t", metavar="TYPE",
                   help="the stream's content type, checked against the server's; with "
                        "--journal it lets a first run journal its input while the server "
                        f"cannot be reached (exit {EXIT_JOURNALED})")
    p.add_argument("--close", action="store_true",
                   help="close the stream (EOF) once everything was delivered")
    p.add_argument("--delivery-timeout", type=positive_float, default=120.0,
                   metavar="SECONDS",
                   help="give up on a message not acknowledged within this time "
                        "(default: 120)")
    p.add_argument("--linger-ms", type=float, default=5.0, metavar="MS",
                   help="wait up to this long to fill a batch (default: 5)")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress on stderr: auto = only on a terminal (default)")
    p.set_defaults(func=cmd_append)
