"""The ``durable-streams`` command line (also ``python -m durable_streams``).

Subcommands: ``create``, ``head``, ``delete``, ``close``, ``append``, ``read``, ``demo``,
``fork``, ``subscription``, ``state``, ``serve`` and ``journal``.
Run ``durable-streams COMMAND --help`` for each one. Exit codes are listed in :data:`EPILOG`.

Output rules: data goes to stdout; errors go to stderr as one line each
(``durable-streams: error: ...``); informational lines (progress, confirmations) go to stderr
only when stderr is a terminal, so a piped or cron run prints nothing but errors. ``read``
always prints the resume offset to stderr at exit (``offset: <token>``).

Layout: :mod:`._common` (exit codes, output, argument types, :class:`Commands`) and one
module per command group, each with ``register(commands)``. Adding a group is one new
module and one line in :data:`COMMAND_GROUPS`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
from collections.abc import Callable, Sequence

from .. import errors
from ._common import (
    EPILOG,
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    URL_ENV,
    Commands,
    Parser,
    UsageError,
    err,
    exit_code_for,
    parse_header,
    positive_float,
    resolve_url,
    silence_stdout,
)

__all__ = [
    "COMMAND_GROUPS",
    "EXIT_CONFLICT",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "URL_ENV",
    "UsageError",
    "build_parser",
    "exit_code_for",
    "main",
    "parse_header",
    "resolve_url",
]

#: The command groups, in ``--help`` order: modules of this package, each with
#: ``register(commands: Commands) -> None``.
COMMAND_GROUPS: tuple[str, ...] = (
    "_admin",  # create, head, delete, close
    "_append",
    "_read",
    "_demo",
    "_subs",  # fork, subscription create|info|delete
    "_state",
    "_serve",
    "_journal",  # journal DIR [--drain]
)


def build_parser() -> argparse.ArgumentParser:
    from .._version import DISTRIBUTION, __version__

    common = Parser(add_help=False)
    group = common.add_argument_group("connection")
    group.add_argument("-H", "--header", action="append", metavar="'NAME: VALUE'",
                       help="extra request header (repeatable), e.g. "
                            "'Authorization: Bearer TOKEN'")
    group.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                       help="per-request timeout (default: 10 s connect, 60 s read)")

    parser = Parser(
        prog=PROG,
        description="Create, inspect, write and read Durable Streams from the shell.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {__version__} ({DISTRIBUTION})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    commands = Commands(sub, common)
    for name in COMMAND_GROUPS:
        importlib.import_module(f"{__name__}.{name}").register(commands)
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
        err("interrupted")
        return EXIT_INTERRUPTED
    except UsageError as exc:
        err(exc)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `durable-streams head URL | true`
        silence_stdout()
        return EXIT_OK
    except errors.DurableStreamError as exc:
        err(exc)
        return exit_code_for(exc)
    except ValueError as exc:  # argument values the library refused before any request
        err(exc)
        return EXIT_USAGE
    except OSError as exc:
        err(exc)
        return EXIT_FAILED
    except Exception as exc:  # a bug: one redacted line, never a raw traceback with a URL
        err(f"internal error ({type(exc).__name__}): {exc}")
        return EXIT_FAILED
