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

from .. import _protocol as P
from ._common import EXIT_FAILED, Commands, err
from ._read import ReadOutput, add_read_options, open_read


def cmd_state(args: argparse.Namespace) -> int:
    from ..state import BlockAssembler, MaterializedState, StateEventError, check_event

    response, live = open_read(args)
    if response.content_type is not None and not P.is_json(response.content_type):
        response.close()
        err(f"the stream has content type {response.content_type!r}; State Protocol "
            "streams are JSON streams (application/json)")
        return EXIT_FAILED
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    state, blocks = MaterializedState(), BlockAssembler()
    printed_state = False
    failed = False
    with ReadOutput(response, live, args.offset) as output:
        try:
            for batch in response.iter_json_batches():
                events = [check_event(item, offset=batch.offset) for item in batch.items]
                group = blocks.add(events, batch.up_to_date or batch.closed)
                if group is None:
                    continue
                state.apply_batch(group, offset=batch.offset)
                output.resume = batch.offset
                if not live:
                    continue
                if printed_state:
                    if group:
                        output.write("".join(dumps(e) + "\n" for e in group).encode("utf-8"))
                elif batch.up_to_date or batch.closed:
                    output.write((dumps(state.to_dict()) + "\n").encode("utf-8"))
                    printed_state = True
            if not live:
                text = json.dumps(state.to_dict(), ensure_ascii=False, indent=2)
                output.write((text + "\n").encode("utf-8"))
        except StateEventError as exc:
            err(exc)
            failed = True
    return EXIT_FAILED if failed else output.code


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
