"""One owner for the sequencer's state (README "Parts"): only the sequencer's modules
change a Sequencer or a Batch; the senders report events through Sequencer methods, and
the rules (``rules.py``) change nothing they are given (their Decisions carry changes).

Found by reading the library's syntax trees, so a new writer anywhere fails here:

- outside the owners, an assignment (``=``, ``+=``, annotated, ``del``, an item of a
  container, ``setattr``) or a mutating container call (``.add``, ``.append``, ...) on
  ``<x>.<name>`` where ``<name>`` is a field of the sequencer (an attribute its modules
  assign on ``self``) or of a Batch (its ``__slots__``) and ``<x>`` is not ``self``;
  the few objects of other classes that share such a name are listed in ``ELSEWHERE``;
- in ``rules.py``, no assignment of any kind through a function's parameters (the
  sequencer, the batch, the outcome), and no call of a Sequencer or Batch method that
  changes state, nor of a container mutator, on them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import durable_streams
from durable_streams._producer.batch import Batch
from durable_streams._producer.sequencer import Sequencer

ROOT = Path(durable_streams.__file__).parent
PRODUCER = ROOT / "_producer"
OWNERS = {"ledger.py", "renumbering.py", "sequencer.py", "batch.py"}
SEQUENCER_MODULES = ("ledger.py", "renumbering.py", "sequencer.py")

#: (module, function, target): writes of a name the sequencer or a batch also has, to
#: an object that is neither (or to a batch that is not the sequencer's yet)
ELSEWHERE = {
    ("journal.py", "open", "j.epoch"),  # the Journal's own epoch, seq and probes
    ("journal.py", "open", "j.next_seq"),
    ("journal.py", "open", "j.probes[r.epoch]"),
    ("journal_replay.py", "result", "r.batches"),  # the Replay's
    ("journal_attach.py", "attach", "transport.json_mode"),  # the Transport's
    ("_read_session.py", "set_content_type", "self.cursor.json_mode"),  # a ReadCursor's
    # a batch rebuilt from the journal, before Sequencer.take_over checks and takes it
    ("journal_attach.py", "attach", "b.epoch"),
    ("journal_attach.py", "attach", "b.seq"),
    # wiring: the sequencer handle of the pool and its Delivery (not a Batch's seq)
    ("assembly.py", "build", "pool.seq"),
    ("sender.py", "seq", "self.delivery.seq"),
}

MUTATORS = {"add", "append", "appendleft", "clear", "discard", "extend", "insert", "pop",
            "popitem", "popleft", "remove", "setdefault", "update", "sort", "reverse"}

#: Sequencer and Batch methods that only read (the rules may call them)
QUERIES = {"pending", "any_pending", "may_send", "needs_probe", "probe_running", "turn_ok",
           "must_look", "verify_candidates", "claim_backoff", "draining", "state", "final"}


def sequencer_fields() -> set[str]:
    names: set[str] = set()
    for name in SEQUENCER_MODULES:
        tree = ast.parse((PRODUCER / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            for t in _targets(node):
                if isinstance(t, ast.Attribute) and _is_self(t.value):
                    names.add(t.attr)
    return names



def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _flat(t: ast.expr) -> Iterator[ast.expr]:
    if isinstance(t, (ast.Tuple, ast.List)):
        for e in t.elts:
            yield from _flat(e)
    elif isinstance(t, ast.Starred):
        yield from _flat(t.value)
    else:
        yield t


def _targets(node: ast.AST) -> Iterator[ast.expr]:
    """What an assignment-like statement writes to."""
    if isinstance(node, ast.Assign):
        for t in node.targets:
            yield from _flat(t)
    elif isinstance(node, ast.AugAssign) or (isinstance(node, ast.AnnAssign)
                                               and node.value is not None):
        yield node.target
    elif isinstance(node, ast.Delete):
        for t in node.targets:
            yield from _flat(t)
    elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
        yield from _flat(node.target)
    elif isinstance(node, ast.NamedExpr):
        yield node.target


def _written_attribute(t: ast.expr) -> ast.Attribute | None:
    """The attribute a target writes (``x.a``, or ``x.a[k]`` for a container field)."""
    while isinstance(t, ast.Subscript):
        t = t.value
    return t if isinstance(t, ast.Attribute) else None


def _functions(tree: ast.AST) -> Iterator[tuple[str, ast.AST]]:
    """(innermost function name, node) for every node of the module."""
    def visit(node: ast.AST, where: str) -> Iterator[tuple[str, ast.AST]]:
        for child in ast.iter_child_nodes(node):
            name = (child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
                    else where)
            yield name, child
            yield from visit(child, name)
    yield from visit(tree, "<module>")


STATE = sequencer_fields() | set(Batch.__slots__)


def writers_outside_owners() -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    for path in sorted(ROOT.rglob("*.py")):
        if path.parent == PRODUCER and path.name in OWNERS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func, node in _functions(tree):
            if isinstance(node, ast.Call):
                f = node.func
                if ((isinstance(f, ast.Name) and f.id == "setattr")
                        or (isinstance(f, ast.Attribute) and f.attr == "__setattr__")):
                    found.add((path.name, func, ast.unparse(node)))
                elif (isinstance(f, ast.Attribute) and f.attr in MUTATORS
                        and isinstance(f.value, ast.Attribute)
                        and f.value.attr in STATE and not _is_self(f.value.value)):
                    found.add((path.name, func, ast.unparse(f)))
                continue
            for t in _targets(node):
                attr = _written_attribute(t)
                if attr is not None and attr.attr in STATE and not _is_self(attr.value):
                    found.add((path.name, func, ast.unparse(t)))
    return found


def test_state_fields_are_found() -> None:
    """The rule is only as good as its list of names: it must know the main ones."""
    assert {"stopping", "json_mode", "epoch", "next_seq", "unwritten", "window", "parked",
            "resend", "batches", "fatal"} <= STATE
    assert {"ambiguous", "retry_n", "maybe_stored", "attempts", "body"} <= STATE


def test_only_the_sequencer_writes_its_state_and_its_batches() -> None:
    """Every write to a Sequencer's or a Batch's state outside ledger.py, renumbering.py,
    sequencer.py and batch.py is one of the listed look-alikes (report an event with a
    Sequencer method instead, see "The senders' own events" in sequencer.py)."""
    assert writers_outside_owners() == ELSEWHERE


def test_the_rules_change_nothing_they_are_given() -> None:
    """rules.py returns Decisions: it assigns nothing through its parameters and calls
    no state-changing Sequencer or Batch method (nor a container mutator) on them."""
    tree = ast.parse((PRODUCER / "rules.py").read_text(encoding="utf-8"))
    changing = ({n for n in dir(Sequencer) if not n.startswith("__")}
                | {n for n in dir(Batch) if not n.startswith("__")}) - QUERIES - STATE
    assert {"ack", "fail", "stop", "begin_claim", "park", "move", "settle", "written",
            "start_attempt", "close_requested"} <= changing
    bad = []
    for func in ast.walk(tree):
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        params = {a.arg for a in (*func.args.posonlyargs, *func.args.args,
                                  *func.args.kwonlyargs)}
        for node in ast.walk(func):
            for t in _targets(node):
                root = t
                while isinstance(root, (ast.Attribute, ast.Subscript)):
                    root = root.value
                if (root is not t and isinstance(root, ast.Name) and root.id in params):
                    bad.append(f"{func.name}: writes {ast.unparse(t)}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                root = node.func.value
                while isinstance(root, (ast.Attribute, ast.Subscript, ast.Call)):
                    root = root.func if isinstance(root, ast.Call) else root.value
                name = node.func.attr
                if (isinstance(root, ast.Name) and root.id in params
                        and (name in changing or name in MUTATORS)):
                    bad.append(f"{func.name}: calls {ast.unparse(node.func)}")
    assert bad == []
