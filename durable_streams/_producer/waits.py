"""The Conditions the producer's threads wait on: one per wait, all on the producer lock,
and the one place that says which event notifies which of them.

Each waiter loops ``while not predicate: cond.wait(timeout)`` with the lock held. Every
event (a method ``on_<event>``) is reported, lock held, where it happens and before the
lock is released, so a waiter always re-checks its predicate after the change; an event
notifies every Condition whose predicate it can make true, and no other.

Condition (who waits)          waits until (the predicate)          notified by (``on_<event>``)
-----------------------------  -----------------------------------  ----------------------------
``ready`` (an idle sender,     ``Sequencer.next_work`` has a task   ``SenderPool.wake`` and the
SenderPool._next_task)                                              baton (one sender); ``stop``,
                                                                    ``fatal`` (every sender)
``settled`` (``flush()``)      every message below its target is    ``acked``, ``failed``
                               acknowledged or failed
``turn`` (a sender before a    ``turn_ok`` (lower seqs written, no  ``written``, ``acked``,
send: Delivery._wait_turn)     large batch 2+ below unanswered      ``failed``, ``new_generation``,
                               once a seq was overtaken,
                               window room), or the batch can no    ``fatal``
                               longer be sent
``earlier`` (a sender after    the earlier seqs are resolved, or    ``acked``, ``failed``,
an out-of-order 409)           the batch can no longer be sent      ``new_generation``, ``fatal``
``probed`` (the sender of      the early tail probe of its          ``probed``
seq 0: Delivery._ensure_probe) generation has ended
``retry`` (a sender between    the delay passed, or the batch can   ``failed`` (a hole moves to a
two attempts: Delivery._sleep) no longer be sent (failed, parked)   new epoch), ``new_generation``,
                                                                    ``fatal``
``head_retry`` (a sealing      the delay passed, or the producer    ``fatal``
sender whose content-type      stopped for good
HEAD failed)
``close_retry``                the delay passed, or ``close()``     ``stop``, ``fatal``
(``close_stream()`` between    gave up (stopping, and stopped for
two attempts)                  good)

"The batch can no longer be sent" is ``Sequencer.check`` turning False: the batch settled,
the sequencer stopped (``fatal``) or moved to a new generation (an epoch claim:
``new_generation``, reported by whoever called the sequencer method that claimed it, by
comparing ``Sequencer.gen`` before and after, and by ``failed``, since
``Sequencer.fail`` claims after a hole right after reporting the failure).

Other Conditions of the producer live with their state: the accumulator's ``space``
(appenders, until room or a refusal: notified by ``Accumulator.release`` and
``Accumulator.refuse``) and the reporter's ``cond`` (its thread, until a failure is queued
or it is closed) and ``delivered`` (``flush()``/``close()``, until ``on_error`` saw every
failure).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["NAMES", "Cond", "Waits"]

#: The Conditions of :class:`Waits`, by attribute name.
NAMES = ("ready", "settled", "turn", "earlier", "probed", "retry", "head_retry",
         "close_retry")


class Cond(Protocol):
    """What the producer uses of a :class:`threading.Condition` (a simulation can fake it)."""

    def wait(self, timeout: float | None = None) -> bool: ...

    def notify(self, n: int = 1) -> None: ...

    def notify_all(self) -> None: ...


class Waits:
    """The producer's Conditions (see the module docstring for each one's predicate)."""

    def __init__(self, lock: threading.Lock,
                 make: Callable[[str], Cond] | None = None) -> None:
        def condition(name: str) -> Cond:
            return make(name) if make is not None else threading.Condition(lock)

        self.ready = condition("ready")
        self.settled = condition("settled")
        self.turn = condition("turn")
        self.earlier = condition("earlier")
        self.probed = condition("probed")
        self.retry = condition("retry")
        self.head_retry = condition("head_retry")
        self.close_retry = condition("close_retry")

    # -- events (lock held) ------------------------------------------------------------------
    def on_acked(self) -> None:
        """A batch was acknowledged: fewer unresolved messages and seqs, a wider window."""
        self.settled.notify_all()
        self.turn.notify_all()
        self.earlier.notify_all()

    def on_failed(self) -> None:
        """Messages were reported failed (a batch, or buffered ones)."""
        self.settled.notify_all()
        self.turn.notify_all()
        self.earlier.notify_all()
        self.retry.notify_all()

    def on_written(self) -> None:
        """A batch's body is on the wire (``Sequencer.written`` said True)."""
        self.turn.notify_all()

    def on_new_generation(self, before: int, now: int) -> None:
        """A sequencer call may have claimed a new epoch (``gen`` went from ``before`` to
        ``now``): every sender holding a batch of the old one must look again."""
        if now != before:
            self.turn.notify_all()
            self.earlier.notify_all()
            self.retry.notify_all()

    def on_probed(self) -> None:
        """An early tail probe ended (``Sequencer.probe_done`` with ``early=True``)."""
        self.probed.notify_all()

    def on_fatal(self) -> None:
        """The sequencer stopped for good (``Sink.stopped``)."""
        self.ready.notify_all()
        self.turn.notify_all()
        self.earlier.notify_all()
        self.retry.notify_all()
        self.head_retry.notify_all()
        self.close_retry.notify_all()

    def on_stop(self) -> None:
        """The producer is closing (``SenderPool.stop``): every sender must see STOP."""
        self.ready.notify_all()
        self.close_retry.notify_all()
