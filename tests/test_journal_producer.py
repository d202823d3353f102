"""IdempotentProducer(journal=...) against the reference server (README "Crash-safe
journal"; PROTOCOL.md §5.2.1 for the deduplication the replay relies on). The stream is
always read back with plain HTTP, never through the library's producer."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from producer_helpers import FAST, read_json

from durable_streams import (
    DeliveryError,
    DurableStream,
    IdempotentProducer,
    JournalError,
)
from durable_streams._producer.journal_format import list_segments
from durable_streams.testing import ReferenceServer

ROOT = Path(__file__).parents[1]

CHILD = r"""
import json, os, sys
sys.path.insert(0, sys.argv[4])
from durable_streams import IdempotentProducer
if len(sys.argv) > 6:  # small segments: the kill may land in a rollover or a compaction
    import durable_streams._producer.journal_attach as jr
    jr._test_segment_bytes = int(sys.argv[6])
url, journal, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
p = IdempotentProducer(url, "jw", journal=journal, max_batch_items=int(sys.argv[5]),
                       linger_ms=1)
os.write(1, b"OPEN\n")
i = start
while True:
    p.append(json.dumps(i))
    os.write(1, b"%d\n" % i)  # after append() returned: the contract starts here
    i += 1
"""


def _check_exactly_once(items: list[Any], accepted: int) -> None:
    """Every index < accepted is stored exactly once, in order; nothing else but a
    prefix of what followed (appends that may have returned unseen)."""
    assert items == list(range(len(items))), "a duplicate, a gap or a reorder"
    assert len(items) >= accepted


def _kill_round(url: str, journal: str, start: int, seed: int, items: int,
                segment_bytes: int = 0) -> int:
    rnd = random.Random(seed)
    extra = [str(segment_bytes)] if segment_bytes else []
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, journal, str(start),
                              str(ROOT), str(items), *extra], stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"OPEN\n"
    time.sleep(rnd.uniform(0.05, 0.4))
    child.send_signal(signal.SIGKILL)
    out = child.stdout.read()
    child.wait(10)
    lines = out.split()
    return int(lines[-1]) + 1 if lines else start


@pytest.mark.timeout(180)
def test_kill_9_at_random_moments_loses_and_doubles_nothing(
        json_stream: DurableStream, tmp_path: Path) -> None:
    rounds = 50 if os.environ.get("DS_FULL_FAULTS") == "1" else 4
    journal = str(tmp_path / "journal")
    accepted = 0
    for r in range(rounds):
        # each new child first replays what the previous one left, then goes on
        accepted = max(accepted, _kill_round(json_stream.url, journal, accepted, r,
                                             items=random.Random(r).choice([1, 10, 100])))
        # the next child starts numbering where the last *returned* append left off;
        # messages it may have accepted unseen are replayed first, so continue after
        # everything the journal delivers: drain it now and read the stream
        with IdempotentProducer(json_stream.url, "jw", journal=journal) as p:
            p.flush(timeout=60)
        items = read_json(json_stream.url)
        _check_exactly_once(items, accepted)
        accepted = len(items)
    assert accepted > 0


@pytest.mark.timeout(180)
def test_kill_9_across_segment_rollover_and_compaction(
        json_stream: DurableStream, tmp_path: Path) -> None:
    """Small segments (test-only internal knob): each round makes and compacts many
    segments, so kills land in rollovers and compactions too."""
    import durable_streams._producer.journal_attach as jr

    rounds = 50 if os.environ.get("DS_FULL_FAULTS") == "1" else 4
    journal = str(tmp_path / "journal")
    accepted = 0
    old, jr._test_segment_bytes = jr._test_segment_bytes, 64 * 1024
    try:
        for r in range(rounds):
            accepted = max(accepted, _kill_round(
                json_stream.url, journal, accepted, 1000 + r,
                items=random.Random(r).choice([1, 10, 100]), segment_bytes=64 * 1024))
            with IdempotentProducer(json_stream.url, "jw", journal=journal) as p:
                p.flush(timeout=60)
            items = read_json(json_stream.url)
            _check_exactly_once(items, accepted)
            accepted = len(items)
    finally:
        jr._test_segment_bytes = old
    numbers = [n for n, _ in list_segments(journal)]
    # many segments were made (numbers grow) and the acknowledged ones compacted away
    assert numbers and numbers[-1] >= rounds and len(numbers) <= 2, numbers
    assert accepted > 0


def test_the_next_producer_resumes_the_numbering_and_a_204_is_ours(
        json_stream: DurableStream, tmp_path: Path, make: Callable[..., IdempotentProducer]
) -> None:
    journal = str(tmp_path / "j")
    p = make(json_stream, "jp", journal=journal, max_batch_items=10)
    for i in range(100):
        p.append(json.dumps(i))
    p.close()
    epoch, seq = p.epoch, p.next_seq
    q = make(json_stream, "jp", journal=journal, max_batch_items=10)
    assert (q.epoch, q.next_seq) == (epoch, seq)  # the same id, next run: no trap
    for i in range(100, 150):
        q.append(json.dumps(i))
    q.close()
    assert read_json(json_stream.url) == list(range(150))


def test_server_down_then_a_later_process_delivers(
        server: ReferenceServer, json_stream: DurableStream, tmp_path: Path) -> None:
    journal = str(tmp_path / "j")
    path = json_stream.url[len(server.url):]
    server.inject_fault(path, status=503, count=100_000, method="POST")
    p = IdempotentProducer(json_stream, "jd", journal=journal, retry=FAST)
    for i in range(50):
        p.append(json.dumps(i))
    with pytest.raises((DeliveryError, TimeoutError)) as info:
        p.close(timeout=1)
    assert "journal" in str(info.value) or isinstance(info.value, TimeoutError)
    server.clear_faults()
    assert read_json(json_stream.url) == []
    with IdempotentProducer(json_stream, "jd", journal=journal, retry=FAST) as q:
        q.append(json.dumps(50))
    assert read_json(json_stream.url) == list(range(51))


def test_replayed_batches_keep_epoch_seq_and_body_and_are_deduplicated(
        json_stream: DurableStream, tmp_path: Path) -> None:
    """A batch stored before the crash but never acknowledged to the journal: the replay
    sends the same (epoch, seq, body), the server answers 204, nothing is doubled."""
    journal = str(tmp_path / "j")
    p = IdempotentProducer(json_stream, "jr", journal=journal, max_batch_items=5)
    for i in range(20):
        p.append(json.dumps(i))
    p.flush()
    # forget the acknowledgements: as if the process died before recording them
    jr = p._journal
    assert jr is not None
    with p._lock:
        jr.keep_pending = True
    p._forked = True  # leave the producer without a flush or DONE records
    snapshot = {f: (Path(journal) / f).read_bytes() for f in os.listdir(journal)}
    jr.close()
    p._transport.close()
    for name, data in snapshot.items():
        (Path(journal) / name).write_bytes(data)
    with IdempotentProducer(json_stream, "jr", journal=journal) as q:
        q.flush(timeout=30)
    assert read_json(json_stream.url) == list(range(20))


def test_two_producers_on_one_journal(json_stream: DurableStream, tmp_path: Path,
                                      make: Callable[..., IdempotentProducer]) -> None:
    journal = str(tmp_path / "j")
    make(json_stream, "j2", journal=journal)
    with pytest.raises(JournalError, match="in use") as info:
        IdempotentProducer(json_stream, "j2", journal=journal)
    assert journal in str(info.value)
    code = ("import sys; sys.path.insert(0, sys.argv[3]);"
            "from durable_streams import IdempotentProducer, JournalError\n"
            "try:\n IdempotentProducer(sys.argv[1], 'j2', journal=sys.argv[2])\n"
            "except JournalError as e:\n print(e.code)\n")
    out = subprocess.run([sys.executable, "-c", code, json_stream.url, journal, str(ROOT)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "JOURNAL_LOCKED", out.stderr


FULL_CHILD = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[3])
from durable_streams import IdempotentProducer, JournalError
if sys.argv[4] != "0":
    lim = int(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_FSIZE, (lim, lim))
try:
    p = IdempotentProducer(sys.argv[1], "jf", journal=sys.argv[2], max_batch_items=50,
                           delivery_timeout_ms=20_000)
except JournalError as e:
    print(-1, e.code, flush=True)
    sys.exit(0)
n = 0
try:
    while True:
        p.append(json.dumps("x" * 900))
        n += 1
except JournalError as e:
    print(n, e.code, flush=True)
    p.close(timeout=30)
"""


def test_a_file_size_limit_is_a_clear_error_at_construction(
        json_stream: DurableStream, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-c", FULL_CHILD, json_stream.url,
                          str(tmp_path / "j"), str(ROOT), str(1024 * 1024)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["-1", "JOURNAL_IO"], out.stderr


def test_a_full_disk_is_an_error_at_append_and_nothing_unjournaled_is_accepted(
        json_stream: DurableStream, tmp_path: Path) -> None:
    """A 20 MiB tmpfs (root only: skipped elsewhere) fills at the third segment."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mnt)],
            capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        out = subprocess.run([sys.executable, "-c", FULL_CHILD, json_stream.url,
                              str(mnt / "j"), str(ROOT), "0"],
                             capture_output=True, text=True, timeout=120)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    n, code = out.stdout.split()
    assert code == "JOURNAL_IO", out.stderr
    assert int(n) > 1000
    assert read_json(json_stream.url) == ["x" * 900] * int(n)  # every accepted one, once


@pytest.mark.timeout(240)
def test_kill_9_while_the_chaos_proxy_drops_answers(
        server: ReferenceServer, json_stream: DurableStream, tmp_path: Path) -> None:
    """Answers lost after the server committed (and requests dropped before it) while the
    child is killed: the replay's same (epoch, seq, body) is deduplicated. Small segments
    are not configurable, so compaction runs as acknowledgements arrive."""
    from faults.chaos_proxy import ChaosProxy, FaultRates

    rounds = 50 if os.environ.get("DS_FULL_FAULTS") == "1" else 3
    rates = FaultRates(drop_before=0.05, drop_after=0.1, reset_mid=0.05)
    journal = str(tmp_path / "journal")
    accepted = 0
    with ChaosProxy(server.url, rates, seed=7) as proxy:
        url = proxy.url + json_stream.url[len(server.url):]
        for r in range(rounds):
            accepted = max(accepted, _kill_round(url, journal, accepted, 100 + r,
                                                 items=random.Random(r).choice([1, 10])))
            with IdempotentProducer(url, "jw", journal=journal, retry=FAST) as p:
                p.flush(timeout=120)
            items = read_json(json_stream.url)  # read past the proxy, plain HTTP
            _check_exactly_once(items, accepted)
            accepted = len(items)
        assert proxy.stats()["drop_after"] > 0
