"""Scenario 4: the producing process is killed (-9) mid-run and restarted with the same
producer id and ``auto_claim=True``.

What is guaranteed, and tested here:

* Every message the dead process saw acknowledged (``flush()`` returned) is in the stream
  exactly once. The restarted process never re-sends anything: it has no memory of the dead
  one's buffer.
* The restarted producer writes at a higher epoch than the dead one (with ``auto_claim``
  and no explicit epoch it starts from the clock, in ms; had the clock gone back, the
  server's 403, or a 204 "duplicate" on its first send, would make it claim the epoch above
  the server's), so none of its messages can be mistaken for the dead process's. The dead
  epoch is fenced from then on: a late request from it gets 403 naming the new epoch.

The at-least-once window: the messages the dead process accepted after its last
acknowledgement (buffered or in flight at the kill). Batches go out in order and the server
accepts seq n only after n-1, so what landed of the window is a *prefix* of it, each message
once; the rest is lost. The restarted application cannot know where the prefix ends from the
producer alone: if it re-sends the whole window, the landed prefix is duplicated (at least
once); if it does not, the rest is lost (at most once). Reading the stream tail (the messages
carry application ids) lets it re-send exactly the missing suffix.
"""

from __future__ import annotations

import pytest

from .scenarios import run_producer_kill


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kill_9_then_reclaim_same_id(origin: str) -> None:
    result = run_producer_kill(origin, kill_after_acked=1999, kill_lead=250,
                               resume_messages=1000)
    d = result.details
    assert d["killed"], "the writer finished before it could be killed"
    assert d["acked_by_dead"] >= 2000
    assert d["resume_rc"] == 0, d["resume_stderr"]
    # acknowledged messages are all there, once; what landed of the window is a prefix
    assert result.lost == 0, result.explain()
    assert result.duplicates == 0 and result.foreign == 0, result.explain()
    assert result.order_ok, result.explain()
    a_items = d["a_items"]
    assert a_items == [f"A:{i}" for i in range(len(a_items))]
    assert d["acked_by_dead"] <= len(a_items)
    # the new process fenced the dead epoch and delivered all of its own messages
    assert d["resume"]["epoch"] > d["dead_epoch"], d["resume"]
    assert d["resume"]["acked"] == 1000
    assert d["zombie_status"] == 403 and d["zombie_epoch"] == str(d["resume"]["epoch"])
    assert result.found == len(a_items) + 1000
