"""In-doubt batches across an epoch change.

A batch is *in doubt* when a send of it may have been stored but no answer came back (the
connection died after the request went out, or the read timed out). Retrying it with the same
(epoch, seq) is safe: the server answers 204 if it has it. Moving it to a new epoch is not:
under a new (epoch, seq) the server stores it again. The producer moves unacknowledged batches
to a new epoch in two cases:

* a *hole*: an earlier batch failed for good (delivery timeout, 400/413), so later seqs of
  that epoch can never be accepted and the producer claims epoch + 1 for them. This suite
  found that in-doubt batches were then stored twice; since 0c50838 the producer first
  settles them under their old tuple (the server's 409 proves they were not stored).
  test_in_doubt_batch_not_stored_twice_when_an_earlier_batch_times_out guards it.
* *fencing* with ``auto_claim=True``: another live writer with the same producer id took a
  higher epoch (producer.py ``_on_403`` -> ``_begin_claim_locked``), and with two such
  writers they keep taking it from each other. The old epoch is refused (403), so an in-doubt
  batch cannot be settled by a retry. The producer now looks for each in-doubt batch in the
  stream after the tail it noted before that epoch's first send (``_verify_parked``):
  found -> acknowledged, not found -> re-numbered, cannot tell -> reported as in doubt.
  test_two_live_writers_sharing_an_id_store_each_message_once guards it.
"""

from __future__ import annotations

import pytest

from .chaos_proxy import FaultRates
from .scenarios import run_in_doubt_hole, run_two_writers

pytestmark = pytest.mark.timeout(60)


def test_in_doubt_batch_not_stored_twice_when_an_earlier_batch_times_out(origin: str) -> None:
    result = run_in_doubt_hole(origin)
    d = result.details
    assert d["b_stored"], "precondition: B's first send was stored, its answer lost"
    assert d["reported"] == ["A"]  # A timed out: reported (its error says it may be stored)
    assert d["items"].count("A") == 1
    assert d["items"].count("B") == 1, f"B acknowledged once, stored {d['items'].count('B')}x"


def test_two_live_writers_sharing_an_id_lose_nothing(origin: str) -> None:
    """auto_claim with two live writers of one id (a zombie that is not dead): they take the
    epoch from each other over and over, yet on a lossy network nothing is lost."""
    result = run_two_writers(origin, FaultRates(drop_before=0.03, drop_after=0.05,
                                                reset_mid=0.03), seed=1)
    assert not result.problems, result.problems
    assert result.lost == 0 and result.foreign == 0, result.explain()
    assert result.found == result.sent == 4000
    assert result.order_ok, "per-writer order broken: " + result.explain()


def test_two_live_writers_sharing_an_id_store_each_message_once(origin: str) -> None:
    result = run_two_writers(origin, FaultRates(drop_after=0.05), seed=2)
    assert result.duplicates == 0, result.explain()
