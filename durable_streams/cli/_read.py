"""``read``: a stream's data to stdout, optionally following it; the resume offset at exit.

``read`` always prints the resume offset to stderr at exit (``offset: <token>``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING

from .. import _protocol as P

if TYPE_CHECKING:
    from ..reading import StreamResponse
from ._common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    Commands,
    headers_of,
    positive_float,
    resolve_url,
    silence_stdout,
)


class _ClosedPipe(Exception):
    """stdout was closed by the reader (``| head``)."""


def _write_out(out: IO[bytes], data: bytes) -> None:
    try:
        out.write(data)
        out.flush()
    except BrokenPipeError:
        raise _ClosedPipe from None
    except OSError as exc:
        import errno

        if exc.errno in (errno.EPIPE, errno.EINVAL):
            raise _ClosedPipe from None
        raise


class _PipeWatcher:
    """Notice that the reading end of a stdout pipe was closed while no data is written.

    ``read --follow | head -1`` would otherwise wait for the next message before finding
    out; poll() reports POLLERR on a pipe whose reader is gone.
    """

    def __init__(self, fd: int, on_closed: Callable[[], None]) -> None:
        self.fd = fd
        self.on_closed = on_closed
        self.fired = False

    @classmethod
    def start(cls, stdout: IO[str], on_closed: Callable[[], None]) -> _PipeWatcher | None:
        import select
        import stat

        if not hasattr(select, "poll"):
            return None
        try:
            fd = stdout.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return None
        except (OSError, ValueError, AttributeError):
            return None
        watcher = cls(fd, on_closed)
        threading.Thread(target=watcher._run, name="durable-streams-stdout-watch",
                         daemon=True).start()
        return watcher

    def _run(self) -> None:
        import select

        poller = select.poll()
        poller.register(self.fd, 0)  # no events asked: only POLLERR/POLLHUP/POLLNVAL come
        try:
            while not poller.poll():
                pass
        except OSError:
            return
        self.fired = True
        self.on_closed()


class _DeferredSigint:
    """A SIGINT handler that can hold Ctrl-C back during a short critical section.

    Outside :meth:`deferred` it raises ``KeyboardInterrupt`` as usual. Inside, the first
    Ctrl-C is remembered and raised when the section ends; a second one is raised at once
    (a write blocked on a stalled reader must stay interruptible).
    """

    def __init__(self) -> None:
        self.deferring = False
        self.pending = False

    @classmethod
    def install(cls) -> _DeferredSigint:
        guard = cls()
        try:
            # Only replace Python's default handler (not SIG_IGN: a background job).
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, guard._handle)
        except ValueError:  # not the main thread
            pass
        return guard

    def _handle(self, signum: int, frame: object) -> None:
        if self.deferring and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.deferring = True
        try:
            yield
        finally:
            self.deferring = False
        if self.pending:
            raise KeyboardInterrupt


def cmd_read(args: argparse.Namespace) -> int:
    from ..reading import LiveMode, stream

    url = resolve_url(args.url)
    live: LiveMode = False
    if args.sse:
        live = "sse"
    elif args.long_poll:
        live = "long-poll"
    elif args.follow:
        live = True
    response = stream(url, offset=args.offset, live=live, headers=headers_of(args),
                      timeout=args.timeout, stop_after=args.stop_after)
    out = sys.stdout.buffer
    watcher = _PipeWatcher.start(sys.stdout, response.close) if live else None
    sigint = _DeferredSigint.install()
    # The offset after the last chunk fully written to stdout: resuming from it repeats
    # nothing that was written and skips nothing that was not. Ctrl-C is held back while
    # a chunk is written and its offset recorded, so the two always agree.
    resume = args.offset
    code = EXIT_OK
    try:
        if P.is_json(response.content_type):
            dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
            for batch in response.iter_json_batches():
                with sigint.deferred():
                    if batch.items:
                        text = "".join(dumps(item) + "\n" for item in batch.items)
                        _write_out(out, text.encode("utf-8"))
                    resume = batch.offset
        else:
            for event in response.iter_events():
                with sigint.deferred():
                    if event.data:
                        _write_out(out, event.data)
                    resume = event.offset
    except _ClosedPipe:
        silence_stdout()
        code = EXIT_OK
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    finally:
        end_read(response, watcher, resume)
    return code


def end_read(response: StreamResponse, watcher: _PipeWatcher | None, resume: str) -> None:
    """What every reading command does last: close the read, keep quiet if the reader of
    stdout went away, and print the offset to resume from on stderr."""
    # A second Ctrl-C while closing ends the process at once (no traceback).
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    response.close()
    if watcher is not None and watcher.fired:
        silence_stdout()  # the reader went away while we were waiting for data
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"offset: {resume}\n")
        sys.stderr.flush()


def register(commands: Commands) -> None:
    """Add ``read``."""
    p = commands.add(
        "read", "write a stream's data to stdout",
        "Write the stream's data to stdout (a JSON stream: one compact JSON value per "
        "line) from --offset, and stop at the end of the data, or with --follow keep "
        "following until EOF (the stream is closed) or Ctrl-C. At exit the offset to "
        "resume from is printed on stderr as 'offset: <token>'.")
    commands.add_url(p)
    add_read_options(
        p, offset_help="start here: -1 (the beginning, default), now, or a saved offset",
        follow_help="keep reading new data (SSE, falling back to long-poll)")
    p.set_defaults(func=cmd_read)


def add_read_options(p: argparse.ArgumentParser, *, offset_help: str, follow_help: str
                     ) -> None:
    """The options every reading command takes: --offset, --follow/--sse/--long-poll,
    --stop-after."""
    p.add_argument("--offset", "-o", default=P.OFFSET_BEGINNING, metavar="OFFSET",
                   help=offset_help)
    p.add_argument("--follow", "-f", action="store_true", help=follow_help)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--sse", action="store_true", help="follow with SSE (implies --follow)")
    mode.add_argument("--long-poll", action="store_true",
                      help="follow with long-poll requests (implies --follow)")
    p.add_argument("--stop-after", type=positive_float, metavar="SECONDS",
                   help="stop following after this many seconds")
