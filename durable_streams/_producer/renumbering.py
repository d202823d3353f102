"""After an epoch change: renumber the parked batches in order once the old epoch's
requests are finished, or first look for those whose answer was lost (VERIFY), as the
stream after their generation's tail probe shows them; and after a fence, look for the
batches in doubt before reporting them. The second part of the
:class:`~.sequencer.Sequencer` (see ``ledger.py``); every method is called with the
producer lock held."""

from __future__ import annotations

from .. import errors
from .actions import Phase
from .batch import Batch, BatchState
from .ledger import Ledger


class Renumbering(Ledger):
    """Re-sequencing parked batches, and looking for the in-doubt ones."""

    def maybe_resequence(self) -> None:
        """When no old-epoch request is in flight, renumber the parked batches in order."""
        if self.phase is not Phase.DRAINING or self.in_flight > 0:
            return
        if any(b.maybe_stored for b in self.parked):
            # Some answers were lost: those batches may already be in the stream under
            # the old epoch. A sender looks for them first (VERIFY).
            why = "fenced" if self.claim_fenced else "after a hole"
            self._to(Phase.VERIFYING, f"in-doubt batches to look for ({why})")
            return
        parked = sorted(self.parked, key=lambda b: b.first_index)
        self.parked = []
        for batch in parked:
            self._assign(batch)
            batch.move(BatchState.QUEUED)
            self.resend.append(batch)
        self._to(Phase.UNCONFIRMED, f"{len(parked)} batch(es) renumbered")
        self._journal_sealed(parked)  # one record: a renumbering is atomic in the journal

    def must_look(self) -> bool:
        """Is there a batch to look for now? (VERIFY: after an epoch change, or after a
        fence once every request of ours is finished.)"""
        if self.in_flight:
            return False
        return self.phase is Phase.VERIFYING or (
            self.phase is Phase.FAILED and self.fenced_by is not None and bool(self.parked))

    def verify_candidates(self) -> list[Batch]:
        """Parked batches whose answer was lost before the epoch changed (or, after a
        fence, every batch waiting to be looked for)."""
        if self.phase is Phase.FAILED:
            return sorted(self.parked, key=lambda b: b.first_index)
        return [b for b in self.parked if b.maybe_stored]

    def verified(self, batch: Batch, found: bool | None) -> None:
        """Acknowledge it if it is in the stream after its generation's tail probe, resend
        it (renumbered) if it is not, and report it as in doubt if that cannot be told."""
        if batch.state is not BatchState.PARKED or batch not in self.parked:
            return  # failed meanwhile (the producer stopped)
        if self.phase is Phase.FAILED:
            self._looked(batch, found)
            return
        if found is False:
            # Looked after the tail probe, with every request of the old epoch finished:
            # not stored, and never will be under that (epoch, seq).
            batch.maybe_stored = batch.ambiguous = False
            return
        self.parked.remove(batch)
        batch.move(BatchState.ACTIVE)
        if found is None:
            self.fail(batch, errors.ProducerError(
                f"producer {self.producer_id!r} left its epoch on {self.where} while the "
                "outcome of this batch was unknown (its answer was lost) and the stream "
                "could not be checked: it may or may not be stored, so it is not re-sent",
                url=self.url, code="IN_DOUBT"))
        else:
            self.ack(batch, "", duplicate=True)

    def _looked(self, batch: Batch, found: bool | None) -> None:
        """After a fence, settle the batch by the stream after its tail probe (nothing can
        be stored under a fenced epoch any more): found there, it is stored (once) and
        acknowledged; not found, it is reported failed with the error it was stopped by,
        as not stored; where the stream could not be read, failed saying it may be
        stored."""
        self.parked.remove(batch)
        err = self.look_errors.pop(batch.id, None) or self.fatal
        assert err is not None
        if found is True:
            self.ack(batch, "", duplicate=True)
            return
        if found is False:
            batch.maybe_stored = batch.ambiguous = False
        self.fail(batch, err)
