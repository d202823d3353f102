"""The producer's public counters snapshot and the checks of its options."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests

from .. import _protocol as P
from .._http import RetryPolicy
from .._renamed import _MISSING, renamed


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
    _validate_int("maxInFlight", "max_in_flight", max_in_flight, minimum=1,
                  maximum=MAX_IN_FLIGHT)
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


#: the default of ``exit_timeout_ms``; one object, so that "not given" can be told from a
#: caller's own 10_000 when the deprecated ``exit_timeout`` is given too
EXIT_TIMEOUT_MS: float = 10_000.0

#: the range of ``max_in_flight``: one request at a time up to 64 pipelined batches (each
#: in flight needs a sender thread; beyond this the server's ordering makes them wait)
MAX_IN_FLIGHT = 64

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def header_value_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as an HTTP header value (None: it can). RFC 9110
    §5.5: visible characters, spaces, tabs and Latin-1; no CR, LF or other controls."""
    for i, ch in enumerate(value):
        code = ord(ch)
        if (code < 0x20 and ch != "\t") or code == 0x7F:
            name = {"\r": "a carriage return (CR)", "\n": "a line break (LF)",
                    "\x00": "a NUL"}.get(ch, f"the control character U+{code:04X}")
            return f"contains {name} at position {i}"
        if code > 0xFF:
            return (f"contains U+{code:04X} at position {i}, which HTTP/1.1 headers cannot "
                    "carry (Latin-1 only)")
    return None


def check_producer_id(producer_id: Any) -> str:
    if not isinstance(producer_id, str) or not producer_id.strip():
        raise ValueError(
            f"producer_id must be a non-empty string identifying this writer, got "
            f"{producer_id!r}")
    problem = header_value_problem(producer_id)
    if problem is not None:
        raise ValueError(
            f"producer_id {producer_id!r} {problem}: it is sent as the Producer-Id header; "
            "use printable ASCII such as 'orders-worker-1'")
    return producer_id


def check_headers(headers: Any) -> None:
    """``headers``: None, a zero-argument callable (checked when called), or a mapping of
    header names to str values (or zero-argument callables, or None to drop one)."""
    if headers is None or callable(headers) and not isinstance(headers, Mapping):
        return
    if not isinstance(headers, Mapping):
        raise TypeError(f"headers must be a mapping of header names to str values (or a "
                        f"callable returning one), got {type(headers).__name__}")
    for name, value in headers.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ValueError(f"headers: {name!r} is not a valid HTTP header name (letters, "
                             "digits and !#$%&'*+-.^_`|~ only)")
        if value is None or callable(value):
            continue
        if not isinstance(value, str):
            raise TypeError(f"headers[{name!r}] must be a str (or a callable returning "
                            f"one), got {type(value).__name__}; convert it with str()")
        problem = header_value_problem(value)
        if problem is not None:  # (the value may be a secret: never shown)
            raise ValueError(f"headers[{name!r}]: the value {problem}; header values "
                             "cannot carry line breaks or control characters")


def _positive_seconds(name: str, value: Any, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        raise ValueError(f"{name} must be a finite number of seconds "
                         f"{'>= 0' if zero else '> 0'}, got {value!r}")
    return float(value)


def check_request_timeout(timeout: Any) -> None:
    """None, seconds (> 0, finite), or a ``(connect, read)`` pair of them."""
    if timeout is None:
        return
    if isinstance(timeout, tuple):
        if len(timeout) != 2:
            raise ValueError(f"request_timeout as a tuple must be (connect, read) seconds, "
                             f"got {timeout!r}")
        _positive_seconds("request_timeout (connect)", timeout[0])
        _positive_seconds("request_timeout (read)", timeout[1])
        return
    _positive_seconds("request_timeout", timeout)


def check_wait(operation: str, timeout: Any) -> float | None:
    """The ``timeout`` of flush()/close()/close_stream(): None (no limit) or seconds >= 0."""
    if timeout is None:
        return None
    return _positive_seconds(f"{operation}(timeout=...)", timeout, zero=True)


def exit_timeout_seconds(exit_timeout_ms: Any, exit_timeout: Any, *, stacklevel: int = 4
                         ) -> float:
    """The exit flush's bound in seconds, from ``exit_timeout_ms`` or its deprecated old
    spelling ``exit_timeout`` (seconds, with a DeprecationWarning at the constructor's
    caller, ``stacklevel`` frames up); both given is a TypeError. Either must be a finite
    number >= 0."""
    old = renamed("IdempotentProducer()", "exit_timeout_ms",
                  _MISSING if exit_timeout_ms is EXIT_TIMEOUT_MS else exit_timeout_ms,
                  "exit_timeout", exit_timeout, stacklevel=stacklevel,
                  note=" (milliseconds: exit_timeout=10 is exit_timeout_ms=10_000)")
    if exit_timeout is not _MISSING:
        return _positive_seconds("exit_timeout", old, zero=True)
    value = exit_timeout_ms
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"exit_timeout_ms must be a number of milliseconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"exit_timeout_ms must be a finite number of milliseconds >= 0, "
                         f"got {value!r}")
    return float(value) / 1000.0


def pass_through_exit_timeout(options: dict[str, Any], where: str, *,
                              stacklevel: int = 4) -> None:
    """For a constructor that passes ``**producer_options`` on to ``IdempotentProducer``
    (maybe later, on another thread): turn the deprecated ``exit_timeout`` (seconds) into
    ``exit_timeout_ms`` now, so the DeprecationWarning points at the constructor's caller
    (``stacklevel`` frames up) and a bad value or both spellings raise at once."""
    if "exit_timeout" not in options:
        return
    old = renamed(where, "exit_timeout_ms",
                  options.get("exit_timeout_ms", _MISSING),
                  "exit_timeout", options.pop("exit_timeout"), stacklevel=stacklevel,
                  note=" (milliseconds: exit_timeout=10 is exit_timeout_ms=10_000)")
    options["exit_timeout_ms"] = _positive_seconds("exit_timeout", old, zero=True) * 1000.0


def check_more(*, retry: Any, content_type: Any, session: Any,
               auto_claim: Any, validate_json: Any, flush_at_exit: Any) -> None:
    """The options that are not numbers of the batching (see :func:`check_options`)."""
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a durable_streams.RetryPolicy (or None for the "
                        f"default), got {type(retry).__name__}")
    if content_type is not None:
        if not isinstance(content_type, str) or not content_type.strip():
            raise TypeError(f"content_type must be a non-empty str such as "
                            f"'application/json', got {content_type!r}")
        problem = header_value_problem(content_type)
        if problem is not None:
            raise ValueError(f"content_type {content_type!r} {problem}")
    if session is not None and not isinstance(session, requests.Session):
        raise TypeError(f"session must be a requests.Session, got {type(session).__name__}")
    for name, flag in (("auto_claim", auto_claim), ("validate_json", validate_json),
                       ("flush_at_exit", flush_at_exit)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")


def check_all(*, producer_id: Any, headers: Any, request_timeout: Any, exit_timeout_ms: Any,
              exit_timeout: Any, retry: Any, content_type: Any, session: Any,
              auto_claim: Any, validate_json: Any, flush_at_exit: Any, epoch: int | None,
              max_batch_bytes: int, max_batch_items: int | None, max_in_flight: int,
              max_buffer_bytes: int, linger_ms: float, max_block_ms: float,
              delivery_timeout_ms: float, on_error: Any) -> tuple[float, int, bool]:
    """Every option of ``IdempotentProducer()``, checked in the order of the checks above:
    (the exit timeout in seconds, the epoch to start with, whether it is fresh)."""
    check_producer_id(producer_id)
    check_headers(headers)
    check_request_timeout(request_timeout)
    # stacklevel: the warning points at the caller of IdempotentProducer() (one more
    # frame than when the constructor calls exit_timeout_seconds itself)
    exit_timeout_s = exit_timeout_seconds(exit_timeout_ms, exit_timeout, stacklevel=5)
    check_more(retry=retry, content_type=content_type, session=session,
               auto_claim=auto_claim, validate_json=validate_json,
               flush_at_exit=flush_at_exit)
    # With auto_claim and no epoch of the caller's, start from the clock: a new run then
    # never reuses the (id, epoch, seq) of an earlier run of the same job, so a
    # "duplicate" answer can only be about our own data. Epochs only need to grow.
    fresh_epoch = epoch is None and bool(auto_claim)
    if epoch is None:
        epoch = int(time.time() * 1000) if auto_claim else 0
    check_options(epoch=epoch, max_batch_bytes=max_batch_bytes,
                  max_batch_items=max_batch_items, max_in_flight=max_in_flight,
                  max_buffer_bytes=max_buffer_bytes, linger_ms=linger_ms,
                  max_block_ms=max_block_ms, delivery_timeout_ms=delivery_timeout_ms,
                  on_error=on_error)
    return exit_timeout_s, epoch, fresh_epoch


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
