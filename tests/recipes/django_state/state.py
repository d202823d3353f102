"""Publish every saved or deleted Todo as a State Protocol change event, after commit.

- The events are queued in ``transaction.on_commit``: a rolled-back transaction publishes
  nothing, and readers never see a change the database does not have.
- ``with atomic_txid() as txid:`` is ``transaction.atomic()`` with an id for the
  transaction: every event it publishes carries ``headers.txid = txid``, which a view
  returns so that the client (or a test) can wait until a reader has applied it
  (``follow_state(...).wait_for_txid(txid)``). A save outside such a block is its own
  transaction (autocommit) and gets an id of its own.
- One StateProducer per process, created on first use (each gunicorn/uwsgi worker gets its
  own, also with ``--preload``).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.forms.models import model_to_dict

from durable_streams.state import StateProducer

_lock = threading.Lock()
_producer: StateProducer | None = None
_producer_pid = 0
_txid: contextvars.ContextVar[str | None] = contextvars.ContextVar("state_txid", default=None)


def producer() -> StateProducer:
    """The process-wide StateProducer, created on first use in each (worker) process."""
    global _producer, _producer_pid
    current = _producer
    if current is not None and _producer_pid == os.getpid():
        return current
    with _lock:
        if _producer is None or _producer_pid != os.getpid():
            _producer = StateProducer(
                settings.STATE_STREAM_URL,
                producer_id=f"django-state-{socket.gethostname()}-{os.getpid()}",
                auto_claim=True,
                max_block_ms=250,
            )
            _producer_pid = os.getpid()
        return _producer


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def atomic_txid(using: str | None = None) -> Iterator[str]:
    """``transaction.atomic()`` whose events all carry one txid (yielded)."""
    txid = uuid.uuid4().hex
    token = _txid.set(txid)
    try:
        with transaction.atomic(using=using):
            yield txid
    finally:
        _txid.reset(token)


def _as_json(instance: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(model_to_dict(instance), cls=DjangoJSONEncoder))
    data["id"] = instance.pk
    return data


def _type_of(sender: Any) -> str:
    return str(sender._meta.label_lower)  # e.g. "django_state.todo"


def on_saved(sender: Any, instance: Any, created: bool, using: str, **_: Any) -> None:
    txid = _txid.get() or uuid.uuid4().hex
    type_, key, value = _type_of(sender), str(instance.pk), _as_json(instance)
    if created:
        transaction.on_commit(lambda: producer().insert(type_, key, value, txid=txid),
                              using=using)
    else:
        transaction.on_commit(lambda: producer().update(type_, key, value, txid=txid),
                              using=using)


def on_deleted(sender: Any, instance: Any, using: str, **_: Any) -> None:
    txid = _txid.get() or uuid.uuid4().hex
    type_, key, old = _type_of(sender), str(instance.pk), _as_json(instance)
    transaction.on_commit(lambda: producer().delete(type_, key, old_value=old, txid=txid),
                          using=using)


def connect_signals() -> None:
    from .models import Todo

    post_save.connect(on_saved, sender=Todo, dispatch_uid="django_state.saved")
    post_delete.connect(on_deleted, sender=Todo, dispatch_uid="django_state.deleted")
