"""The producer journal without a server: framing, torn tails, corruption, the lock, the
identity, compaction and the size limit (README "Crash-safe journal")."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from durable_streams import JournalError
from durable_streams._producer import journal_format as F
from durable_streams._producer.journal import Journal, identity_of

from .journal_driver import (
    PID,
    URL,
    Driver,
    one_record_change,
    open_journal,
    replayed,
    snapshot,
    torn_images,
    write_image,
)


def test_records_round_trip(tmp_path: Path) -> None:
    d = Driver(str(tmp_path / "j"))
    for i in range(10):
        assert d.append(f"m{i}".encode())
    b1 = d.take(4)
    assert b1 is not None
    d.take(3)
    d.resolve(b1, acked=True)
    r = d.crash_and_reopen()
    assert replayed(r) == d.model.expected()
    assert [(b.epoch, b.seq) for b in r.batches] == [(1, 1)]
    assert r.batches[0].messages == [b"m4", b"m5", b"m6"]
    assert r.batches[0].body == b"m4m5m6"
    assert [m for _, m in r.unsealed] == [b"m7", b"m8", b"m9"]
    assert (r.epoch, r.next_seq, r.next_index) == (1, 2, 10)


def test_json_body_is_rebuilt_byte_identical(tmp_path: Path) -> None:
    d = Driver(str(tmp_path / "j"))
    for m in (b'{"a":1}', b"[2]", b'"x"'):
        d.append(m)
    d.take(3, json_body=True)
    r = d.crash_and_reopen()
    assert r.batches[0].json_body and r.batches[0].body == b'[{"a":1},[2],"x"]'


def test_torn_tail_at_every_byte_of_the_last_record(tmp_path: Path) -> None:
    """A crash while the last record is being written (payload first, header last) at any
    byte: the record is dropped, everything before it is kept, and the journal is
    writable again at that place."""
    d = Driver(str(tmp_path / "j"))
    for i in range(5):
        d.append(b"before-%d" % i)
    d.take(2)
    before = snapshot(d.path)
    model_before = d.model.copy()
    d.append(b"the last message, torn at every byte")
    model_after = d.model.copy()
    after = snapshot(d.path)
    change = one_record_change(before, after)
    assert change is not None
    name, start, _ = change
    images = torn_images(before, after, start, name)
    assert len(images) == F.HSIZE + len(b"the last message, torn at every byte")
    for cut, image in images:
        path = str(tmp_path / f"img{cut}")
        write_image(path, image)
        j = open_journal(path)
        if image == after:  # the last bytes to write were already what they had to be
            assert replayed(j.replay) == model_after.expected(), cut
        else:
            assert replayed(j.replay) == model_before.expected(), cut
        # the place is reusable: a new record there reads back after another crash
        j.add(b"after the crash")
        j.close()
        again = open_journal(path)
        assert [m for _, m in again.replay.unsealed][-1] == b"after the crash", cut
        again.close()
    # the whole record: kept
    write_image(str(tmp_path / "full"), after)
    j = open_journal(str(tmp_path / "full"))
    assert [m for _, m in j.replay.unsealed][-1] == b"the last message, torn at every byte"
    j.close()


def test_torn_garbage_in_the_tail_is_dropped(tmp_path: Path) -> None:
    d = Driver(str(tmp_path / "j"))
    for i in range(3):
        d.append(b"x%d" % i)
    files = d.j.files
    assert files.mm is not None
    files.mm[files.pos:files.pos + 40] = os.urandom(40)  # a record in the making, any order
    r = d.crash_and_reopen()
    assert [m for _, m in r.unsealed] == [b"x0", b"x1", b"x2"]


def test_a_corrupt_record_elsewhere_names_the_file_and_offset(tmp_path: Path) -> None:
    d = Driver(str(tmp_path / "j"))
    for i in range(20):
        d.append(b"message %d" % i)
    name = F.segment_name(0)
    path = tmp_path / "j" / name
    d.j.close()
    data = bytearray(path.read_bytes())
    records, _ = F.scan(bytes(data), str(path), last=True)
    off = records[5][0]
    data[off + F.HSIZE + 2] ^= 0x40  # one bit of the 5th message
    path.write_bytes(bytes(data))
    with pytest.raises(JournalError) as info:
        open_journal(str(tmp_path / "j"))
    err = info.value
    assert err.code == "JOURNAL_CORRUPT"
    assert err.path == str(path) and err.offset == off
    assert str(path) in str(err) and f"offset {off}" in str(err)
    # and it is not silently "repaired": the next open says the same
    with pytest.raises(JournalError):
        open_journal(str(tmp_path / "j"))


def test_corruption_in_a_middle_segment_is_an_error(tmp_path: Path) -> None:
    d = Driver(str(tmp_path / "j"))
    while len(d.j.files.segments) < 3:
        d.append(os.urandom(500))
    d.j.close()
    first = tmp_path / "j" / F.segment_name(0)
    data = bytearray(first.read_bytes())
    data[-1] = 1  # unwritten space of a finished segment is not zero
    first.write_bytes(bytes(data))
    with pytest.raises(JournalError, match="corrupt") as info:
        open_journal(str(tmp_path / "j"))
    assert info.value.path == str(first)


def test_one_producer_per_journal_in_the_same_process(tmp_path: Path) -> None:
    j = open_journal(str(tmp_path / "j"))
    with pytest.raises(JournalError) as info:
        open_journal(str(tmp_path / "j"))
    assert info.value.code == "JOURNAL_LOCKED"
    assert str(tmp_path / "j") in str(info.value) and f"process {os.getpid()}" in str(info.value)
    j.close()
    open_journal(str(tmp_path / "j")).close()  # released by close


def test_the_lock_is_held_across_processes_and_freed_by_death(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(Path(__file__).parents[2])!r})
        from tests.unit.journal_driver import open_journal
        j = open_journal({str(tmp_path / "j")!r})
        print("LOCKED", flush=True)
        sys.stdin.readline()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "LOCKED"
        with pytest.raises(JournalError, match=f"process {child.pid}"):
            open_journal(str(tmp_path / "j"))
        child.kill()  # SIGKILL: the kernel releases the lock
        child.wait(10)
        open_journal(str(tmp_path / "j")).close()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


def test_identity_is_checked_and_holds_no_secret(tmp_path: Path) -> None:
    secret_url = "https://alice:s3cret-pw@example.test:8443/v1/stream/j?token=tok-secret"
    j = Journal.open(str(tmp_path / "j"), stream=secret_url, producer_id="p1",
                     max_bytes=1 << 30)
    j.add(b"hello")
    j.close()
    for f in (tmp_path / "j").iterdir():
        blob = f.read_bytes()
        assert b"s3cret" not in blob and b"tok-secret" not in blob and b"alice" not in blob
        assert b"token" not in blob
    assert identity_of(secret_url) == "https://example.test:8443/v1/stream/j"
    with pytest.raises(JournalError) as info:
        Journal.open(str(tmp_path / "j"), stream=secret_url, producer_id="p2",
                     max_bytes=1 << 30)
    assert info.value.code == "JOURNAL_IDENTITY" and "'p1'" in str(info.value)
    with pytest.raises(JournalError, match="JOURNAL_IDENTITY|belongs to"):
        Journal.open(str(tmp_path / "j"), stream="https://example.test:8443/v1/stream/other",
                     producer_id="p1", max_bytes=1 << 30)
    # the same stream with other credentials or query values is the same journal
    Journal.open(str(tmp_path / "j"), stream="https://bob:x@example.test:8443/v1/stream/j",
                 producer_id="p1", max_bytes=1 << 30).close()


def test_compaction_drops_fully_resolved_segments_only(tmp_path: Path) -> None:
    d = Driver(str(tmp_path / "j"))
    batches = []
    for _ in range(6):
        for _ in range(40):
            d.append(os.urandom(300))
        b = d.take(40)
        assert b is not None
        batches.append(b)
    assert len(d.j.files.segments) >= 3
    names_before = set(snapshot(d.path))
    # the oldest batch stays pending: nothing can be deleted, whatever else is acked
    for b in batches[1:]:
        d.resolve(b, acked=True)
    assert set(snapshot(d.path)) == names_before
    d.resolve(batches[0], acked=True)
    assert len(d.j.files.segments) == 1  # everything resolved: only the live segment is left
    assert d.j.files.total_bytes == d.j.files.segments[0].size
    r = d.crash_and_reopen()
    assert r.batches == [] and r.unsealed == []
    assert (r.epoch, r.next_seq) == (1, 6)  # the numbering survives compaction


def test_size_limit_refuses_then_frees(tmp_path: Path) -> None:
    d = Driver(str(tmp_path / "j"), max_bytes=3 * 20 * 1024)
    n = 0
    while d.append(os.urandom(400)):
        n += 1
        assert n < 10_000
    assert not d.j.fits(400)
    assert d.j.files.total_bytes <= d.j.files.max_bytes
    b = d.take(n)
    assert b is not None
    d.resolve(b, acked=True)  # compaction frees space
    assert d.j.fits(400) and d.append(os.urandom(400))


def test_control_records_may_pass_the_limit(tmp_path: Path) -> None:
    """Seals and acks are written even when appends are refused, so senders go on."""
    d = Driver(str(tmp_path / "j"), max_bytes=2 * 20 * 1024)
    while d.append(os.urandom(400)):
        pass
    batches = []
    while d.buf:
        b = d.take(1)
        assert b is not None
        batches.append(b)
    for b in batches:
        d.resolve(b, acked=True)
    r = d.crash_and_reopen()
    assert r.batches == [] and r.unsealed == []


def test_invalid_messages_split_off_are_not_replayed(tmp_path: Path) -> None:
    d = Driver(str(tmp_path / "j"))
    for m in (b"1", b"bad{", b"2", b"3", b"bad}"):
        d.append(m)
    b = d.take(5, bad={1})  # left out at sealing
    assert b is not None
    d.split(b, {2})  # refused by the server later: "3" goes
    r = d.crash_and_reopen()
    assert replayed(r) == d.model.expected()
    assert r.batches[0].messages == [b"1", b"2", b"bad}"]


def test_renumbering_is_atomic(tmp_path: Path) -> None:
    d = Driver(str(tmp_path / "j"))
    for i in range(6):
        d.append(b"%d" % i)
    d.take(2)
    d.take(2)
    d.start_claim()
    d.take(2)  # parked
    before = snapshot(d.path)
    d.renumber()
    after = snapshot(d.path)
    change = one_record_change(before, after)
    assert change is not None
    name, start, _ = change
    for cut, image in torn_images(before, after, start, name)[::7]:
        if image == after:
            continue  # the last bytes to write were zero already: complete
        write_image(str(tmp_path / "img"), image)
        j = open_journal(str(tmp_path / "img"))
        keys = [(b.epoch, b.seq) for b in j.replay.batches]
        assert keys == [(1, 0), (1, 1)], cut  # all at the old numbers
        assert [m for _, m in j.replay.unsealed] == [b"4", b"5"]
        j.close()
    r = d.crash_and_reopen()
    assert [(b.epoch, b.seq) for b in r.batches] == [(2, 0), (2, 1), (2, 2)]
    assert r.unsealed == []


def test_a_missing_journal_directory_is_created_and_an_unusable_one_is_an_error(
        tmp_path: Path) -> None:
    j = open_journal(str(tmp_path / "a" / "b" / "c"))
    j.close()
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(JournalError) as info:
        open_journal(str(blocker / "j"))
    assert info.value.code == "JOURNAL_IO" and str(blocker) in str(info.value)


def test_other_files_and_identity_defaults(tmp_path: Path) -> None:
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "README").write_text("ignored")
    j = open_journal(str(tmp_path / "j"))
    assert j.replay.epoch is None and j.replay.next_index == 0
    assert j.stream == identity_of(URL) and j.producer_id == PID
    j.close()


def test_the_fast_path_frames_records_as_the_general_writer_does(tmp_path: Path) -> None:
    """With fsync every message takes the general (synced) writer; without, the fast path:
    the files are byte-identical, and with fsync each message and seal is flushed before
    the call returns (a flush of its own record)."""
    images = []
    for fsync in (False, True):
        d = Driver(str(tmp_path / f"j{fsync}"), fsync=fsync)
        flushed: list[tuple[int, int]] = []
        sync = d.j.files._sync
        if fsync:
            def spy(pos: int, size: int, _sync=sync, _log=flushed) -> None:
                _log.append((pos, size))
                _sync(pos, size)
            d.j.files._sync = spy  # type: ignore[method-assign]
        for i in range(200):  # several segments of 16 KiB
            msg = b"message %d " % i + bytes(i % 97)
            assert d.append(msg)
            if fsync:  # the record just written, whole
                size = F.record_size(len(msg))
                assert flushed[-1] == (d.j.files.pos - size, size), i
            if i % 7 == 6:
                n = len(flushed)
                b = d.take(7)
                assert b is not None
                assert not fsync or len(flushed) > n  # the seal was flushed
                d.resolve(b, acked=True)
        images.append(snapshot(d.path))
        assert replayed(d.crash_and_reopen()) == d.model.expected()
        d.j.close()
    assert images[0] == images[1]


def test_a_closed_journal_refuses_messages(tmp_path: Path) -> None:
    j = open_journal(str(tmp_path / "j"))
    assert j.add(b"kept")
    j.close()
    with pytest.raises(JournalError) as info:
        j.add(b"too late")
    assert info.value.code == "JOURNAL_CLOSED"
    again = open_journal(str(tmp_path / "j"))
    assert [m for _, m in again.replay.unsealed] == [b"kept"]
    again.close()


def test_an_epoch_proven_ours_survives_reopen_and_compaction_not_a_renumbering(
        tmp_path: Path) -> None:
    """``Replay.owned`` (J1): only once a 200 proved the server's producer state at the
    journal's epoch ours (``Journal.proven``) is a 204 for a journaled seq of it taken
    as ours; it is kept in the segment headers (compaction drops the META record), and
    a renumbering to a new epoch starts unproven."""
    d = Driver(str(tmp_path / "j"))
    for _ in range(3):
        d.append(b"m")
    first = d.take(1)
    assert first is not None
    assert not d.crash_and_reopen().owned  # sealed, never proven: maybe another writer's
    d.readopt()
    (b,) = [b for b, _ in d.live.values()]
    d.j.proven(b.epoch - 1)  # an older epoch than the journal's: nothing recorded
    assert not d.crash_and_reopen().owned
    d.readopt()
    (b,) = [b for b, _ in d.live.values()]
    d.j.proven(b.epoch)
    d.resolve(b, acked=True)
    assert d.crash_and_reopen().owned
    d.readopt()
    for _ in range(120):  # new segments: the one with the META record is compacted away
        d.append(os.urandom(300))
        batch = d.take(1)
        assert batch is not None
        d.resolve(batch, acked=True)
    assert F.list_segments(d.path)[0][0] > 0
    assert d.crash_and_reopen().owned
    d.readopt()
    d.append(b"x")
    d.start_claim()
    d.take(1)
    d.renumber()
    r = d.crash_and_reopen()
    assert r.epoch == d.epoch and not r.owned


def test_holes_of_the_epoch_survive_reopen_and_compaction(tmp_path: Path) -> None:
    """``Replay.holes`` (J2): seqs of the journal's epoch reported failed (each may be
    stored or not) above its highest acknowledged seq; an acknowledgement of a later seq
    proves every lower one stored (no hole), and a renumbering starts without holes. Kept
    in the segment headers across compaction."""
    d = Driver(str(tmp_path / "j"))
    seqs = []
    for _ in range(4):
        d.append(b"m")
        b = d.take(1)
        assert b is not None
        seqs.append(b)
    d.resolve(seqs[0], acked=True)
    d.resolve(seqs[1], acked=False)  # seq 1: a hole
    r = d.crash_and_reopen()
    assert r.holes == [1]
    d.readopt()
    live = sorted((b for b, _ in d.live.values()), key=lambda b: b.seq)
    d.resolve(live[1], acked=False)  # seq 3 too
    d.resolve(live[0], acked=True)  # seq 2 stored: seq 1 was stored after all
    assert d.crash_and_reopen().holes == [3]
    d.readopt()
    for k in range(120):  # compaction drops the records; the headers keep the holes
        d.append(os.urandom(300))
        batch = d.take(1)
        assert batch is not None
        d.resolve(batch, acked=k not in (50, 119))  # seq 54 is cleared by 55's ack
    first = F.list_segments(d.path)[0][0]
    for _ in range(120):  # invalid messages (no seq): segments made and compacted
        d.append(os.urandom(300))
        assert d.take(1, bad={0}) is None
    assert F.list_segments(d.path)[0][0] > first
    r = d.crash_and_reopen()
    assert r.holes == [123]
    d.readopt()
    d.append(b"x")
    d.start_claim()
    d.take(1)
    d.renumber()
    assert d.crash_and_reopen().holes == []
