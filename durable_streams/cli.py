"""The ``durable-streams`` command line (also ``python -m durable_streams``).

Subcommands: ``create``, ``head``, ``delete``, ``close``, ``append``, ``read`` and ``demo``.
Run ``durable-streams COMMAND --help`` for each one. Exit codes are listed in :data:`EPILOG`.

Output rules: data goes to stdout; errors go to stderr as one line each
(``durable-streams: error: ...``); informational lines (progress, confirmations) go to stderr
only when stderr is a terminal, so a piped or cron run prints nothing but errors. ``read``
always prints the resume offset to stderr at exit (``offset: <token>``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any, NoReturn

from . import _protocol as P
from . import errors
from ._redact import redact_text
from .producer import IdempotentProducer
from .stream import DurableStream, StreamInfo

__all__ = [
    "EXIT_CONFLICT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "main",
]

PROG = "durable-streams"
URL_ENV = "DURABLE_STREAMS_URL"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_INTERRUPTED = 130

EPILOG = f"""\
URL: a full http(s) URL, or a stream name joined to ${URL_ENV}, e.g.
  {URL_ENV}=https://host/v1/stream and logs/app -> https://host/v1/stream/logs/app

exit codes:
  0    success (append: every message was acknowledged by the server)
  1    the operation failed, or some messages were not delivered
       (append: also when input lines were not valid JSON)
  2    usage error (bad arguments, missing URL)
  3    stream not found (or gone)
  4    conflict: the stream is closed, exists with another configuration,
       or another writer took over the producer id
  130  interrupted (Ctrl-C)
"""

#: How many invalid input lines ``append --lines`` reports one by one.
_MAX_LINE_REPORTS = 100
_STDIN_CHUNK = 64 * 1024
_MiB = 1024 * 1024


class UsageError(Exception):
    """A mistake on the command line: exit code 2."""


# -- small helpers ---------------------------------------------------------------------------


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _err(message: object) -> None:
    """One clear line on stderr."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{PROG}: error: {redact_text(_one_line(message))}\n")
        sys.stderr.flush()


def _info(message: str) -> None:
    """An informational line, shown only when stderr is a terminal."""
    if _stderr_is_tty():
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(redact_text(message) + "\n")
            sys.stderr.flush()


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def resolve_url(target: str, environ: dict[str, str] | None = None) -> str:
    """A full URL as is, otherwise ``target`` joined to ``$DURABLE_STREAMS_URL``."""
    env = os.environ if environ is None else environ
    if target.startswith(("http://", "https://")):
        return target
    if "://" in target:
        raise UsageError(f"unsupported URL scheme in {target!r}: use http:// or https://")
    base = env.get(URL_ENV, "").strip()
    if not base:
        raise UsageError(
            f"{target!r} is not an http(s) URL and {URL_ENV} is not set; "
            f"pass a full URL or export {URL_ENV}=https://host/base"
        )
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"{URL_ENV} must be an http(s) URL, got {base!r}")
    name = target.lstrip("/")
    if not name:
        raise UsageError("empty stream name")
    return base.rstrip("/") + "/" + name


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` -> ``('Name', 'value')``; raises :class:`UsageError`."""
    name, sep, value = text.partition(":")
    name = name.strip()
    # The value is never echoed: it is often a credential.
    if not sep or not name or any(c in name for c in " \t\r\n"):
        raise UsageError("--header must look like 'Name: value' (a name, a colon, a value); "
                         "got text that does not (not shown)")
    value = value.strip()
    if "\n" in value or "\r" in value:
        raise UsageError(f"--header value must be one line; the value of {name!r} is not "
                         "(not shown)")
    return name, value


def _headers(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in args.header or ():
        name, value = parse_header(raw)
        out[name] = value
    return out


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def _handle(args: argparse.Namespace, url: str) -> DurableStream:
    timeout = args.timeout
    return DurableStream(url, headers=_headers(args), timeout=timeout)


def _fmt_count(n: float) -> str:
    return f"{n:,.0f}"


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - unreachable


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code for an exception raised by the library."""
    if isinstance(exc, errors.DeliveryError) and exc.errors:
        codes = {exit_code_for(e) for e in exc.errors}
        for code in (EXIT_NOT_FOUND, EXIT_CONFLICT):
            if code in codes:
                return code
        return EXIT_FAILED
    if isinstance(exc, (errors.StreamNotFoundError, errors.RetentionGoneError)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (errors.ConflictError, errors.StaleEpochError)):
        return EXIT_CONFLICT
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    return EXIT_FAILED


# -- create / head / delete / close ----------------------------------------------------------


def cmd_create(args: argparse.Namespace) -> int:
    url = resolve_url(args.url)
    handle = DurableStream.create(
        url,
        content_type=args.content_type,
        ttl_seconds=args.ttl,
        expires_at=args.expires_at,
        closed=args.closed,
        headers=_headers(args),
        timeout=args.timeout,
    )
    with handle:
        if handle.created:
            _info(f"created {url} ({handle.content_type or P.DEFAULT_CONTENT_TYPE})")
        else:
            _info(f"{url} already exists with the same configuration")
    return EXIT_OK


def _info_dict(url: str, info: StreamInfo) -> dict[str, Any]:
    return {
        "url": url,
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
    with _handle(args, url) as handle:
        info = handle.head()
    data = _info_dict(url, info)
    if args.json:
        sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
    else:
        rows = [
            ("url", url),
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
    with _handle(args, url) as handle:
        handle.delete()
    _info(f"deleted {url}")
    return EXIT_OK


def cmd_close(args: argparse.Namespace) -> int:
    url = resolve_url(args.url)
    with _handle(args, url) as handle:
        offset = handle.close_stream(body=args.message)
    sys.stdout.write(offset + "\n")
    sys.stdout.flush()
    _info(f"closed {url}")
    return EXIT_OK


# -- append ----------------------------------------------------------------------------------


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
        return (f"{_fmt_count(stats.messages_acked)} messages, "
                f"{_fmt_bytes(stats.bytes_acked)} acknowledged, "
                f"{_fmt_count(stats.messages_acked / elapsed)} msg/s")

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
                        _err(f"line {lineno}: {reason}; skipped")
                    elif state.invalid == _MAX_LINE_REPORTS + 1:
                        _err("more invalid lines follow; not reporting them one by one")
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
            _err(f"stdin is {reason} (a JSON stream takes one JSON value per message; use "
                 "--lines for one value per line); nothing was sent")
            return
        yield data.strip()
        return
    yield from _iter_chunks(stdin)


def cmd_append(args: argparse.Namespace) -> int:
    url = resolve_url(args.url)
    handle = _handle(args, url)
    with handle:
        info = handle.head()
        if info.closed:
            raise errors.StreamClosedError(
                f"the stream {url} is closed; appends are refused", url=url,
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
    producer_id = args.producer_id or (
        f"durable-streams-cli-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    )
    delivery_ms = args.delivery_timeout * 1000.0
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
    )
    show_progress = args.progress == "always" or (args.progress == "auto" and _stderr_is_tty())
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
                    _err(f"message {state.read + state.invalid}: {exc}; skipped")
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
            producer.flush(timeout=min(5.0, args.delivery_timeout) if interrupted else None)
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
        _err(f"interrupted: {_fmt_count(stats.messages_acked)} messages delivered, "
             f"{_fmt_count(undelivered)} not delivered")
        return EXIT_INTERRUPTED
    cause: BaseException | None = terminal or flush_error or state.first_failure
    if undelivered or terminal is not None or flush_error is not None:
        first = cause
        if isinstance(first, errors.DeliveryError) and first.errors:
            first = first.errors[0]
        stopped = "; stopped reading the input" if state.stopped_early else ""
        _err(f"{_fmt_count(undelivered)} of {_fmt_count(stats.messages_appended)} messages "
             f"were not delivered to {url}{stopped}: {first}")
        return exit_code_for(cause) if cause is not None else EXIT_FAILED
    if state.invalid:
        _err(f"{_fmt_count(state.invalid)} input line(s) were invalid and skipped; "
             f"{_fmt_count(stats.messages_acked)} messages delivered")
        return EXIT_FAILED
    if close_offset is not None:
        _info(f"closed {url} at offset {close_offset}")
    return EXIT_OK


# -- read ------------------------------------------------------------------------------------


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


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is quiet."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


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
    from .reading import LiveMode, stream

    url = resolve_url(args.url)
    live: LiveMode = False
    if args.sse:
        live = "sse"
    elif args.long_poll:
        live = "long-poll"
    elif args.follow:
        live = True
    response = stream(url, offset=args.offset, live=live, headers=_headers(args),
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
        _silence_stdout()
        code = EXIT_OK
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    finally:
        # A second Ctrl-C while closing ends the process at once (no traceback).
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        response.close()
        if watcher is not None and watcher.fired:
            _silence_stdout()  # the reader went away while we were waiting for data
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(f"offset: {resume}\n")
            sys.stderr.flush()
    return code


# -- demo ------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .reading import stream

    n = args.messages
    server = None
    base = args.server
    if base is None:
        from .testing import ReferenceServer, ServerUnavailableError

        _info("starting the reference server (the first run installs it with npm)...")
        server = ReferenceServer()
        try:
            server.start()
        except ServerUnavailableError as exc:
            _err(f"cannot start the reference server: {exc}")
            return EXIT_FAILED
        base = server.url
    try:
        return _demo(args, base.rstrip("/"), n, stream, server is not None)
    finally:
        if server is not None:
            server.stop()


def _demo(args: argparse.Namespace, base: str, n: int,
          stream: Callable[..., Any], local: bool) -> int:
    run = uuid.uuid4().hex[:12]
    url = f"{base}/durable-streams-demo-{run}"
    headers = _headers(args)
    pad = "x" * max(args.size - 40, 0)
    out = sys.stdout
    DurableStream.create(url, content_type="application/json", headers=headers,
                         timeout=args.timeout).close()

    # A live reader follows the stream (SSE) while it is written, until EOF.
    live_items: list[Any] = []
    live_error: list[BaseException] = []
    live = stream(url, live=True, headers=headers, stop_after=60.0 + n / 1000.0)

    def follow() -> None:
        try:
            for item in live.iter_json():
                live_items.append(item)
        except BaseException as exc:  # reported by the main thread
            live_error.append(exc)

    follower = threading.Thread(target=follow, name="durable-streams-demo-reader", daemon=True)
    follower.start()

    t0 = time.perf_counter()
    with IdempotentProducer(url, f"demo-{run}", headers=headers,
                            content_type="application/json") as producer:
        for i in range(n):
            producer.append(json.dumps({"run": run, "i": i, "pad": pad}))
        producer.flush()
        t_written = time.perf_counter()
        final_offset = producer.close_stream()
        stats = producer.stats()
    follower.join(timeout=60.0 + n / 1000.0)
    live.close()

    t1 = time.perf_counter()
    with stream(url, headers=headers, timeout=args.timeout) as catchup:
        chunks = 0
        items: list[Any] = []
        first_chunk_offset = None
        for batch in catchup.iter_json_batches():
            if batch.items:
                chunks += 1
                if first_chunk_offset is None:
                    first_chunk_offset = batch.offset
                items.extend(batch.items)
        eof = catchup.closed
        end_offset = catchup.offset
    t_read = time.perf_counter() - t1

    problems = []
    for name, got in (("catch-up read", items), ("live read", live_items)):
        problem = _verify(got, run, n)
        if problem:
            problems.append(f"{name}: {problem}")
    if live_error:
        problems.append(f"live read failed: {live_error[0]}")
    if not eof:
        problems.append("the catch-up read did not see EOF after close_stream()")
    if end_offset != final_offset:
        problems.append(f"read ended at offset {end_offset}, close_stream() said {final_offset}")

    write_s = max(t_written - t0, 1e-9)
    rows = [
        ("server", f"{base}" + (" (local reference server)" if local else "")),
        ("stream", f"{url} (application/json)"),
        ("written", f"{_fmt_count(n)} messages of ~{args.size} B in {write_s:.3f} s "
                    f"({_fmt_count(n / write_s)} msg/s) by an IdempotentProducer, "
                    f"{_fmt_count(stats.batches_sent)} batches, "
                    f"{_fmt_count(stats.retries)} retries"),
        ("read back", f"{_fmt_count(len(items))} messages in {t_read:.3f} s "
                      f"({_fmt_count(len(items) / max(t_read, 1e-9))} msg/s), "
                      f"{_fmt_count(chunks)} chunk(s); live (SSE) reader got "
                      f"{_fmt_count(len(live_items))}"),
        ("offsets", f"after first chunk {first_chunk_offset or '-'}, final {final_offset}"),
    ]
    for key, value in rows:
        out.write(f"{key + ':':<11}{value}\n")
    if problems:
        for problem in problems:
            out.write(f"{'FAILED:':<11}{problem}\n")
        out.flush()
        _err(f"demo verification failed: {problems[0]}")
        return EXIT_FAILED
    out.write(f"{'verified:':<11}every message exactly once, in order, by both readers\n")
    out.flush()
    return EXIT_OK


def _verify(items: list[Any], run: str, n: int) -> str | None:
    for i, item in enumerate(items):
        if not isinstance(item, dict) or item.get("run") != run or item.get("i") != i:
            return f"message {i} is {str(item)[:80]}, expected i={i}"
    if len(items) != n:
        return f"{len(items)} messages instead of {n}"
    return None


# -- the parser ------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_one_line(message)}\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    common = _Parser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("-H", "--header", action="append", metavar="'NAME: VALUE'",
                       help="extra request header (repeatable), e.g. "
                            "'Authorization: Bearer TOKEN'")
    group.add_argument("--timeout", type=_positive_float, metavar="SECONDS",
                       help="per-request timeout (default: 10 s connect, 60 s read)")

    parser = _Parser(
        prog=PROG,
        description="Create, inspect, write and read Durable Streams from the shell.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=textwrap.fill(description, 79), epilog=EPILOG,
            parents=[common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return p

    url_help = f"stream URL, or a name joined to ${URL_ENV}"

    p = add("create", "create a stream (or confirm it exists with the same settings)",
            "Create a stream (PUT). Succeeds if it already exists with the same settings.")
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("--content-type", "-t", metavar="TYPE",
                   help="content type, e.g. application/json (JSON mode) or text/plain "
                        f"(default: the server's, usually {P.DEFAULT_CONTENT_TYPE})")
    ttl = p.add_mutually_exclusive_group()
    ttl.add_argument("--ttl", type=_non_negative_int, metavar="SECONDS",
                     help="delete the stream this many seconds after its last use")
    ttl.add_argument("--expires-at", metavar="TIME",
                     help="delete the stream at this RFC 3339 time")
    p.add_argument("--closed", action="store_true", help="create it already closed")
    p.set_defaults(func=cmd_create)

    p = add("head", "show a stream's metadata",
            "Show the stream's content type, tail offset, closed flag and expiry.")
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_head)

    p = add("delete", "delete a stream and its data", "Delete the stream (DELETE).")
    p.add_argument("url", metavar="URL", help=url_help)
    p.set_defaults(func=cmd_delete)

    p = add("close", "close a stream (EOF for every reader)",
            "Close the stream: readers see EOF and appends are refused. Prints the final "
            "offset on stdout. An optional final message is appended atomically with the "
            "close (JSON text for a JSON stream).")
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("message", metavar="FINAL_MESSAGE", nargs="?",
                   help="a last message to append with the close")
    p.set_defaults(func=cmd_close)

    p = add("append", "append messages from arguments or stdin (exactly once)",
            "Append messages through an idempotent producer (batched, retried without "
            "duplicates). Each DATA argument is one message; without DATA, stdin is read: "
            "with --lines each line is one message (a JSON stream needs one JSON value per "
            "line: invalid lines are reported with their number and skipped, the rest is "
            "sent, and the exit code is 1; blank lines are ignored; for other streams the "
            "line is sent with its newline). Without --lines stdin is streamed in chunks "
            "(a JSON stream takes the whole input as one JSON value). The stream is never "
            "closed unless --close is given. On a terminal, progress is shown on stderr.")
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("data", metavar="DATA", nargs="*", help="messages to append")
    p.add_argument("--lines", "-l", action="store_true",
                   help="read stdin line by line, one message per line")
    p.add_argument("--producer-id", metavar="ID",
                   help="a writer id reused run after run, e.g. 'nightly-backup' (one run "
                        "at a time per id): each run claims a new epoch under it, so a run "
                        "is never taken for a retry of the previous one (default: a unique "
                        "id per run)")
    p.add_argument("--close", action="store_true",
                   help="close the stream (EOF) once everything was delivered")
    p.add_argument("--delivery-timeout", type=_positive_float, default=120.0,
                   metavar="SECONDS",
                   help="give up on a message not acknowledged within this time "
                        "(default: 120)")
    p.add_argument("--linger-ms", type=float, default=5.0, metavar="MS",
                   help="wait up to this long to fill a batch (default: 5)")
    p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress on stderr: auto = only on a terminal (default)")
    p.set_defaults(func=cmd_append)

    p = add("read", "write a stream's data to stdout",
            "Write the stream's data to stdout (a JSON stream: one compact JSON value per "
            "line) from --offset, and stop at the end of the data, or with --follow keep "
            "following until EOF (the stream is closed) or Ctrl-C. At exit the offset to "
            "resume from is printed on stderr as 'offset: <token>'.")
    p.add_argument("url", metavar="URL", help=url_help)
    p.add_argument("--offset", "-o", default=P.OFFSET_BEGINNING, metavar="OFFSET",
                   help="start here: -1 (the beginning, default), now, or a saved offset")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep reading new data (SSE, falling back to long-poll)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--sse", action="store_true", help="follow with SSE (implies --follow)")
    mode.add_argument("--long-poll", action="store_true",
                      help="follow with long-poll requests (implies --follow)")
    p.add_argument("--stop-after", type=_positive_float, metavar="SECONDS",
                   help="stop following after this many seconds")
    p.set_defaults(func=cmd_read)

    p = add("demo", "write and read back N messages on a local reference server",
            "Start a local reference server (installed with npm on first use), create a JSON "
            "stream, write N messages through an IdempotentProducer while a live reader "
            "follows it, close it, read everything back, and verify that every message "
            "arrived exactly once and in order. Exit 0 only if verified.")
    p.add_argument("--messages", "-n", type=_positive_int, default=10_000, metavar="N",
                   help="how many messages (default: 10000)")
    p.add_argument("--size", type=_positive_int, default=100, metavar="BYTES",
                   help="approximate size of each message (default: 100)")
    p.add_argument("--server", metavar="BASE_URL",
                   help="use this running server instead of starting one")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (see :data:`EPILOG`)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        _err("interrupted")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        _err(exc)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `durable-streams head URL | true`
        _silence_stdout()
        return EXIT_OK
    except errors.DurableStreamError as exc:
        _err(exc)
        return exit_code_for(exc)
    except ValueError as exc:  # argument values the library refused before any request
        _err(exc)
        return EXIT_USAGE
    except OSError as exc:
        _err(exc)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
