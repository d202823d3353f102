"""A journal reopened after another writer claimed a higher epoch (README "Crash-safe
journal"; PROTOCOL.md §5.2 producer fencing): each journaled batch is settled by its content,
nothing is dropped or doubled silently, ``maybe_stored=True`` only where undecidable."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from producer_helpers import FAST, read_json, wait_until

from durable_streams import DurableStream, IdempotentProducer
from durable_streams.errors import DeliveryError, DurableStreamError
from durable_streams.testing import ReferenceServer


def _fenced_reopen(server: ReferenceServer, json_stream: DurableStream, tmp_path: Path,
                   *, sealed: bool = False) -> tuple[list[object], list[DurableStreamError]]:
    """0..19 stored but unacknowledged in the journal, 20..29 journaled and never
    stored, then another writer claims epoch 7 and a producer reopens the journal.
    ``sealed``: 20..29 are all in sealed batches (refused with 503) when the journal is
    copied; otherwise some may still be unsealed then."""
    journal = str(tmp_path / "j")
    p = IdempotentProducer(json_stream, "je", journal=journal, max_batch_items=5, retry=FAST)
    for i in range(20):
        p.append(json.dumps(i))
    p.flush()  # stored, but (below) the journal forgets the acknowledgements
    jr = p._journal
    assert jr is not None
    with p._lock:
        jr.keep_pending = True
    server.inject_fault(json_stream.url[len(server.url):], status=503, count=100_000,
                        method="POST")
    for i in range(20, 30):
        p.append(json.dumps(i))  # journaled, never stored
    if sealed:
        def all_sealed() -> bool:
            with p._lock:  # a batch is journaled as sealed when the sequencer admits it
                return sum(len(b.messages) for b in p._seq.batches.values()) == 10
        assert wait_until(all_sealed)
    # The journal as a kill -9 leaves it; then stop this producer for good (what it
    # records while closing is undone by restoring the files).
    snapshot = {f: (Path(journal) / f).read_bytes() for f in os.listdir(journal)}
    with contextlib.suppress(DeliveryError, TimeoutError):
        p.close(timeout=0.5)
    for name in os.listdir(journal):
        if name not in snapshot:
            os.unlink(Path(journal) / name)
    for name, data in snapshot.items():
        (Path(journal) / name).write_bytes(data)
    server.clear_faults()
    assert read_json(json_stream.url) == list(range(20))
    with IdempotentProducer(json_stream, "je", epoch=7) as other:  # another writer
        other.append(json.dumps("x"))
    reported: list[DurableStreamError] = []
    q = IdempotentProducer(json_stream, "je", journal=journal, retry=FAST,
                           on_error=reported.append)
    failure: BaseException | None = None
    try:
        q.close(timeout=60)
    except (DeliveryError, TimeoutError) as exc:
        failure = exc
    assert failure is not None  # 20..29 cannot be delivered at the fenced epoch
    return read_json(json_stream.url), reported


def test_higher_epoch_meanwhile_settles_journaled_batches_by_content(
        server: ReferenceServer, json_stream: DurableStream, tmp_path: Path) -> None:
    stored, reported = _fenced_reopen(server, json_stream, tmp_path)
    assert stored[:21] == list(range(20)) + ["x"]
    numbers = [v for v in stored if v != "x"]
    assert len(numbers) == len(set(numbers)), "a journaled message was stored twice"
    missing = set(range(30)) - set(numbers)
    # every message not stored is reported; the stored ones (0..19) are settled, not
    # reported
    reported_msgs = {json.loads(m) for e in reported for m in e.undelivered}
    assert reported_msgs == missing == set(range(20, 30)), (missing, reported)


def test_higher_epoch_meanwhile_reports_never_stored_batches_as_not_stored(
        server: ReferenceServer, json_stream: DurableStream, tmp_path: Path) -> None:
    # The stream after the tail noted in the journal's probe record holds 0..19 and the
    # other writer's "x": the batches of 20..29 are not stored, and after the fence they
    # can never be, so they are reported as not stored.
    _, reported = _fenced_reopen(server, json_stream, tmp_path, sealed=True)
    assert {json.loads(m) for e in reported for m in e.undelivered} == set(range(20, 30))
    assert not any(e.maybe_stored for e in reported), [str(e) for e in reported]


def test_a_journaled_batch_found_stored_after_the_fence_is_acknowledged(
        server: ReferenceServer, json_stream: DurableStream, tmp_path: Path) -> None:
    """0..9 are sealed and journaled (their sends refused with 503), the journal copied
    as a kill -9 would leave it; then they are stored and the producer closed. Another
    writer claims epoch 7. The next producer on the copied journal is fenced at its
    first resend; each batch is found in the stream after the journaled tail probe, so
    it is acknowledged, not reported: close() raises nothing, nothing is doubled."""
    journal = str(tmp_path / "j")
    path = json_stream.url[len(server.url):]
    server.inject_fault(path, status=503, count=100_000, method="POST")
    p = IdempotentProducer(json_stream, "jf", journal=journal, max_batch_items=5,
                           retry=FAST)
    for i in range(10):
        p.append(json.dumps(i))

    def all_sealed() -> bool:
        with p._lock:
            return sum(len(b.messages) for b in p._seq.batches.values()) == 10
    assert wait_until(all_sealed)
    snapshot = {f: (Path(journal) / f).read_bytes() for f in os.listdir(journal)}
    server.clear_faults()
    p.close(timeout=30)  # stored now, and acknowledged in the journal (undone below)
    for name in os.listdir(journal):
        if name not in snapshot:
            os.unlink(Path(journal) / name)
    for name, data in snapshot.items():
        (Path(journal) / name).write_bytes(data)
    with IdempotentProducer(json_stream, "jf", epoch=7) as other:
        other.append(json.dumps("x"))
    reported: list[DurableStreamError] = []
    q = IdempotentProducer(json_stream, "jf", journal=journal, retry=FAST,
                           on_error=reported.append)
    q.close(timeout=60)
    assert reported == []
    assert read_json(json_stream.url) == [*range(10), "x"]
