"""Classify the answer to one producer POST (or its failure) as an :class:`Outcome`.

A pure function of the status, headers and body (or the transport error): no I/O, no
state. The sequencer decides what each kind means for the batch and the producer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .. import _protocol as P
from .. import errors


class Kind(enum.Enum):
    OK = "ok"  # 200 with Stream-Next-Offset or a Producer-Seq echo: stored
    NOT_DURABLE = "not-durable"  # 200 without either: not a Durable Streams answer
    DUPLICATE = "duplicate"  # 204: the server already has this (id, epoch, seq)
    FENCED = "fenced"  # 403: a newer epoch holds the id
    STREAM_CLOSED = "stream-closed"  # 409 with Stream-Closed: true
    SEQ_GAP = "seq-gap"  # 409 with Producer-Expected-Seq: an earlier seq is missing
    CONFLICT = "conflict"  # any other 409 (e.g. content type): fatal
    BAD_REQUEST = "bad-request"  # 400: this batch is rejected, the seq is not consumed
    TOO_LARGE = "too-large"  # 413
    RETRYABLE = "retryable"  # 429, 5xx, other statuses of the retry policy
    REJECTED = "rejected"  # any other status: fatal for the producer
    TRANSPORT = "transport"  # no answer: connection error or timeout
    CLIENT = "client"  # an exception on our side (a hook or callable of the application)


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    status: int = 0
    offset: str = ""
    #: 403: the server's epoch; 204: None
    epoch: int | None = None
    #: 204: the server's last seq (Producer-Seq); 409: Producer-Received-Seq
    server_seq: int | None = None
    expected_seq: int | None = None
    retry_after: float | None = None
    #: the request may have been stored (5xx from a proxy, lost answer, bogus 200)
    maybe_stored: bool = False
    #: the error to report if this outcome ends the batch (None for OK/DUPLICATE)
    error: errors.DurableStreamError | None = None
    headers: Mapping[str, str] | None = None


def classify(status: int, headers: Mapping[str, str], seq: int | None,
             is_retryable: Callable[[int], bool],
             make_error: Callable[[], errors.DurableStreamError], *, url: str = "",
             where: str = "") -> Outcome:
    """The outcome of an HTTP answer to an append (``seq`` sent) or a close (``seq`` None).

    ``make_error`` builds the error for the answer (called only when one is needed);
    ``where`` is the (redacted) URL for messages, ``url`` the one for ``err.url``.
    """
    if status == 200:
        offset = headers.get(P.STREAM_NEXT_OFFSET)
        if offset is None and (seq is None or headers.get(P.PRODUCER_SEQ) != str(seq)):
            # A captive portal or a misrouted proxy: nothing says the batch was stored.
            # Retrying the same tuple is safe; give up at the delivery deadline.
            return Outcome(Kind.NOT_DURABLE, status, maybe_stored=True, headers=headers,
                           error=errors.TransportError(
                               f"append to {where} got a 200 without Stream-Next-Offset or a "
                               "Producer-Seq echo: not a Durable Streams answer", status=200,
                               code="PROTOCOL_ERROR", url=url))
        return Outcome(Kind.OK, status, offset=offset or "", headers=headers)
    if status == 204:
        return Outcome(Kind.DUPLICATE, status, offset=headers.get(P.STREAM_NEXT_OFFSET, ""),
                       server_seq=P.parse_int_header(headers, P.PRODUCER_SEQ), headers=headers)
    if status == 403:
        return Outcome(Kind.FENCED, status, epoch=P.parse_int_header(headers, P.PRODUCER_EPOCH),
                       error=make_error(), headers=headers)
    if status == 409:
        if P.header_true(headers.get(P.STREAM_CLOSED)):
            return Outcome(Kind.STREAM_CLOSED, status, error=make_error(), headers=headers)
        expected = P.parse_int_header(headers, P.PRODUCER_EXPECTED_SEQ)
        if expected is None:
            return Outcome(Kind.CONFLICT, status, error=make_error(), headers=headers)
        return Outcome(Kind.SEQ_GAP, status, expected_seq=expected,
                       server_seq=P.parse_int_header(headers, P.PRODUCER_RECEIVED_SEQ),
                       error=make_error(), headers=headers)
    if is_retryable(status):
        return Outcome(Kind.RETRYABLE, status, maybe_stored=status >= 500,
                       retry_after=P.parse_retry_after(headers.get(P.RETRY_AFTER)),
                       error=make_error(), headers=headers)
    if status == 400:
        return Outcome(Kind.BAD_REQUEST, status, error=make_error(), headers=headers)
    if status == 413:
        return Outcome(Kind.TOO_LARGE, status, error=make_error(), headers=headers)
    return Outcome(Kind.REJECTED, status, error=make_error(), headers=headers)


def transport_failure(err: errors.DurableStreamError) -> Outcome:
    """The outcome of a request that got no answer (``err`` from the HTTP client)."""
    reached = bool(getattr(err, "reached_server", True))
    return Outcome(Kind.TRANSPORT, maybe_stored=reached, error=err)


def client_failure(exc: Exception, *, where: str, url: str, sent: bool) -> Outcome:
    """The outcome of a send that raised something other than a transport error: an
    exception of the application's session, hook or header callable (or a bug). ``sent``:
    the body was written, so the request may have been stored."""
    return Outcome(Kind.CLIENT, maybe_stored=sent, error=client_error(exc, where=where,
                                                                      url=url))


def client_error(exc: Exception, *, where: str, url: str) -> errors.ProducerError:
    text = " ".join(str(exc).split())[:200]
    return errors.ProducerError(
        f"a request to {where} raised {type(exc).__name__}: {text!r} (raised by the "
        "session, a requests hook or a header callable given to the producer, or a bug); "
        "this batch was not retried, the producer goes on", url=url, code=CLIENT_ERROR)


#: the code of errors raised by the application's own code during a producer's request
CLIENT_ERROR = "CLIENT_ERROR"


def is_transient(err: errors.DurableStreamError) -> bool:
    """Errors worth retrying (of a HEAD or read made on the producer's behalf): those whose
    class says so (``retryable``, see :mod:`durable_streams.errors`), and an exception
    from the application's own code (a hook), which may pass on the next attempt."""
    return type(err).retryable or err.code == CLIENT_ERROR
