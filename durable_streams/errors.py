"""Every exception the library raises, in one place.

All of them derive from :class:`DurableStreamError`, which carries the HTTP ``status`` (or
``None`` when no response was received), a stable ``code`` string, and the stream ``url``.
Argument mistakes are reported with the built-in ``ValueError`` / ``TypeError`` instead,
before any request is sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._redact import redact_text

__all__ = [
    "BadRequestError",
    "BufferFullError",
    "ConflictError",
    "ContentTypeMismatchError",
    "DeliveryError",
    "DurableStreamError",
    "FencedError",
    "ForbiddenError",
    "ForkError",
    "InvalidOffsetError",
    "JournalError",
    "ParseError",
    "PayloadTooLargeError",
    "ProducerClosedError",
    "ProducerError",
    "ProducerForkedError",
    "RateLimitedError",
    "ResponseTooLargeError",
    "RetentionGoneError",
    "SeqConflictError",
    "SequenceGapError",
    "ServerError",
    "StaleEpochError",
    "StreamClosedError",
    "StreamExistsError",
    "StreamNotFoundError",
    "StreamSoftDeletedError",
    "SubscriptionError",
    "SubscriptionExistsError",
    "SubscriptionNotFoundError",
    "TransportError",
    "UnauthorizedError",
    "WebhookSignatureError",
    "WebhookURLRejectedError",
]


class DurableStreamError(Exception):
    """Base class of every error raised by durable_streams.

    Attributes:
        status: HTTP status of the response that caused it, or ``None``.
        code: a stable, machine-readable code (``"NOT_FOUND"``, ``"STREAM_CLOSED"``...).
        url: the stream URL the request was about, when known, exactly as given (it may
            hold credentials: the message, ``str()`` and ``repr()`` show it redacted).
        headers: the response headers, when there was a response.
        body: the response body text (truncated), when there was one.
        undelivered: for producer failures, the messages this failure left undelivered.
        maybe_stored: for producer failures, True when the messages may have been stored
            after all (an attempt got no clear answer): re-appending them may duplicate
            them (the message says so too).
    """

    default_code = "UNEXPECTED_STATUS"
    #: Whether repeating the same request may succeed (transport failures, 5xx, 429):
    #: a property of the class, never of one instance.
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        url: str | None = None,
        headers: Mapping[str, str] | None = None,
        body: str | None = None,
    ) -> None:
        # Secrets never reach the text: URL user-info and query values are masked in the
        # message (and so in str(), repr() and tracebacks); ``url`` keeps the URL as given,
        # for programs, and is not part of the text.
        message = redact_text(message, url=url)
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code
        self.url = url
        self.headers: dict[str, str] = dict(headers) if headers else {}
        self.body = body
        self.undelivered: tuple[bytes, ...] = ()
        self.maybe_stored = False

    def __str__(self) -> str:
        return self.message


class TransportError(DurableStreamError):
    """No usable HTTP response: connection refused or reset, timeout, broken body, or an
    answer that is not HTTP. ``timeout`` is True for timeouts (``code`` ``"TIMEOUT"``);
    ``reached_server`` is False only when the request certainly never reached the server."""

    default_code = "NETWORK_ERROR"
    retryable = True

    def __init__(self, message: str, *, timeout: bool = False, reached_server: bool = True,
                 **kwargs: object) -> None:
        if timeout and kwargs.get("code") is None:
            kwargs["code"] = "TIMEOUT"
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.timeout = timeout
        self.reached_server = reached_server

    def with_note(self, note: str) -> TransportError:
        """A new error of the same kind whose message ends with ``note``."""
        return type(self)(self.message + note, timeout=self.timeout,
                          reached_server=self.reached_server, status=self.status,
                          code=self.code, url=self.url, headers=self.headers, body=self.body)


class ResponseTooLargeError(DurableStreamError):
    """The server sent more than the client's limit allows in one piece (an SSE line or
    event longer than ``max_sse_bytes``): reading stops instead of holding it in memory."""

    default_code = "RESPONSE_TOO_LARGE"


class PayloadTooLargeError(DurableStreamError):
    """413: the server refused the request body as too large; send smaller messages or
    batches (``IdempotentProducer(max_batch_bytes=...)``)."""

    default_code = "PAYLOAD_TOO_LARGE"


class ParseError(DurableStreamError):
    """The server sent a body or an event that does not parse (bad JSON, bad SSE)."""

    default_code = "PARSE_ERROR"


class BadRequestError(DurableStreamError):
    """400: the server rejected the request; ``reason`` is the server's explanation."""

    default_code = "BAD_REQUEST"

    @property
    def reason(self) -> str:
        return (self.body or "").strip()


class InvalidOffsetError(BadRequestError):
    """400 on a read: the offset is malformed or beyond the stream."""

    default_code = "INVALID_OFFSET"


class UnauthorizedError(DurableStreamError):
    """401: credentials are missing or were refused."""

    default_code = "UNAUTHORIZED"


class ForbiddenError(DurableStreamError):
    """403 that is not a producer fencing response."""

    default_code = "FORBIDDEN"


class StreamNotFoundError(DurableStreamError):
    """404: there is no stream at this URL."""

    default_code = "NOT_FOUND"


class ConflictError(DurableStreamError):
    """409 that is not one of the more specific conflicts below."""

    default_code = "CONFLICT"


class StreamExistsError(ConflictError):
    """409 on create: a stream exists at this URL with a different configuration."""

    default_code = "CONFLICT"


class StreamClosedError(ConflictError):
    """409 with ``Stream-Closed: true``: the stream is closed, appends are refused.

    ``final_offset`` is the stream's final (tail) offset when the server sent it.
    """

    default_code = "STREAM_CLOSED"

    def __init__(self, message: str, *, final_offset: str | None = None, **kwargs: object):
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.final_offset = final_offset


class SeqConflictError(ConflictError):
    """409: the ``Stream-Seq`` sent is not greater than the last one the stream accepted."""

    default_code = "SEQUENCE_CONFLICT"


class ContentTypeMismatchError(ConflictError):
    """409: the request's content type differs from the stream's."""

    default_code = "CONTENT_TYPE_MISMATCH"


class RetentionGoneError(DurableStreamError):
    """410: the stream was deleted (soft-deleted) or the offset is before retained data."""

    default_code = "GONE"


class RateLimitedError(DurableStreamError):
    """429: too many requests; ``retry_after`` is the server's hint in seconds, if any."""

    default_code = "RATE_LIMITED"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object):
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class ServerError(DurableStreamError):
    """5xx from the server (after any retries); ``retry_after`` is the server's
    ``Retry-After`` hint in seconds, if it gave one."""

    default_code = "SERVER_ERROR"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object):
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


# -- producer errors ----------------------------------------------------------------------


class ProducerError(DurableStreamError):
    """Base class of errors specific to :class:`~durable_streams.IdempotentProducer`."""

    default_code = "PRODUCER_ERROR"


class StaleEpochError(ProducerError):
    """403: another producer with the same id claimed a newer epoch; this one is fenced.

    ``current_epoch`` is the server's epoch. Once fenced, the producer accepts nothing more.
    """

    default_code = "STALE_EPOCH"

    def __init__(self, message: str, *, current_epoch: int | None = None, **kwargs: object):
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.current_epoch = current_epoch


class SequenceGapError(ProducerError):
    """409 with ``Producer-Expected-Seq`` that this producer cannot explain or repair."""

    default_code = "SEQUENCE_GAP"

    def __init__(
        self,
        message: str,
        *,
        expected_seq: int | None = None,
        received_seq: int | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.expected_seq = expected_seq
        self.received_seq = received_seq


class ProducerClosedError(ProducerError):
    """The producer was closed (or failed for good); it accepts no more messages."""

    default_code = "ALREADY_CLOSED"


class ProducerForkedError(ProducerError):
    """The producer was created in a parent process and used after ``os.fork()``."""

    default_code = "FORKED"


class BufferFullError(ProducerError):
    """``append`` waited ``max_block_ms`` for buffer space and none was freed."""

    default_code = "BUFFER_FULL"


class JournalError(ProducerError):
    """The producer's journal (``journal=``) cannot be used: locked by another producer,
    made for another stream or producer id, corrupt, or not writable (missing, read-only,
    full disk). ``path`` names the journal file or directory, ``offset`` the place in a
    corrupt file (else ``None``)."""

    default_code = "JOURNAL_ERROR"

    def __init__(self, message: str, *, path: str = "", offset: int | None = None,
                 **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.path = path
        self.offset = offset


class DeliveryError(ProducerError):
    """Raised by ``flush()``/``close()``: some messages were not delivered.

    ``errors`` lists each failure (as also given to ``on_error``); ``undelivered`` holds
    every message that was not delivered, in the order they were appended. The first
    failure is also the ``__cause__``.
    """

    default_code = "DELIVERY_FAILED"

    def __init__(
        self,
        message: str,
        *,
        errors: Sequence[DurableStreamError],
        **kwargs: object,
    ) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.errors: list[DurableStreamError] = list(errors)
        self.undelivered = tuple(m for err in self.errors for m in err.undelivered)
        if self.errors:
            self.__cause__ = self.errors[0]
            if self.status is None:
                self.status = self.errors[0].status


# -- forks (PROTOCOL §4.2) ------------------------------------------------------------------


class ForkError(BadRequestError):
    """400 on a fork: the fork offset is malformed or beyond the source's tail, or the
    sub-offset was refused. ``reason`` is the server's explanation."""

    default_code = "FORK_REFUSED"


class StreamSoftDeletedError(RetentionGoneError):
    """410 (or 409 on create/fork) for a stream that was deleted while forks of it still
    exist: its data lives on in the forks, but the stream itself accepts nothing more."""

    default_code = "SOFT_DELETED"


# -- subscriptions (PROTOCOL §6, §7) --------------------------------------------------------


class SubscriptionError(DurableStreamError):
    """Base class of errors from the subscription control APIs (PROTOCOL §6-§7)."""

    default_code = "SUBSCRIPTION_ERROR"


class SubscriptionNotFoundError(SubscriptionError):
    """404 ``SUBSCRIPTION_NOT_FOUND``: there is no subscription with this id."""

    default_code = "SUBSCRIPTION_NOT_FOUND"


class SubscriptionExistsError(SubscriptionError, ConflictError):
    """409 ``SUBSCRIPTION_ALREADY_EXISTS``: a subscription with this id exists with another
    configuration. Delete it first, or create it again with the same configuration."""

    default_code = "SUBSCRIPTION_ALREADY_EXISTS"


class FencedError(SubscriptionError, ConflictError):
    """409 ``FENCED``: this claim's lease (or this wake's generation) is no longer current.

    Another worker may hold the work now; stop processing and do not ack again.
    """

    default_code = "FENCED"


class WebhookURLRejectedError(SubscriptionError, BadRequestError):
    """400 ``WEBHOOK_URL_REJECTED``: the server refused the subscription's webhook URL."""

    default_code = "WEBHOOK_URL_REJECTED"


class WebhookSignatureError(DurableStreamError):
    """A webhook delivery failed verification; ``reason`` says why (missing or malformed
    header, unknown key, bad signature, timestamp outside the tolerance)."""

    default_code = "BAD_SIGNATURE"

    def __init__(self, message: str, *, reason: str = "bad_signature", **kwargs: object):
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.reason = reason


# -- the error table: status and server error code -> class ----------------------------------

#: The exception class for each HTTP status the protocol gives a meaning to (PROTOCOL §5).
#: Refinements by context (409 + ``Stream-Closed``, 409 on create, 410 on a read with an
#: offset...) are made by the code building the error; everything else uses this table.
STATUS_CLASSES: dict[int, type[DurableStreamError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: StreamNotFoundError,
    409: ConflictError,
    410: StreamSoftDeletedError,
    413: PayloadTooLargeError,
    429: RateLimitedError,
}

#: The exception class for each machine-readable server error code
#: (``{"error": {"code": ...}}`` bodies of the subscription APIs, PROTOCOL §6-§7).
CODE_CLASSES: dict[str, type[DurableStreamError]] = {
    "SUBSCRIPTION_NOT_FOUND": SubscriptionNotFoundError,
    "SUBSCRIPTION_ALREADY_EXISTS": SubscriptionExistsError,
    "FENCED": FencedError,
    "INVALID_OFFSET": InvalidOffsetError,
    "WEBHOOK_URL_REJECTED": WebhookURLRejectedError,
    "TOKEN_INVALID": UnauthorizedError,
    "TOKEN_EXPIRED": UnauthorizedError,
}


def class_for(status: int | None, code: str | None = None) -> type[DurableStreamError]:
    """The exception class for a response: by server error code first, then by status
    (5xx: :class:`ServerError`; anything else unknown: :class:`DurableStreamError`).
    ``class_for(...).retryable`` says whether the request may be repeated."""
    if code is not None and code in CODE_CLASSES:
        return CODE_CLASSES[code]
    if status is None:
        return TransportError
    if status >= 500:
        return ServerError
    return STATUS_CLASSES.get(status, DurableStreamError)
