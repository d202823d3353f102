"""``serve``: run the pinned reference server in the foreground until Ctrl-C.

Built on :class:`durable_streams.testing.ReferenceServer` (the same server the test suite
and the pytest plugin use). The base URL is printed on stdout, alone on its line, as soon as
the server listens; the rest (version, stream root, storage) goes to stderr on a terminal.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import TYPE_CHECKING

from ._common import EXIT_FAILED, EXIT_OK, Commands, err, note

if TYPE_CHECKING:
    from ..testing import ReferenceServer

#: The port the README's examples use.
DEFAULT_PORT = 4437


def cmd_serve(args: argparse.Namespace) -> int:
    from ..testing import ReferenceServer

    server = ReferenceServer(port=args.port, data_dir=args.data_dir, webhooks=args.webhooks)
    with _stop_signals():
        return _serve(server, args)


def _serve(server: ReferenceServer, args: argparse.Namespace) -> int:
    from ..testing import SERVER_PACKAGE, SERVER_VERSION, ServerUnavailableError

    note(f"starting {SERVER_PACKAGE} {SERVER_VERSION} (the first run installs it with npm)...")
    try:
        try:
            server.start()
        except ServerUnavailableError as exc:
            hint = (f" (is port {args.port} in use? pick another with --port, or 0 for a "
                    "free one)" if args.port else "")
            err(f"cannot start the reference server{hint}: {exc}")
            return EXIT_FAILED
        sys.stdout.write(server.url + "\n")
        sys.stdout.flush()
        storage = (f"on disk in {server.data_dir}" if server.data_dir is not None
                   else "in memory (gone when it stops)")
        note(f"{SERVER_PACKAGE} {SERVER_VERSION} at {server.url}; streams {storage}; "
             f"stream root for subscriptions {server.stream_root}; webhooks "
             f"{'on' if args.webhooks else 'off'}. Ctrl-C stops it.")
        code = server.wait()
        err(f"the reference server exited by itself (exit code {code}): "
            f"{server.log_tail(600)}")
        return EXIT_FAILED
    except KeyboardInterrupt:  # the way to stop it: exit 0
        note("stopped")
        return EXIT_OK
    finally:
        server.stop()


@contextlib.contextmanager
def _stop_signals() -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM stop the server, even when the shell that started this
    process ignores SIGINT (as non-interactive shells do for background jobs)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0: any free port), got {port}")
    return port


def register(commands: Commands) -> None:
    """Add ``serve``."""
    p = commands.add(
        "serve", "run the pinned reference server on 127.0.0.1 until Ctrl-C",
        "Run the Durable Streams reference server that this package pins (the npm package "
        "@durable-streams/server, installed with npm on first use; needs Node.js 18+) on "
        "127.0.0.1 in the foreground. Prints its base URL on stdout once it listens; "
        "streams live under any path, e.g. BASE_URL/v1/stream/NAME (subscriptions see "
        "those under BASE_URL/v1/stream). Ctrl-C stops it (exit 0).")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, metavar="PORT",
                   help=f"TCP port on 127.0.0.1 (default: {DEFAULT_PORT}; 0: any free port)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="keep streams on disk in DIR, so they survive a restart "
                        "(default: in memory)")
    p.add_argument("--webhooks", action="store_true",
                   help="accept webhook subscriptions (signed deliveries; PROTOCOL §6.2)")
    p.set_defaults(func=cmd_serve)
