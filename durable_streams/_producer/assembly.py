"""How an ``IdempotentProducer``'s parts are built and wired together: the stream argument
resolved once, then one producer lock shared by the reporter, the accumulator, the sender
pool (the accumulator's ``wake`` and the sequencer's sink) and the sequencer, and the one
transport. The options were checked before (``options.py``); nothing here does I/O.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import requests

from .._http import DEFAULT_RETRY, HeadersLike, ParamsLike, RetryPolicy, TimeoutLike
from .._redact import redact_url
from ..stream import DurableStream
from .accumulator import Accumulator
from .batch import Counters
from .reporter import ErrorCallback, Reporter
from .sender import SenderPool
from .sequencer import Sequencer
from .transport import Transport


@dataclass(frozen=True)
class Target:
    """The stream to write to, with what its handle brings (the producer's own options
    win: ``content_type``, ``session``, ``retry``)."""

    url: str
    headers: HeadersLike
    params: ParamsLike
    content_type: str | None
    session: requests.Session | None
    retry: RetryPolicy


def resolve_stream(stream: object, *, content_type: str | None,
                   session: requests.Session | None, retry: RetryPolicy | None) -> Target:
    """The ``stream`` argument: a :class:`DurableStream` handle or an http(s) URL."""
    if isinstance(stream, DurableStream):
        return Target(stream.url, stream.headers, stream.params,
                      content_type or stream.content_type,
                      session if session is not None else stream._client.session,
                      retry or stream.retry)
    if isinstance(stream, str):
        if not stream.startswith(("http://", "https://")):
            raise ValueError(f"stream must be a DurableStream or an http(s) URL, got "
                             f"{redact_url(stream)!r}")
        return Target(stream, None, None, content_type, session, retry or DEFAULT_RETRY)
    raise TypeError(f"stream must be a DurableStream handle or a URL string, got "
                    f"{type(stream).__name__}")


@dataclass(frozen=True)
class Parts:
    lock: threading.Lock
    counters: Counters
    transport: Transport
    reporter: Reporter
    acc: Accumulator
    pool: SenderPool
    seq: Sequencer


def build(owner: object, target: Target, *, producer_id: str, token: object,
          headers: HeadersLike, request_timeout: TimeoutLike, epoch: int,
          fresh_epoch: bool, auto_claim: bool, linger_ms: float, max_batch_bytes: int,
          max_batch_items: int | None, max_in_flight: int, max_buffer_bytes: int,
          max_block_ms: float, delivery_timeout: float, validate_json: bool,
          on_error: ErrorCallback | None) -> Parts:
    """The parts of the producer ``owner`` (kept alive by its running senders); the
    options are the constructor's (``delivery_timeout`` in seconds)."""
    url, where = target.url, redact_url(target.url)
    lock = threading.Lock()
    counters = Counters()
    transport = Transport(
        url, producer_id=producer_id, stream_headers=target.headers, headers=headers,
        params=target.params, content_type=target.content_type, session=target.session,
        retry=target.retry, timeout=request_timeout, pool_size=max_in_flight + 2,
        max_batch_bytes=max_batch_bytes)
    reporter = Reporter(lock, producer_id=producer_id, url=url, where=where,
                        on_error=on_error, token=token)
    acc = Accumulator(
        lock, url=url, where=where, max_batch_bytes=max_batch_bytes,
        max_batch_items=max_batch_items or 0, max_buffer_bytes=max_buffer_bytes,
        linger=float(linger_ms) / 1000.0, max_block=float(max_block_ms) / 1000.0,
        wake=lambda: None)
    pool = SenderPool(
        lock, acc=acc, transport=transport, reporter=reporter, counters=counters,
        producer_id=producer_id, threads=max_in_flight, delivery_timeout=delivery_timeout,
        validate_json=validate_json,
        probe_wait=(float(request_timeout) if isinstance(request_timeout, (int, float))
                    else 10.0), token=token)
    acc.wake = pool.wake
    pool.owner = owner
    seq = pool.seq = Sequencer(
        producer_id=producer_id, url=url, epoch=epoch, auto_claim=auto_claim,
        fresh_epoch=fresh_epoch, max_in_flight=max_in_flight, retry=target.retry,
        delivery_timeout=delivery_timeout, sink=pool, counters=counters,
        json_mode=bool(transport.json_mode))
    return Parts(lock, counters, transport, reporter, acc, pool, seq)
