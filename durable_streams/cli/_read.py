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
    from ..reading import LiveMode, StreamResponse
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


def open_read(args: argparse.Namespace) -> tuple[StreamResponse, LiveMode]:
    """Start the read every reading command makes (the options of :func:`add_read_options`):
    the response, and the live mode that --sse, --long-poll or --follow asked for
    (``False``: stop at the end of the data)."""
    from ..reading import stream

    live: LiveMode = False
    if args.sse:
        live = "sse"
    elif args.long_poll:
        live = "long-poll"
    elif args.follow:
        live = True
    response = stream(resolve_url(args.url), offset=args.offset, live=live,
                      headers=headers_of(args), timeout=args.timeout,
                      stop_after=args.stop_after)
    return response, live


def cmd_read(args: argparse.Namespace) -> int:
    response, live = open_read(args)
    # The offset after the last chunk fully written to stdout: resuming from it repeats
    # nothing that was written and skips nothing that was not. Ctrl-C is held back while
    # a chunk is written and its offset recorded, so the two always agree.
    with ReadOutput(response, live, args.offset) as output:
        sigint = _DeferredSigint.install()
        if P.is_json(response.content_type):
            dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
            for batch in response.iter_json_batches():
                with sigint.deferred():
                    if batch.items:
                        output.write("".join(dumps(item) + "\n" for item in batch.items)
                                     .encode("utf-8"))
                    output.resume = batch.offset
        else:
            for event in response.iter_events():
                with sigint.deferred():
                    if event.data:
                        output.write(event.data)
                    output.resume = event.offset
    return output.code


class ReadOutput:
    """Standard output of a reading command from its first write to its exit (a context
    manager around the read loop).

    :meth:`write` writes and flushes; the loop sets :attr:`resume` to the offset after
    what it has written. At the end of the ``with`` block the read is closed
    (:func:`end_read`, which prints ``resume`` on stderr) and :attr:`code` is the exit
    code: a reader of stdout that went away (``| head``) is a success, Ctrl-C is
    ``EXIT_INTERRUPTED``; any other exception propagates. While following, a watcher ends
    the read as soon as the reader of a stdout pipe goes away.
    """

    def __init__(self, response: StreamResponse, live: LiveMode, resume: str) -> None:
        self.response = response
        self.resume = resume
        self.code = EXIT_OK
        self._out = sys.stdout.buffer
        self._watcher = _PipeWatcher.start(sys.stdout, response.close) if live else None

    def write(self, data: bytes) -> None:
        _write_out(self._out, data)

    def __enter__(self) -> ReadOutput:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> bool:
        try:
            if exc_type is not None and issubclass(exc_type, _ClosedPipe):
                silence_stdout()
                return True
            if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
                self.code = EXIT_INTERRUPTED
                return True
            return False
        finally:
            end_read(self.response, self._watcher, self.resume)


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
