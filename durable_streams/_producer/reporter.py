"""Failures go two ways: to ``on_error`` on the reporter's own thread, and to the next
``flush()``/``close()`` as one :class:`~durable_streams.errors.DeliveryError`.

One queue, one thread (started on the first failure), like ``logging``'s QueueListener.
All fields are guarded by the producer lock; ``on_error`` runs without any lock held.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from .. import errors
from . import lifecycle

log = logging.getLogger("durable_streams.producer")

ErrorCallback = Callable[[errors.DurableStreamError], Any]


def copy_error(err: errors.DurableStreamError) -> errors.DurableStreamError:
    """A fresh exception with the same type and attributes (each raise gets its own)."""
    clone = type(err).__new__(type(err))
    clone.__dict__.update(err.__dict__)
    clone.args = err.args
    return clone


class Reporter:
    def __init__(self, lock: threading.Lock, *, producer_id: str, url: str, where: str,
                 on_error: ErrorCallback | None, token: object) -> None:
        self.cond = threading.Condition(lock)  # the reporter thread waits here
        self.delivered = threading.Condition(lock)  # flush/close wait for on_error calls
        self.producer_id = producer_id
        self.url = url
        self.where = where
        self.on_error = on_error
        self.token = token
        self.unreported: list[errors.DurableStreamError] = []
        self.queue: deque[errors.DurableStreamError] = deque()
        self.thread: threading.Thread | None = None
        self.enqueued = 0
        self.called = 0
        self.closing = False  # the producer is shut down: the thread may end when idle
        self.forked = False

    def report(self, err: errors.DurableStreamError, messages: list[bytes]) -> None:
        """Record one failure (lock held); ``err`` gets ``undelivered`` set on a copy."""
        failure = copy_error(err)
        failure.undelivered = tuple(messages)
        self.unreported.append(failure)
        if self.on_error is None:
            log.error("producer %s: %d message(s) not delivered: %s", self.producer_id,
                      len(messages), failure)
            return
        self.queue.append(failure)
        self.enqueued += 1
        self.ensure_thread()
        self.cond.notify_all()

    def ensure_thread(self) -> None:
        if not self.queue or self.thread is not None or self.forked:
            return
        self.thread = threading.Thread(target=self._main, daemon=True,
                                       name=f"ds-producer-{self.producer_id}-callbacks")
        self.thread.start()

    def on_own_thread(self) -> bool:
        return threading.current_thread() is self.thread

    def wait_called(self, timeout: float | None = None) -> None:
        """Wait (lock held) until ``on_error`` has seen every failure reported so far."""
        if self.on_own_thread():
            return
        target = self.enqueued
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.called < target:
            remaining = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if remaining <= 0:
                break
            self.ensure_thread()
            self.delivered.wait(remaining)

    def raise_unreported(self) -> None:
        """Raise one DeliveryError for the failures since the last one (lock held)."""
        if not self.unreported:
            return
        errs, self.unreported = self.unreported, []
        count = sum(len(e.undelivered) for e in errs)
        raise errors.DeliveryError(
            f"{count} message(s) for {self.where} were not delivered ({len(errs)} failure(s)); "
            f"first: {errs[0]}",
            errors=errs,
            url=self.url,
        )

    def close(self) -> None:
        """No more failures are expected: the thread ends once its queue is empty."""
        self.closing = True
        self.cond.notify_all()

    def after_fork_in_child(self, lock: threading.Lock) -> None:
        self.cond = threading.Condition(lock)
        self.delivered = threading.Condition(lock)
        self.thread = None
        self.forked = True

    def _main(self) -> None:
        lifecycle.own_current_thread(self.token)
        while True:
            with self.cond:
                while not self.queue:
                    if self.closing:
                        self.thread = None
                        return
                    self.cond.wait(0.5)
                err = self.queue.popleft()
            try:
                assert self.on_error is not None
                self.on_error(err)
            except Exception:
                log.exception("producer %s: on_error callback raised", self.producer_id)
            finally:
                with self.cond:
                    self.called += 1
                    self.delivered.notify_all()
