"""What every command group of the command line shares: exit codes, output, arguments.

Output rules: data goes to stdout; errors go to stderr as one line each
(``durable-streams: error: ...``, :func:`err`); informational lines go to stderr only when
stderr is a terminal (:func:`note`), so a piped or cron run prints nothing but errors.

No secret is ever printed, on any path: a URL a command prints goes through :func:`shown`
(user-info and query values masked), and every line on stderr through
:func:`~durable_streams._redact.redact_text`. Names are joined to ``$DURABLE_STREAMS_URL``
with :func:`join_url`, which keeps the base URL's query (``?token=...``) at the end.

A command group is a module with ``register(commands: Commands) -> None`` that adds its
subcommands with :meth:`Commands.add` (the shared connection options and epilog included)
and sets ``func`` to a ``(args) -> exit code`` function; it is listed once in
``durable_streams/cli/__init__.py`` (``COMMAND_GROUPS``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sys
import textwrap
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

from .. import errors
from .._redact import MASK, redact_text, redact_url
from ..stream import DurableStream

PROG = "durable-streams"
URL_ENV = "DURABLE_STREAMS_URL"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
#: append --journal: not all delivered yet, but every message is journaled (EX_TEMPFAIL)
EXIT_JOURNALED = 75
EXIT_INTERRUPTED = 130

EPILOG = f"""\
URL: a full http(s) URL, or a stream name joined to ${URL_ENV}'s path, e.g.
  {URL_ENV}=https://host/v1/stream and logs/app -> https://host/v1/stream/logs/app
  ({URL_ENV}=https://host/v1/stream?token=T: https://host/v1/stream/logs/app?token=T)

exit codes:
  0    success (append: every message was acknowledged by the server)
  1    the operation failed, or some messages were not delivered
       (append: also when input lines were not valid JSON)
  2    usage error (bad arguments, missing URL)
  3    stream not found (or gone)
  4    conflict: the stream is closed, exists with another configuration,
       or another writer took over the producer id
  75   append --journal, journal --drain: not all delivered yet, but every
       message is kept in the journal; the next run delivers it first
  130  interrupted (Ctrl-C)
"""



class UsageError(Exception):
    """A mistake on the command line: exit code 2."""


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def err(message: object) -> None:
    """One clear line on stderr."""
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(f"{PROG}: error: {redact_text(one_line(message))}\n")
        sys.stderr.flush()


def note(message: str) -> None:
    """An informational line, shown only when stderr is a terminal."""
    if stderr_is_tty():
        with contextlib.suppress(OSError, ValueError):
            sys.stderr.write(redact_text(message) + "\n")
            sys.stderr.flush()


def stderr_is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def shown(url: str) -> str:
    """``url`` as the command line prints it: user-info and query values masked."""
    return redact_url(url)


# "user:password@host" written without a scheme (redact_text only knows scheme://...@).
_BARE_USERINFO_RE = re.compile(r"(^|[\s'\"(=,])[^\s/@'\"(),=]+@")


def shown_arg(text: str) -> str:
    """A command-line value that was meant to be a URL, safe to echo in an error: like
    :func:`shown`, and also masking ``user:password@`` written without a scheme."""
    return _BARE_USERINFO_RE.sub(r"\1" + MASK + "@", redact_text(text))


def join_url(base: str, name: str) -> str:
    """``name`` joined to the path of ``base``; the query of ``base`` (``?token=...``) is
    kept, after the name's own query if it has one.

    >>> join_url("http://h/v1/stream?token=T", "logs/app")
    'http://h/v1/stream/logs/app?token=T'
    """
    parts = urlsplit(base)
    name_path, _, name_query = name.partition("?")
    path = parts.path.rstrip("/") + "/" + name_path.lstrip("/")
    query = "&".join(q for q in (name_query, parts.query) if q)
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


def resolve_url(target: str, environ: dict[str, str] | None = None) -> str:
    """A full URL as is, otherwise ``target`` joined to ``$DURABLE_STREAMS_URL``
    (:func:`join_url`: the base's query is kept)."""
    env = os.environ if environ is None else environ
    if target.startswith(("http://", "https://")):
        return target
    if "://" in target:
        raise UsageError(f"unsupported URL scheme in {shown_arg(target)!r}: use http:// or "
                         "https://")
    base = env.get(URL_ENV, "").strip()
    if not base:
        raise UsageError(
            f"{shown_arg(target)!r} is not an http(s) URL and {URL_ENV} is not set; "
            f"pass a full URL or export {URL_ENV}=https://host/base"
        )
    if not base.startswith(("http://", "https://")):
        raise UsageError(f"{URL_ENV} must be an http(s) URL, got {shown_arg(base)!r}")
    name = target.lstrip("/")
    if not name or name.startswith("?"):
        raise UsageError("empty stream name")
    return join_url(base, name)


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


def headers_of(args: argparse.Namespace) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in args.header or ():
        name, value = parse_header(raw)
        out[name] = value
    return out


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be > 0")
    return value


def handle_for(args: argparse.Namespace, url: str) -> DurableStream:
    timeout = args.timeout
    return DurableStream(url, headers=headers_of(args), timeout=timeout)


def fmt_count(n: float) -> str:
    return f"{n:,.0f}"


def fmt_bytes(n: float) -> str:
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
    if isinstance(exc, (errors.StreamNotFoundError, errors.RetentionGoneError,
                        errors.SubscriptionNotFoundError)):
        return EXIT_NOT_FOUND
    if isinstance(exc, (errors.ConflictError, errors.StaleEpochError)):
        return EXIT_CONFLICT
    if isinstance(exc, UsageError):
        return EXIT_USAGE
    return EXIT_FAILED


def silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is quiet."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors exit with :data:`EXIT_USAGE` in one line."""

    def error(self, message: str) -> NoReturn:
        # argparse quotes the offending arguments, which may be URLs with credentials.
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {shown_arg(one_line(message))}\n")


class Commands:
    """Handed to each command group's ``register()``: adds subcommands to the parser."""

    #: The help of every command's URL argument.
    url_help = f"stream URL, or a name joined to ${URL_ENV}"

    def __init__(self, subparsers: Any, common: argparse.ArgumentParser) -> None:
        self._subparsers = subparsers
        self._common = common

    def add(self, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
        """A subcommand with the shared connection options (``-H``, ``--timeout``).

        Set ``func=`` with ``set_defaults``: a function taking the parsed arguments and
        returning the exit code. Errors it raises are reported by ``main()``.
        """
        p: argparse.ArgumentParser = self._subparsers.add_parser(
            name, help=help_text, description=textwrap.fill(description, 79), epilog=EPILOG,
            parents=[self._common],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return p

    def add_group(self, name: str, help_text: str, description: str) -> Any:
        """A command with actions of its own (``subscription create|info|delete``):
        returns the subparsers object; add each action with :meth:`add_action`."""
        group = self._subparsers.add_parser(
            name, help=help_text, description=description, epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        actions = group.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
        actions.required = True
        return actions

    def add_action(self, actions: Any, name: str, help_text: str,
                   description: str) -> argparse.ArgumentParser:
        """An action of a group made by :meth:`add_group`, with the connection options."""
        p: argparse.ArgumentParser = actions.add_parser(
            name, help=help_text, description=textwrap.fill(description, 79), epilog=EPILOG,
            parents=[self._common], formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return p

    def add_url(self, p: argparse.ArgumentParser) -> None:
        """The positional ``URL`` argument most commands take."""
        p.add_argument("url", metavar="URL", help=self.url_help)
