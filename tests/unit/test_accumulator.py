"""The producer's buffer without a server: sealing by bytes, items and linger (with a fake
clock), flush, and backpressure (the byte budget, blocking when full, BufferFullError)."""

from __future__ import annotations

import threading
import time

import pytest

from durable_streams import errors
from durable_streams._producer.accumulator import Accumulator, Refusal


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(*, batch: int = 10, items: int = 0, capacity: int = 100, linger: float = 0.005,
         max_block: float = 0.0) -> tuple[Accumulator, Clock, list[int]]:
    clock = Clock()
    wakes: list[int] = []
    acc = Accumulator(threading.Lock(), url="http://h/s", where="http://h/s",
                      max_batch_bytes=batch, max_batch_items=items, max_buffer_bytes=capacity,
                      linger=linger, max_block=max_block, wake=lambda: wakes.append(1),
                      clock=clock)
    return acc, clock, wakes


def add(acc: Accumulator, *messages: bytes) -> None:
    for m in messages:
        acc.append(m)


def test_first_message_opens_the_batch_and_wakes_the_senders() -> None:
    acc, clock, wakes = make()
    add(acc, b"ab")
    assert acc.first_ts == 100.0 and wakes == [1]
    clock.now = 100.002
    add(acc, b"cd")
    assert wakes == [1]  # not full yet: no further wake-up
    assert acc.appended == 2 and acc.nbytes == 4 and acc.pending_bytes == 4


def test_linger_decides_when_the_batch_is_due() -> None:
    acc, clock, _ = make(linger=0.005)
    add(acc, b"ab")
    assert acc.due_in(100.001) == pytest.approx(0.004)
    assert acc.take(100.001) is None  # not due yet
    assert acc.due_in(100.005) <= 0
    assert acc.due_in(100.001, force=True) == 0.0  # stopping or fatal: now
    taken = acc.take(100.006)
    assert taken == ([b"ab"], 2, 0)


def test_a_full_batch_is_due_at_once_and_wakes_the_senders_once() -> None:
    acc, _, wakes = make(batch=4)
    add(acc, b"ab", b"cd")
    assert wakes == [1, 1]
    assert acc.due_in(100.0) == 0.0
    add(acc, b"ef")
    assert wakes == [1, 1]  # already past full: no new wake-up


def test_item_limit_seals_and_splits() -> None:
    acc, _, _ = make(batch=100, items=2)
    add(acc, b"a", b"b", b"c")
    assert acc.due_in(100.0) == 0.0
    assert acc.take(100.0) == ([b"a", b"b"], 2, 0)
    assert acc.sealing_from == 0
    acc.sealed()
    assert acc.buf == [b"c"] and acc.start == 2


def test_byte_limit_splits_batches_in_order_with_indexes() -> None:
    acc, _, _ = make(batch=5, capacity=100)
    add(acc, b"abc", b"de", b"fgh", b"i")
    first = acc.take(100.0)
    assert first == ([b"abc", b"de"], 5, 0)
    acc.sealed()
    second = acc.take(100.0, force=True)
    assert second == ([b"fgh", b"i"], 4, 2)
    assert acc.buf == [] and acc.nbytes == 0


def test_flush_seals_without_lingering_only_up_to_its_target() -> None:
    acc, clock, _ = make(linger=10.0)
    add(acc, b"a")
    acc.seal_all(acc.appended)
    assert acc.due_in(100.0) == 0.0
    acc.take(100.0)
    acc.sealed()
    clock.now = 101.0
    add(acc, b"b")
    assert acc.due_in(101.0) == pytest.approx(10.0)  # appended after the flush began


def test_unresolved_below_counts_messages_being_sealed() -> None:
    acc, _, _ = make()
    add(acc, b"a", b"b")
    assert acc.unresolved_below(1) and acc.count_below(1) == 1
    acc.take(200.0)
    assert acc.unresolved_below(2)  # taken, not yet registered as a batch
    acc.sealed()
    assert not acc.unresolved_below(2)


def test_budget_counts_unacknowledged_bytes_until_released() -> None:
    acc, _, _ = make(batch=10, capacity=10)
    add(acc, b"12345", b"67890")
    acc.take(200.0)
    acc.sealed()
    assert acc.room == 0 and acc.pending_bytes == 10  # in flight still counts
    with acc.space:  # release() is called with the producer lock held
        acc.release(5)
    assert acc.room == 5
    add(acc, b"abcde")
    assert acc.room == 0


def test_full_buffer_raises_after_max_block() -> None:
    acc, _, _ = make(batch=10, capacity=10, max_block=0.0)
    add(acc, b"1234567890")
    with pytest.raises(errors.BufferFullError, match="10 of 10 bytes unacknowledged"):
        add(acc, b"x")
    assert acc.appended == 1 and acc.room == 0  # the refused message left no trace


def test_full_buffer_blocks_until_room_is_freed() -> None:
    acc, _, _ = make(batch=10, capacity=10, max_block=30.0)
    add(acc, b"1234567890")
    done = threading.Event()

    def appender() -> None:
        add(acc, b"x")
        done.set()

    thread = threading.Thread(target=appender)
    thread.start()
    deadline = time.monotonic() + 10
    while acc.seal_upto == 0 and time.monotonic() < deadline:  # it is waiting for room
        time.sleep(0.001)
    assert acc.seal_upto == 1 and not done.is_set()
    with acc.space:
        acc.release(10)
    assert done.wait(10)
    thread.join()
    assert acc.buf[-1] == b"x"


def _blocked_appender(acc: Accumulator) -> tuple[threading.Thread, list[BaseException]]:
    """A thread appending to a full ``acc``, returned once it waits for room."""
    raised: list[BaseException] = []

    def appender() -> None:
        try:
            add(acc, b"x")
        except errors.ProducerClosedError as exc:
            raised.append(exc)

    thread = threading.Thread(target=appender)
    thread.start()
    deadline = time.monotonic() + 10
    while acc.seal_upto == 0 and time.monotonic() < deadline:  # it is waiting for room
        time.sleep(0.001)
    assert acc.seal_upto == 1
    return thread, raised


def test_refusal_is_raised_as_a_fresh_copy_also_to_blocked_appenders() -> None:
    acc, _, _ = make(batch=10, capacity=10, max_block=30.0)
    add(acc, b"1234567890")
    thread, raised = _blocked_appender(acc)
    refusal = errors.ProducerClosedError("closed")
    with acc.space:
        acc.refuse(refusal, Refusal.CLOSED)  # wakes the blocked appender itself
    thread.join(10)
    assert raised and raised[0] is not refusal and str(raised[0]) == "closed"
    with pytest.raises(errors.ProducerClosedError):
        add(acc, b"y")


def test_a_refusal_that_comes_with_room_still_refuses_the_blocked_appender() -> None:
    """close() may free room and refuse in one hold of the lock: the woken appender finds
    room, but the producer is closed, so its message must not be accepted."""
    acc, _, _ = make(batch=10, capacity=10, max_block=30.0)
    add(acc, b"1234567890")
    thread, raised = _blocked_appender(acc)
    with acc.space:
        acc.release(10)
        acc.refuse(errors.ProducerClosedError("closed"), Refusal.CLOSED)
    thread.join(10)
    assert not thread.is_alive()
    assert raised and acc.buf == [b"1234567890"]


def test_take_all_empties_the_buffer_for_failing() -> None:
    acc, _, _ = make()
    add(acc, b"a", b"bc")
    assert acc.take_all() == ([b"a", b"bc"], 3)
    assert acc.buf == [] and acc.start == 2 and acc.appended == 2


@pytest.mark.parametrize(("message", "exc", "needle"), [
    (b"", ValueError, "empty"), (b"x" * 11, ValueError, "max_batch_bytes"),
    (42, TypeError, "json.dumps"), ("\ud800", ValueError, "UTF-8")])
def test_bad_messages_are_refused_before_taking_the_lock(message: object, exc: type,
                                                         needle: str) -> None:
    acc, _, wakes = make(batch=10)
    with pytest.raises(exc, match=needle):
        acc.append(message)  # type: ignore[arg-type]
    assert acc.appended == 0 and not wakes


def test_str_and_bytes_like_messages_are_encoded() -> None:
    acc, _, _ = make(batch=100)
    acc.append("é")
    acc.append(bytearray(b"ab"))
    acc.append(memoryview(b"cd"))
    assert acc.buf == ["é".encode(), b"ab", b"cd"]



def test_the_refusal_of_highest_rank_wins_and_equal_ranks_keep_the_first() -> None:
    acc, _, _ = make(batch=10, capacity=10, max_block=30.0)
    closed = errors.ProducerClosedError("closed")
    with acc.space:
        acc.refuse(closed, Refusal.CLOSED)
        acc.refuse(errors.ProducerClosedError("closed again"), Refusal.CLOSED)
        assert acc.refusal is closed  # equal rank: the first stays
        acc.refuse(errors.StreamClosedError("stream closed"), Refusal.STREAM_CLOSED)
        fatal = errors.StaleEpochError("fenced")
        acc.refuse(fatal, Refusal.STOPPED)
        acc.refuse(errors.StreamClosedError("stream closed later"), Refusal.STREAM_CLOSED)
        assert acc.refusal is fatal  # a lower rank never replaces a higher one
        forked = errors.ProducerForkedError("forked")
        acc.refuse(forked, Refusal.FORKED)
        assert acc.refusal is forked
    with pytest.raises(errors.ProducerForkedError, match="forked"):
        add(acc, b"y")


def test_only_refuse_writes_the_refusal() -> None:
    """One owner: no module of the library assigns ``.refusal`` but Accumulator.refuse
    (and the field's initialisation)."""
    import ast
    from pathlib import Path

    import durable_streams

    writers = []
    for path in Path(durable_streams.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                targets: list[ast.expr] = []
                if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    for t in ast.walk(target):
                        if isinstance(t, ast.Attribute) and t.attr == "refusal":
                            writers.append(f"{path.name}:{func.name}")
    assert sorted(set(writers)) == ["accumulator.py:__init__", "accumulator.py:refuse"]
