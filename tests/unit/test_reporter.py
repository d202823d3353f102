"""The producer's reporter and thread ownership without a server: failures reach on_error on
the reporter's own thread (known to be the producer's) and the next flush()/close()."""

from __future__ import annotations

import threading

import pytest

from durable_streams import errors
from durable_streams._producer import lifecycle
from durable_streams._producer.reporter import Reporter, copy_error


def make(on_error: object = None) -> tuple[Reporter, threading.Lock, object]:
    lock = threading.Lock()
    token = object()
    reporter = Reporter(lock, producer_id="p", url="http://u:pw@h/s", where="http://***@h/s",
                        on_error=on_error, token=token)  # type: ignore[arg-type]
    return reporter, lock, token


def test_failures_reach_on_error_on_the_producers_own_thread() -> None:
    seen: list[tuple[errors.DurableStreamError, bool, bool]] = []
    done = threading.Event()
    token_box: list[object] = []

    def on_error(err: errors.DurableStreamError) -> None:
        seen.append((err, lifecycle.is_producer_thread(token_box[0]),
                     lifecycle.is_producer_thread()))
        done.set()

    reporter, lock, token = make(on_error)
    token_box.append(token)
    original = errors.ServerError("503", status=503)
    with lock:
        reporter.report(original, [b"a", b"b"])
    assert done.wait(10)
    err, own, any_producer = seen[0]
    assert err is not original and err.undelivered == (b"a", b"b")
    assert own and any_producer
    assert not lifecycle.is_producer_thread(token)  # the test's thread is not the producer's
    with lock:
        reporter.wait_called(10)
        assert reporter.called == 1
        reporter.close()


def test_the_next_flush_gets_one_delivery_error_for_all_failures() -> None:
    reporter, lock, _ = make()
    with lock:
        reporter.report(errors.ServerError("first", status=503), [b"a"])
        reporter.report(errors.BadRequestError("second", status=400), [b"b", b"c"])
        with pytest.raises(errors.DeliveryError) as info:
            reporter.raise_unreported()
        assert "3 message(s)" in str(info.value) and "pw" not in str(info.value)
        assert [len(e.undelivered) for e in info.value.errors] == [1, 2]
        reporter.raise_unreported()  # reported once: nothing more to raise


def test_copy_error_keeps_type_and_attributes() -> None:
    err = errors.StaleEpochError("fenced", current_epoch=4, status=403)
    clone = copy_error(err)
    assert type(clone) is errors.StaleEpochError and clone is not err
    assert clone.current_epoch == 4 and clone.status == 403 and str(clone) == "fenced"


def test_on_error_that_raises_does_not_stop_the_reporter() -> None:
    calls: list[str] = []
    second = threading.Event()

    def on_error(err: errors.DurableStreamError) -> None:
        calls.append(str(err))
        if len(calls) == 2:
            second.set()
        raise RuntimeError("callback bug")

    reporter, lock, _ = make(on_error)
    with lock:
        reporter.report(errors.ProducerError("one"), [b"a"])
        reporter.report(errors.ProducerError("two"), [b"b"])
    assert second.wait(10) and calls == ["one", "two"]
    with lock:
        reporter.close()
