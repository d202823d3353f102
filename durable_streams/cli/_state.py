"""``state``: the State Protocol state of a stream as JSON; ``--follow`` prints each change.

Without ``--follow``: catch up, print ``{type: {key: value}}`` (indented JSON) and exit.
With ``--follow``: once caught up, print the state as one compact JSON line, then one
compact line per event as it is applied (the change events, and ``reset`` and snapshot
markers), until EOF, ``--stop-after`` or Ctrl-C. A snapshot block, or a reset and what
refills it, is printed only once complete. The resume offset goes to stderr at exit
(``offset: <token>``), as for ``read``.
"""

from __future__ import annotations

import argparse
import json
import sys

from .. import _protocol as P
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Commands,
    err,
    headers_of,
    resolve_url,
    silence_stdout,
)
from ._read import _ClosedPipe, _PipeWatcher, _write_out, add_read_options, end_read


def cmd_state(args: argparse.Namespace) -> int:
    from ..reading import LiveMode, stream
    from ..state import BlockAssembler, MaterializedState, StateEventError, check_event

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
    if response.content_type is not None and not P.is_json(response.content_type):
        response.close()
        err(f"the stream has content type {response.content_type!r}; State Protocol "
            "streams are JSON streams (application/json)")
        return EXIT_FAILED
    out = sys.stdout.buffer
    watcher = _PipeWatcher.start(sys.stdout, response.close) if live else None
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    state, blocks = MaterializedState(), BlockAssembler()
    resume = args.offset
    printed_state = False
    code = EXIT_OK
    try:
        for batch in response.iter_json_batches():
            events = [check_event(item, offset=batch.offset) for item in batch.items]
            group = blocks.add(events, batch.up_to_date or batch.closed)
            if group is None:
                continue
            state.apply_batch(group, offset=batch.offset)
            resume = batch.offset
            if not live:
                continue
            if printed_state:
                if group:
                    _write_out(out, "".join(dumps(e) + "\n" for e in group).encode("utf-8"))
            elif batch.up_to_date or batch.closed:
                _write_out(out, (dumps(state.to_dict()) + "\n").encode("utf-8"))
                printed_state = True
        if not live:
            text = json.dumps(state.to_dict(), ensure_ascii=False, indent=2)
            _write_out(out, (text + "\n").encode("utf-8"))
    except StateEventError as exc:
        err(exc)
        code = EXIT_FAILED
    except _ClosedPipe:
        silence_stdout()
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    finally:
        end_read(response, watcher, resume)
    return code


def register(commands: Commands) -> None:
    """Add ``state``."""
    p = commands.add(
        "state", "print a State Protocol stream's materialised state as JSON",
        "Read the stream's State Protocol events (insert/update/upsert/delete, reset, "
        "snapshots), from --offset, and print the resulting state as JSON: "
        "{type: {key: value}}. With --follow, print the state as one line once caught up, "
        "then each event as it is applied, one compact JSON line each, until EOF or "
        "Ctrl-C. The offset to resume from is printed on stderr at exit.")
    commands.add_url(p)
    add_read_options(
        p, offset_help="start here: -1 (the beginning, default) or a saved offset",
        follow_help="keep printing changes as they arrive (SSE, falling back to long-poll)")
    p.set_defaults(func=cmd_state)
