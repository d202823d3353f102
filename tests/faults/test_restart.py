"""Scenario 2: kill -9 and restart the on-disk reference server twice while producing and
while two live readers (long-poll and SSE) follow the stream.

The producer must end with every message exactly once, in per-thread order; each reader must
deliver exactly the stream's content (resuming from its last offset: no gap, no repeat) up
to EOF.

Two defects of the reference server's on-disk store (0.3.7) show up here, and the test
tells them apart from client bugs instead of hiding them:

* It writes (and fsyncs) a batch to its segment file before it records the batch's offset
  and producer state in LMDB. Killed in between, it recovers the batch from the file but not
  the producer state, so the producer's retry of that very (epoch, seq), which is correct,
  is stored a second time (PROTOCOL §5.2.1 "Atomicity Requirements" allows this for stores
  that document it). Duplicates are attributed to the server only when they are exactly
  the messages its recovery log reconciled ("Offset mismatch ... Reconciling to file").
* Its file-backed read returns frames still being appended (not yet in LMDB), and a read at
  an offset past its committed tail answers with the tail offset, lower than the one asked
  for, under load, restarts or not. The long-poll reader used to follow it backwards and
  re-deliver a batch; since bd8413b it retries instead (test_live_reader_never_moves_backwards
  pins that with a fake server). Reader repeats are attributed to the server only when a response
  moved the reader backwards and nothing is missing.

When only those server defects are seen, the test ends as xfail with the evidence.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .harness import thread_key
from .scenarios import first_occurrences, full_run, reading_available, rewinds, run_restart

MESSAGES = 40_000 if full_run() else 10_000


def _in_thread_order(items: list[str]) -> bool:
    last: dict[str, int] = {}
    for item in items:
        group, index = thread_key(item)
        if index <= last.get(group, -1):
            return False
        last[group] = index
    return True


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_kill_restart_twice_exactly_once_and_readers_resume(tmp_path: Path) -> None:
    why_not = reading_available()
    readers = ("long-poll", "sse") if why_not is None else ()
    result = run_restart(tmp_path, MESSAGES, restarts=2, readers=readers)
    d = result.details
    explain = result.explain() + f"\nserver log: {d['server_reconciled']}"
    assert not d["failures"], d["failures"]
    assert len(d["kills"]) == 2
    for kill in d["kills"]:  # the restarted server still has all it acknowledged
        assert kill["offset_after_restart"] >= kill["acked_offset_before_kill"], (
            f"SERVER lost acknowledged data across kill -9: {kill}")
    assert result.sent == MESSAGES and result.acked == MESSAGES
    assert result.found == MESSAGES and result.lost == 0, explain
    assert result.foreign == 0, explain
    assert _in_thread_order(first_occurrences(d["items"])), explain
    by_producer = [m for m in d["duplicated"] if m not in set(d["server_unrecorded"])]
    assert not by_producer, f"PRODUCER duplicated {by_producer[:10]}: {explain}"

    server_defects = []
    if d["duplicated"]:
        server_defects.append(
            f"{len(d['duplicated'])} messages stored twice, all in the batch the server "
            f"wrote but had not recorded when killed ({d['server_reconciled']})")
    if why_not is not None:
        pytest.skip(f"live readers not checked: {why_not}")
    for follower in d["followers"]:
        assert follower.error is None, (follower.mode, follower.error)
        assert follower.eof, f"{follower.mode} reader did not reach EOF"
        if follower.items == d["items"]:
            continue
        assert first_occurrences(follower.items) == first_occurrences(d["items"]), (
            f"{follower.mode} reader has a GAP or misorder ({len(follower.items)} items vs "
            f"{len(d['items'])})")
        back = rewinds(follower.chunks)
        assert back, (f"{follower.mode} reader repeated items without the server moving it "
                      "backwards: a reader bug")
        server_defects.append(
            f"{follower.mode} reader: {len(follower.items) - len(d['items'])} repeated items "
            f"after {len(back)} responses with an offset lower than requested, e.g. {back[0]}")
    if server_defects:
        pytest.xfail("reference server on-disk store: " + "; ".join(server_defects))


def _offset(n: int) -> str:
    return f"{0:016d}_{n:016d}"


@pytest.mark.timeout(60)
def test_live_reader_never_moves_backwards() -> None:
    """The reference server's on-disk store answers a read past its committed tail with the
    (lower) tail offset. A reader that follows such an answer re-reads and re-delivers data
    (the repeats the restart test saw before bd8413b). Offsets are ordered (PROTOCOL §8): a
    reader must not go back; it keeps its offset and asks again."""
    from .harness import FakeServer

    body = {_offset(0): (["a", "b"], _offset(2)), _offset(1): (["b"], _offset(2))}
    served_back: list[bool] = []

    def respond(method: str, path: str, headers: object, data: bytes
                ) -> tuple[int, dict[str, str], bytes]:
        query = dict(p.split("=", 1) for p in path.partition("?")[2].split("&") if "=" in p)
        offset = query.get("offset", "-1")
        base = {"Content-Type": "application/json", "Stream-Up-To-Date": "true",
                "Cache-Control": "no-store"}
        if method == "HEAD":
            return 200, {**base, "Stream-Next-Offset": _offset(2)}, b""
        if offset in ("-1", _offset(0)):
            items, nxt = body[_offset(0)]
        elif offset == _offset(1):
            items, nxt = body[_offset(1)]
        elif offset == _offset(2) and not served_back:
            served_back.append(True)  # past the "committed" tail: answer with a lower one
            return 200, {**base, "Stream-Next-Offset": _offset(1)}, b"[]"
        else:
            return 200, {**base, "Stream-Next-Offset": _offset(3), "Stream-Closed": "true"}, \
                b'["c"]'
        return 200, {**base, "Stream-Next-Offset": nxt}, json.dumps(items).encode()

    import durable_streams

    with FakeServer(respond) as fake, durable_streams.stream(
            fake.url + "/s", live="long-poll", stop_after=20) as response:
        got = list(response.iter_json())
    assert served_back, "precondition: the backwards answer was served"
    assert got == ["a", "b", "c"], f"reader went back and re-delivered: {got}"
