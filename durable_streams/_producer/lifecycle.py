"""Process life of producers: the registry, the exit flush, the fork hook, thread ownership.

The hooks only touch the registry (a WeakSet): a producer that was garbage-collected is
simply not there. Each producer thread records its owner in a thread-local, so that code
such as the logging handler can ask :func:`is_producer_thread` instead of matching names.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Protocol

from .. import errors


class Registered(Protocol):
    def _flush_at_exit_now(self) -> None: ...

    def _after_fork_in_child(self) -> None: ...


_live: weakref.WeakSet[Registered] = weakref.WeakSet()
_local = threading.local()


def register(producer: Registered) -> None:
    _live.add(producer)


def unregister(producer: Registered) -> None:
    _live.discard(producer)


def own_current_thread(token: object) -> None:
    """Mark the calling thread as working for the producer identified by ``token``."""
    _local.owner = token


def is_producer_thread(token: object | None = None) -> bool:
    """True on a producer's own thread (with ``token``: that producer's)."""
    owner = getattr(_local, "owner", None)
    return owner is not None if token is None else owner is token


def forked_error(producer_id: str, pid: int, url: str, *,
                 refusal: bool = False) -> errors.ProducerForkedError:
    """The error for using, in a forked child, a producer created in process ``pid``: the
    one raised by flush()/close_stream(), or (``refusal``) the one append() raises."""
    if refusal:
        return errors.ProducerForkedError(
            f"producer {producer_id!r} was created in process {pid} and cannot be used in "
            f"the forked process {os.getpid()}: its buffer and sequence numbers belong to "
            "the parent; create producers after fork (gunicorn post_fork hook, or lazily on "
            "first use in each worker)", url=url)
    return errors.ProducerForkedError(
        f"producer {producer_id!r} was created in process {pid} and cannot be used in the "
        f"forked process {os.getpid()}; create producers after fork (e.g. in gunicorn's "
        "post_fork hook or lazily on first use)", url=url)


def close_at_exit(close: Callable[[], None], producer_id: str, where: str) -> None:
    """Close a producer at interpreter exit (``close`` is bounded by its exit timeout); a
    failure is reported, never lost (:func:`report_exit_failure`)."""
    try:
        close()
    except Exception as exc:
        report_exit_failure(f"durable_streams: producer {producer_id!r}: at interpreter exit, "
                            f"messages for {where} were not delivered: {exc}")


def report_exit_failure(text: str) -> None:
    """Undelivered data at exit must never vanish without a trace: log it, and when nobody
    configured logging (the library's NullHandler would swallow it) write it to stderr."""
    log = logging.getLogger("durable_streams")
    log.error("%s", text)
    if not _has_real_handler(log):
        with contextlib.suppress(Exception):
            sys.stderr.write(text + "\n")
            sys.stderr.flush()


def _has_real_handler(logger: logging.Logger) -> bool:
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def _at_exit() -> None:
    for producer in list(_live):
        producer._flush_at_exit_now()


def _after_fork() -> None:
    for producer in list(_live):
        producer._after_fork_in_child()
    _live.clear()


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
