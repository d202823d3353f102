"""The journal bugs the server-free simulation found (tests/unit/test_sim_journal.py,
J1 and J2, both fixed), against the reference server (README "Crash-safe journal").
An abandoned ``close(timeout)`` leaves the journal as a kill would (no DONE record), so
neither needs a kill: both hit a producer that reopens what an earlier one left. (J2 leans
on a 503 leaving seq 0 "maybe stored", as the producer now classifies it.)"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from producer_helpers import FAST, read_json

from durable_streams import DeliveryError, DurableStream, IdempotentProducer
from durable_streams.errors import StaleEpochError
from durable_streams.testing import ReferenceServer


def _journal_an_unsent_batch_after_an_earlier_run(
        server: ReferenceServer, json_stream: DurableStream, journal: str) -> None:
    """An earlier run of the job, without a journal, stored (id "j1", epoch 0, seq 0).
    This run (epoch 0 too, the default without auto_claim) journals "a" as (0, 0); every
    send fails; close gives up: "a" stays journaled, never stored."""
    with IdempotentProducer(json_stream, "j1", retry=FAST) as earlier:
        earlier.append(json.dumps("earlier"))
    path = json_stream.url[len(server.url):]
    server.inject_fault(path, status=503, count=100_000, method="POST")
    p = IdempotentProducer(json_stream, "j1", journal=journal, retry=FAST)
    p.append(json.dumps("a"))
    with pytest.raises((DeliveryError, TimeoutError)):
        p.close(timeout=1)
    server.clear_faults()


def test_a_replayed_batch_is_not_acknowledged_by_an_earlier_runs_204(
        server: ReferenceServer, json_stream: DurableStream, tmp_path: Path) -> None:
    """J1: the next producer on the journal resends (0, 0); the server answers 204 (the
    earlier run's seq 0). No 200 ever proved epoch 0 ours, so the 204 is checked in the
    stream after the journaled tail probe: "a" is not there, and is delivered under a new
    epoch (auto_claim) instead of being acknowledged unstored."""
    journal = str(tmp_path / "j")
    _journal_an_unsent_batch_after_an_earlier_run(server, json_stream, journal)
    with IdempotentProducer(json_stream, "j1", journal=journal, retry=FAST,
                            auto_claim=True) as q:
        q.flush(timeout=30)
    assert read_json(json_stream.url) == ["earlier", "a"]


def test_without_auto_claim_an_earlier_runs_204_stops_and_reports_the_replayed_batch(
        server: ReferenceServer, json_stream: DurableStream, tmp_path: Path) -> None:
    """J1 without auto_claim: as a live producer, the reopened one stops with
    StaleEpochError, and "a" is reported, not stored (it was looked for: maybe_stored is
    False)."""
    journal = str(tmp_path / "j")
    _journal_an_unsent_batch_after_an_earlier_run(server, json_stream, journal)
    q = IdempotentProducer(json_stream, "j1", journal=journal, retry=FAST)
    with pytest.raises(DeliveryError) as info:
        q.close(timeout=30)
    assert info.value.undelivered == (json.dumps("a").encode(),)
    assert isinstance(info.value.errors[0], StaleEpochError)
    assert not info.value.errors[0].maybe_stored
    assert read_json(json_stream.url) == ["earlier"]


def test_a_replayed_seq_1_after_a_hole_at_seq_0_is_delivered(
        server: ReferenceServer, json_stream: DurableStream, tmp_path: Path) -> None:
    """J2: seq 0 of the journal's epoch failed in doubt before the reopen (a hole, now
    journaled); the replayed seq 1 gets 400 "new epoch must start with sequence 0",
    which confirms the hole as it does for a live producer: "b" moves to a new epoch."""
    with IdempotentProducer(json_stream, "j2", retry=FAST) as earlier:  # epoch 0
        earlier.append(json.dumps("earlier"))
    path = json_stream.url[len(server.url):]
    server.inject_fault(path, status=503, count=100_000, method="POST")
    failed = threading.Event()
    p = IdempotentProducer(json_stream, "j2", epoch=5, journal=str(tmp_path / "j"),
                           retry=FAST, delivery_timeout_ms=1000,
                           on_error=lambda err: failed.set())
    p.append(json.dumps("a"))  # (5, 0): 503s until its delivery timeout, then in doubt
    assert failed.wait(30)
    p.append(json.dumps("b"))  # (5, 1), kept: the hole at seq 0 may be stored after all
    with pytest.raises((DeliveryError, TimeoutError)):
        p.close(timeout=0.3)  # gives up: "b" stays journaled
    server.clear_faults()
    errors: list[Exception] = []
    with IdempotentProducer(json_stream, "j2", journal=str(tmp_path / "j"), retry=FAST,
                            on_error=errors.append) as q:
        q.flush(timeout=30)
    assert errors == []
    assert read_json(json_stream.url) == ["earlier", "b"]
