"""The producer's public counters snapshot and the checks of its options."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .. import _protocol as P


@dataclass(frozen=True)
class ProducerStats:
    """A snapshot of a producer's counters (see :meth:`IdempotentProducer.stats`)."""

    messages_appended: int
    messages_acked: int
    messages_failed: int
    bytes_acked: int
    batches_sent: int
    requests_sent: int
    retries: int
    duplicates: int
    failures: int
    epoch_claims: int
    buffered_messages: int
    buffered_bytes: int
    pending_bytes: int
    in_flight: int


def _validate_int(name: str, py_name: str, value: Any, *, minimum: int,
                  maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{py_name} ({name}) must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{py_name} ({name}) must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{py_name} ({name}) must be <= {maximum}, got {value}")
    return value


def check_options(*, epoch: int, max_batch_bytes: int, max_batch_items: int | None,
                  max_in_flight: int, max_buffer_bytes: int, linger_ms: float,
                  max_block_ms: float, delivery_timeout_ms: float, on_error: Any) -> None:
    """Raise TypeError/ValueError naming the first bad option and how to fix it."""
    _validate_int("epoch", "epoch", epoch, minimum=0, maximum=P.MAX_SAFE_INTEGER)
    _validate_int("maxBatchBytes", "max_batch_bytes", max_batch_bytes, minimum=1)
    if max_batch_items is not None:
        _validate_int("maxBatchItems", "max_batch_items", max_batch_items, minimum=1)
    _validate_int("maxInFlight", "max_in_flight", max_in_flight, minimum=1)
    _validate_int("maxBufferBytes", "max_buffer_bytes", max_buffer_bytes, minimum=1)
    if max_buffer_bytes < max_batch_bytes:
        raise ValueError(f"max_buffer_bytes ({max_buffer_bytes}) must be >= "
                         f"max_batch_bytes ({max_batch_bytes})")
    for name, py_name, value in (("lingerMs", "linger_ms", linger_ms),
                                 ("maxBlockMs", "max_block_ms", max_block_ms),
                                 ("deliveryTimeoutMs", "delivery_timeout_ms",
                                  delivery_timeout_ms)):
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value < 0):
            raise ValueError(
                f"{py_name} ({name}) must be a finite number >= 0, got {value!r}")
    if on_error is not None and not callable(on_error):
        raise TypeError("on_error must be a callable taking one exception")


def encode_final(final_message: str | bytes | None) -> bytes | None:
    """The bytes of ``close_stream``'s final message (None: close only)."""
    if final_message is None:
        return None
    if isinstance(final_message, str):
        body = final_message.encode()
    elif isinstance(final_message, (bytes, bytearray, memoryview)):
        body = bytes(final_message)
    else:
        raise TypeError("final_message must be str or bytes (use json.dumps for objects)")
    if not body:
        raise ValueError("final_message must not be empty (pass None to close only)")
    return body
