"""The sequencer's vocabulary: its phases and their allowed transitions, the tasks it asks
senders for, the decisions it makes about a batch's outcome (with the state changes they
carry, see ``changes.py``), and the sink it reports to."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from .. import errors
from .batch import Batch
from .changes import Change


class Phase(enum.Enum):
    UNCONFIRMED = "unconfirmed"  # auto-claim: one request at a time until one succeeds
    STEADY = "steady"  # the epoch is confirmed: up to the window in flight
    DRAINING = "draining"  # epoch changed: old requests finish, new batches wait
    VERIFYING = "verifying"  # drained, but in-doubt batches must be looked for first
    FAILED = "failed"  # a fatal error: nothing more is sent


ALLOWED: dict[Phase, frozenset[Phase]] = {
    Phase.UNCONFIRMED: frozenset({Phase.STEADY, Phase.DRAINING, Phase.FAILED}),
    Phase.STEADY: frozenset({Phase.DRAINING, Phase.FAILED}),
    Phase.DRAINING: frozenset({Phase.DRAINING, Phase.VERIFYING, Phase.UNCONFIRMED,
                               Phase.FAILED}),
    Phase.VERIFYING: frozenset({Phase.DRAINING, Phase.FAILED}),
    Phase.FAILED: frozenset(),
}


class Work(enum.Enum):
    STOP = "stop"
    WAIT = "wait"
    SEAL = "seal"
    RESEND = "resend"
    PROBE = "probe"
    VERIFY = "verify"
    FAIL_BUFFER = "fail-buffer"


@dataclass(frozen=True)
class Task:
    work: Work
    batch: Batch | None = None
    gen: int = -1
    timeout: float | None = None


class Act(enum.Enum):
    DONE = "done"
    SEND = "send"
    RETRY = "retry"
    WAIT_EARLIER = "wait-earlier"
    CHECK_STORED = "check-stored"
    SPLIT_JSON = "split-json"
    RAISE = "raise"  # close_stream only


@dataclass(frozen=True)
class Decision:
    """What a sender does next (``act`` and its arguments), and what the outcome changes
    (``changes``, applied in order by the sequencer before the sender sees the decision)."""

    act: Act
    delay: float = 0.0
    earlier: range = range(0)
    offset: str = ""
    error: errors.DurableStreamError | None = None
    changes: tuple[Change, ...] = ()


DONE = Decision(Act.DONE)
SEND = Decision(Act.SEND)


class Sink(Protocol):
    """Where the sequencer reports (called with the producer lock held)."""

    def acked(self, batch: Batch, offset: str, duplicate: bool) -> None: ...

    def failed(self, messages: list[bytes], err: errors.DurableStreamError,
               nbytes: int) -> None: ...

    def stopped(self, err: errors.DurableStreamError) -> None: ...
