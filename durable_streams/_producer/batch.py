"""A sealed batch of messages, its state, its request body, and the producer's counters."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass

from .. import _protocol as P
from .._json import check_json_text

_batch_ids = itertools.count()


class BatchState(enum.Enum):
    """Where a sealed batch is. ACKED and FAILED are final and set exactly once."""

    ACTIVE = "active"  # held by a sender (being sent, waiting to retry)
    QUEUED = "queued"  # renumbered, waiting for a sender to resend it
    PARKED = "parked"  # waiting for re-sequencing in a new epoch
    ACKED = "acked"
    FAILED = "failed"


FINAL = frozenset({BatchState.ACKED, BatchState.FAILED})


class Batch:
    """Messages sealed together, sent as one POST with one (epoch, seq)."""

    __slots__ = (
        "id", "messages", "nbytes", "first_index", "epoch", "seq", "gen", "body",
        "deadline", "attempts", "retry_n", "maybe_stored", "ambiguous", "_state",
        "last_expected",
    )

    def __init__(self, messages: list[bytes], nbytes: int, first_index: int, body: bytes,
                 deadline: float) -> None:
        self.id = next(_batch_ids)
        self.messages = messages
        self.nbytes = nbytes
        self.first_index = first_index
        self.body = body
        self.deadline = deadline
        self.epoch = -1
        self.seq = -1
        #: the sequencer's generation (one per epoch change) the seq belongs to
        self.gen = -1
        self.attempts = 0
        #: consecutive transient failures since the batch was (re)taken by a sender
        self.retry_n = 0
        #: a send of the current (epoch, seq) may have been stored (no definite answer):
        #: only then can a 204 "duplicate" be ours
        self.maybe_stored = False
        #: some send of this batch had an unknown outcome (at-least-once if re-sequenced)
        self.ambiguous = False
        self._state = BatchState.ACTIVE
        #: Producer-Expected-Seq of the last 409 that found no earlier batch in flight
        self.last_expected = -1

    @property
    def state(self) -> BatchState:
        return self._state

    @property
    def final(self) -> bool:
        return self._state in FINAL

    def move(self, state: BatchState) -> None:
        """Change a non-final state to another non-final one."""
        if self._state in FINAL or state in FINAL:
            raise RuntimeError(f"batch {self.id}: cannot move {self._state.name} -> {state.name}")
        self._state = state

    def settle(self, state: BatchState) -> bool:
        """Set the final state; False (and no change) when it was already final."""
        if state not in FINAL:
            raise ValueError(f"{state.name} is not a final state")
        if self._state in FINAL:
            return False
        self._state = state
        return True

    def __repr__(self) -> str:
        return (f"Batch(id={self.id}, gen={self.gen}, epoch={self.epoch}, seq={self.seq}, "
                f"n={len(self.messages)}, {self._state.name})")


@dataclass
class Counters:
    """The producer's counters (guarded by the producer lock)."""

    acked: int = 0
    failed: int = 0
    bytes_acked: int = 0
    batches: int = 0
    requests: int = 0
    retries: int = 0
    duplicates: int = 0
    failures: int = 0
    claims: int = 0


def build(messages: list[bytes], json_mode: bool, validate: bool
          ) -> tuple[list[bytes], list[tuple[bytes, str]], bytes]:
    """The request body for ``messages``: (valid messages, invalid ones with why, body)."""
    if not json_mode:
        return messages, [], b"".join(messages)
    body = b"[" + b",".join(messages) + b"]"
    if not validate:
        return messages, [], body
    try:
        # The fast path: one C parse of the whole batch. Any refusal (invalid JSON, or a
        # Python limit: deep nesting, a huge integer) sends each message to the check
        # that has no such limit (_json.check_json_text), which alone decides.
        parsed = P.load_json(body)
        if isinstance(parsed, list) and len(parsed) == len(messages):
            return messages, [], body
    except (ValueError, RecursionError):
        pass
    good, bad = split_json(messages)
    if len(good) == len(messages):
        return messages, [], body
    return good, bad, b"[" + b",".join(good) + b"]"


def split_json(messages: list[bytes]) -> tuple[list[bytes], list[tuple[bytes, str]]]:
    """(valid messages, invalid ones with the reason); never refuses a valid message."""
    good: list[bytes] = []
    bad: list[tuple[bytes, str]] = []
    for m in messages:
        try:
            check_json_text(m)
        except ValueError as exc:
            bad.append((m, f"{m[:60]!r}: {exc}"))
        else:
            good.append(m)
    return good, bad
