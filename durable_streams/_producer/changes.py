"""The state changes a rule asks for (README "The producer's life").

The rules (``rules.py``) read the sequencer and return a :class:`~.actions.Decision`
whose ``changes`` say, in order, what becomes of the batch and of the sequencer; only the
:class:`~.sequencer.Sequencer` applies them (``Sequencer._apply``), so each piece of its
state is changed in one place. Every change is an immutable value: a test can compare a
decision with the one it expects without running it.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import errors

# -- the batch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ack:
    """Acknowledge the batch (``duplicate``: the server already had it)."""

    offset: str
    duplicate: bool


@dataclass(frozen=True)
class Fail:
    """Report the batch failed; ``hole``: later seqs of its epoch may need a new one."""

    error: errors.DurableStreamError
    hole: bool = False


@dataclass(frozen=True)
class Fatal:
    """Stop the producer with ``error`` and fail the batch with it. ``fenced_by``: the
    server's epoch after a fence; nothing more can be stored under a lower one, so a
    batch of a lower epoch in doubt is first looked for in the stream (VERIFY) to report
    whether it may be stored."""

    error: errors.DurableStreamError
    fenced_by: int | None = None


@dataclass(frozen=True)
class Mark:
    """Set what is known about earlier sends of the batch's (epoch, seq): may one have
    been stored (``maybe_stored``), did one have an unknown outcome (``ambiguous``, left
    as it is when None)."""

    maybe_stored: bool
    ambiguous: bool | None = None


@dataclass(frozen=True)
class Written:
    """The batch's body reached the wire (the transport said so by failing)."""


@dataclass(frozen=True)
class Hold:
    """The batch's next attempt is not on the wire yet: later seqs wait for it."""


@dataclass(frozen=True)
class Retried:
    """One more transient failure in a row (it sets the next retry delay)."""


@dataclass(frozen=True)
class Expect:
    """Note the seq a 409 expected while nothing earlier was in flight."""

    seq: int


@dataclass(frozen=True)
class Park:
    """Let the batch wait for re-sequencing in the new epoch (fail it if none starts)."""


@dataclass(frozen=True)
class Split:
    """JSON mode: report the invalid messages (``bad``) and resend the valid ones."""

    good: list[bytes]
    bad: list[bytes]
    error: errors.DurableStreamError


# -- the sequencer ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """Move to an epoch above ``server_epoch``; ``of_batch``: only if the batch's
    generation is still the current one (else a transition is already under way);
    ``fenced``: because another writer holds the epoch."""

    server_epoch: int
    fenced: bool = False
    of_batch: bool = False


@dataclass(frozen=True)
class Undoubt:
    """The server confirms the in-doubt (generation, seq) was not stored."""

    gen: int
    seq: int


@dataclass(frozen=True)
class Narrow:
    """Halve the window: a 409 says a later seq overtook an earlier one."""


# -- close_stream ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CountRetry:
    """One more attempt of the closing POST."""


@dataclass(frozen=True)
class Closed:
    """The closing POST with ``seq`` was stored; the stream ends at ``offset``."""

    seq: int
    offset: str


@dataclass(frozen=True)
class CloseClaim:
    """Claim a new epoch for the closing POST, then send it again after the claim's
    backoff (at most ``cap`` seconds); if the claim cannot start, raise the producer's
    fatal error, else ``fallback``."""

    server_epoch: int
    cap: float
    fallback: errors.DurableStreamError


Change = (Ack | Fail | Fatal | Mark | Written | Hold | Retried | Expect | Park | Split
          | Claim | Undoubt | Narrow | CountRetry | Closed | CloseClaim)

WRITTEN = Written()
HOLD = Hold()
RETRIED = Retried()
PARK = Park()
NARROW = Narrow()
COUNT_RETRY = CountRetry()
IN_DOUBT = Mark(maybe_stored=True, ambiguous=True)  # a send had an unknown outcome
NOT_STORED = Mark(maybe_stored=False, ambiguous=False)  # no send can have been stored
