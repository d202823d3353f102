"""How a producer ends: the shutdown that follows ``close()``'s flush, and the closing POST
of ``close_stream()`` (PROTOCOL.md §5.2.1: it carries the producer headers, so a retried
close is deduplicated by the server).

Both run on the caller's thread. HTTP calls are made without the producer lock; every
sequencer call with it (see ``waits.py`` for the Conditions they wait on).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .. import errors
from . import lifecycle
from .reporter import Reporter
from .sender import SenderPool
from .sequencer import Act, Sequencer
from .transport import Transport

if TYPE_CHECKING:
    from .journal import Journal


def close_stream(lock: threading.Lock, *, seq: Sequencer, pool: SenderPool,
                 transport: Transport, body: bytes | None, delivery_timeout: float) -> str:
    """Send the closing POST (with ``body``, the final message, or None) until the server
    confirms the stream is closed by us: the final offset. Retried (and, with
    ``auto_claim``, re-claimed) until ``delivery_timeout`` seconds; a final answer raises."""
    deadline = time.monotonic() + delivery_timeout
    waits = pool.waits
    retry_n = 0
    while True:
        with lock:
            epoch, n = seq.close_attempt()
        outcome = transport.send_close(body, epoch, n)
        with lock:
            before = seq.gen
            decision = seq.on_close_outcome(outcome, epoch, n, time.monotonic(), deadline,
                                            retry_n)
            waits.on_new_generation(before, seq.gen)
        if decision.act is Act.CHECK_STORED:  # a 204: is the stream closed (by us)?
            closed = transport.stream_closed()
            with lock:
                before = seq.gen
                decision = seq.close_checked(outcome, epoch, n, closed, time.monotonic(),
                                             deadline, retry_n)
                waits.on_new_generation(before, seq.gen)
        if decision.act is Act.DONE:
            return decision.offset
        if decision.act is Act.RAISE:
            assert decision.error is not None
            raise decision.error
        if decision.act is Act.RETRY:
            retry_n += 1
            end = time.monotonic() + decision.delay
            with lock:
                # Until the delay passed, or close() gave up on the producer meanwhile.
                while (not (pool.stopping and seq.fatal is not None)
                       and (left := end - time.monotonic()) > 0):
                    waits.close_retry.wait(left)


def shutdown(lock: threading.Lock, owner: lifecycle.Registered, *, seq: Sequencer,
             pool: SenderPool, reporter: Reporter, transport: Transport,
             journal: Journal | None, producer_id: str, where: str, url: str, abandon: bool,
             deadline: float | None) -> None:
    """After ``close()``'s flush: give up on what is left (``abandon``: the flush timed
    out), stop and join the senders, let ``on_error`` see every failure, release the
    session, the registry entry of ``owner`` and the journal; all within ``deadline``."""
    with lock:
        if abandon:
            kept = ""
            if journal is not None:
                journal.keep_pending = True  # not resolved: they stay journaled
                kept = (f"; they stay in the journal {journal.directory}: the next "
                        "producer opened on it delivers them (do not append them again)")
            seq.stop(errors.ProducerClosedError(
                f"producer {producer_id!r} for {where} was closed before these "
                f"messages were acknowledged{kept}", url=url))
        threads = pool.stop()
    # Idle senders exit at once. When abandoning, a sender may be inside a request (up
    # to the request timeout): it is a daemon thread, so do not wait long for it; and
    # never past close()'s own deadline.
    end = time.monotonic() + (2.0 if abandon else 30.0)
    if deadline is not None:
        end = min(end, deadline)
    for thread in threads:
        if thread is not threading.current_thread():
            thread.join(timeout=max(0.0, end - time.monotonic()))
    with lock:
        reporter.ensure_thread()
        wait = 30.0 if deadline is None else min(30.0, deadline - time.monotonic())
        if wait > 0:
            reporter.wait_called(wait)
        reporter.close()
    transport.close()
    lifecycle.unregister(owner)
    if journal is not None:
        with lock:
            journal.close()
