"""durable_streams: a sync-first client for the Durable Streams protocol.

- :class:`DurableStream`: blocking create / connect / head / append / close / delete.
- :class:`IdempotentProducer`: non-blocking ``append()``, background batching, exactly-once.
- :func:`stream`: catch-up, long-poll and SSE reads from any offset, with EOF.
- :class:`Subscription`: server-side cursors over many streams; pull-wake claims
  shared by worker processes (:class:`Claim`).
- :class:`WebhookVerifier`, :class:`Wake`: verified webhook wakes (extra ``[webhooks]``).
"""

import logging as _logging

from ._http import RetryPolicy
from ._version import __version__
from ._wake import AckResult
from .errors import (
    BadRequestError,
    BufferFullError,
    ConflictError,
    ContentTypeMismatchError,
    DeliveryError,
    DurableStreamError,
    FencedError,
    ForbiddenError,
    ForkError,
    InvalidOffsetError,
    JournalError,
    ParseError,
    PayloadTooLargeError,
    ProducerClosedError,
    ProducerError,
    ProducerForkedError,
    RateLimitedError,
    ResponseTooLargeError,
    RetentionGoneError,
    SeqConflictError,
    SequenceGapError,
    ServerError,
    StaleEpochError,
    StreamClosedError,
    StreamExistsError,
    StreamNotFoundError,
    StreamSoftDeletedError,
    SubscriptionError,
    SubscriptionExistsError,
    SubscriptionNotFoundError,
    TransportError,
    UnauthorizedError,
    WebhookSignatureError,
    WebhookURLRejectedError,
)
from .producer import IdempotentProducer, ProducerStats
from .reading import JsonBatch, StreamEvent, StreamResponse, stream
from .stream import DurableStream, StreamInfo
from .subscriptions import Claim, ClaimLoop, Subscription, SubscriptionInfo
from .webhooks import Wake, WebhookVerifier

# Diagnostics go to logging.getLogger("durable_streams"); the application decides where.
_logging.getLogger("durable_streams").addHandler(_logging.NullHandler())

__all__ = [
    "AckResult",
    "BadRequestError",
    "BufferFullError",
    "Claim",
    "ClaimLoop",
    "ConflictError",
    "ContentTypeMismatchError",
    "DeliveryError",
    "DurableStream",
    "DurableStreamError",
    "FencedError",
    "ForbiddenError",
    "ForkError",
    "IdempotentProducer",
    "InvalidOffsetError",
    "JournalError",
    "JsonBatch",
    "ParseError",
    "PayloadTooLargeError",
    "ResponseTooLargeError",
    "ProducerClosedError",
    "ProducerError",
    "ProducerForkedError",
    "ProducerStats",
    "RateLimitedError",
    "RetentionGoneError",
    "RetryPolicy",
    "SeqConflictError",
    "SequenceGapError",
    "ServerError",
    "StaleEpochError",
    "StreamClosedError",
    "StreamEvent",
    "StreamExistsError",
    "StreamInfo",
    "StreamNotFoundError",
    "StreamResponse",
    "StreamSoftDeletedError",
    "Subscription",
    "SubscriptionError",
    "SubscriptionExistsError",
    "SubscriptionInfo",
    "SubscriptionNotFoundError",
    "TransportError",
    "UnauthorizedError",
    "Wake",
    "WebhookSignatureError",
    "WebhookURLRejectedError",
    "WebhookVerifier",
    "__version__",
    "stream",
]
