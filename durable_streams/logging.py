"""A :mod:`logging` handler that ships every record to a durable stream.

Each record becomes one JSON object (see :meth:`DurableStreamHandler.record_to_dict`), sent
through an :class:`~durable_streams.IdempotentProducer`: ``emit()`` only puts the record in
the producer's buffer, background threads batch and send it, retries are deduplicated by the
server. ``close()`` flushes; :func:`logging.shutdown` calls it at interpreter exit.

Works with :func:`logging.config.dictConfig`::

    logging.config.dictConfig({
        "version": 1,
        "handlers": {
            "stream": {
                "class": "durable_streams.logging.DurableStreamHandler",
                "url": "https://streams.example.com/v1/stream/app-logs",
                "producer_id": "web-1",
                "level": "INFO",
            },
        },
        "root": {"handlers": ["stream"], "level": "INFO"},
    })

(This module is ``durable_streams.logging``; it imports the standard library's ``logging``
with an absolute import, so the two never shadow each other.)
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
import threading
import uuid
from typing import Any

from . import _protocol as P
from . import errors
from ._redact import redact_text, redact_url
from .producer import IdempotentProducer
from .stream import DurableStream

__all__ = ["DurableStreamHandler"]

#: Attributes every LogRecord has; anything else in ``record.__dict__`` came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}

_LIBRARY_LOGGER = "durable_streams"


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str, allow_nan=False, ensure_ascii=False,
                      separators=(",", ":"))


def _json_safe(value: Any) -> Any:
    """``value`` if it serialises (non-JSON types become ``str``), else its ``repr``."""
    try:
        _dumps(value)
    except (TypeError, ValueError, RecursionError):
        try:
            return repr(value)
        except Exception:  # a broken __repr__ must not lose the record
            return f"<unrepresentable {type(value).__name__}>"
    return value


class DurableStreamHandler(logging.Handler):
    """Ship log records, one JSON object each, to a durable stream.

    Args:
        url: the stream URL, or a :class:`~durable_streams.DurableStream` handle (its
            headers, params, retry policy and session are used).
        producer_id: the writer id. Reusing the same id after a restart is fine: the
            producer claims a new epoch (``auto_claim=True`` unless you pass
            ``auto_claim=False``). Default: ``log-<hostname>-<pid>-<random>``.
        create: create the stream first (JSON, or ``content_type``) if it does not exist.
        content_type: with ``create`` (or alone, which implies ``create``), the content type
            to create the stream with (default ``application/json``). A JSON stream stores
            one message per record; any other stream gets one JSON line (``...\\n``) per
            record.
        level: the handler's level.
        close_timeout: seconds ``flush()``/``close()`` wait for delivery (default 10).
        **producer_options: passed to :class:`~durable_streams.IdempotentProducer`
            (``linger_ms``, ``max_buffer_bytes``, ``headers``, ``session``...). By default
            the handler uses ``max_block_ms=0`` (a full buffer drops the record and says so
            on stderr, rather than blocking the logging thread) and ``flush_at_exit=False``
            (:func:`logging.shutdown` closes the handler at exit instead).

    The constructor checks the stream with one ``HEAD`` (or creates it), so a wrong URL
    fails at configuration time. ``emit()`` never touches the network.

    Records of the ``durable_streams`` loggers, records emitted on this handler's own
    producer threads (e.g. ``urllib3`` debug lines about its requests) and records emitted
    while this handler is emitting on the same thread are dropped, so that shipping logs
    never feeds itself.

    After ``os.fork()`` (gunicorn ``--preload``, multiprocessing) the child process gets a
    fresh producer on its first record, with the id ``<producer_id>-<child pid>``: the
    parent's buffer and sequence numbers stay with the parent.
    """

    def __init__(
        self,
        url: str | DurableStream,
        producer_id: str | None = None,
        *,
        create: bool = False,
        content_type: str | None = None,
        level: int | str = logging.NOTSET,
        close_timeout: float = 10.0,
        **producer_options: Any,
    ) -> None:
        super().__init__(level)
        if producer_id is None:
            producer_id = f"log-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if not isinstance(producer_id, str) or not producer_id.strip():
            raise ValueError(f"producer_id must be a non-empty string, got {producer_id!r}")
        self.producer_id = producer_id
        self.close_timeout = float(close_timeout)
        options: dict[str, Any] = dict(producer_options)
        options.setdefault("auto_claim", True)
        options.setdefault("max_block_ms", 0)
        options.setdefault("flush_at_exit", False)
        self._options = options
        self._given_handle = url if isinstance(url, DurableStream) else None

        if isinstance(url, DurableStream):
            handle = url
            owns_handle = False
        elif isinstance(url, str):
            handle = None
            owns_handle = True
        else:
            raise TypeError(f"url must be a URL string or a DurableStream, got {type(url)!r}")

        if create or content_type is not None:
            target = handle.url if handle is not None else str(url)
            created = DurableStream.create(
                target,
                content_type=content_type or "application/json",
                headers=handle.headers if handle is not None else options.get("headers"),
                params=handle.params if handle is not None else None,
                session=options.get("session"),
            )
            created.close()
            stream_type = created.content_type
        else:
            probe = handle if handle is not None else DurableStream(
                str(url), headers=options.get("headers"), session=options.get("session"))
            try:
                stream_type = probe.head().content_type
            finally:
                if owns_handle:
                    probe.close()
        self.url = handle.url if handle is not None else str(url)
        self.content_type = stream_type or P.DEFAULT_CONTENT_TYPE
        self._json_mode = P.is_json(self.content_type)

        self._pid = os.getpid()
        self._producer_lock = threading.Lock()
        self._local = threading.local()
        self._producer: IdempotentProducer | None = None
        self._closed = False
        self._dropped = 0
        self._dropping = False
        self._producer = self._new_producer(self.producer_id)

    # -- producer management ----------------------------------------------------------
    def _new_producer(self, producer_id: str) -> IdempotentProducer:
        options = dict(self._options)
        options.setdefault("content_type", self.content_type)
        if self._given_handle is not None and os.getpid() == self._pid:
            target: str | DurableStream = self._given_handle
        elif self._given_handle is not None:
            # After a fork: not the parent's session (its pooled sockets are shared).
            handle = self._given_handle
            target = handle.url
            options.setdefault("headers", handle.headers)
        else:
            target = self.url
        return IdempotentProducer(target, producer_id, **options)

    def _current_producer(self) -> IdempotentProducer:
        producer = self._producer
        if producer is not None and self._pid == os.getpid():
            return producer
        with self._producer_lock:
            if self._pid != os.getpid():
                # Forked: the inherited producer belongs to the parent; start our own.
                self._pid = os.getpid()
                self._producer = self._new_producer(f"{self.producer_id}-{self._pid}")
            if self._producer is None:
                raise errors.ProducerClosedError(
                    f"the log handler for {self.url} is closed", url=self.url)
            return self._producer

    @property
    def producer(self) -> IdempotentProducer | None:
        """The producer currently used by this process (``None`` once closed)."""
        return self._producer if self._pid == os.getpid() else None

    @property
    def dropped(self) -> int:
        """Records dropped because the buffer was full or the producer had failed."""
        return self._dropped

    # -- logging.Handler ----------------------------------------------------------------
    def filter(self, record: logging.LogRecord) -> bool:
        # Runs before Handler.handle() takes the handler lock: records the handler itself
        # causes are dropped here, so a producer thread never waits for that lock.
        if getattr(self._local, "emitting", False):
            return False
        name = record.name
        if name == _LIBRARY_LOGGER or name.startswith(_LIBRARY_LOGGER + "."):
            return False
        # Records logged on the producer's own threads (the HTTP client's debug lines while
        # sending, on_error) must not come back here.
        producer = self._producer
        if producer is not None and producer.owns_current_thread():
            return False
        return super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        local = self._local
        local.emitting = True
        try:
            text = self.format(record)
            data = text if self._json_mode else text + "\n"
            self._current_producer().append(data)
            if self._dropping:
                self._dropping = False
        except (errors.BufferFullError, errors.ProducerError, errors.StreamClosedError) as exc:
            self._dropped += 1
            if not self._dropping:
                self._dropping = True
                self._warn(f"dropping log records for {self.url}: {exc}")
        except RecursionError:  # as logging's own handlers do
            raise
        except Exception:
            self.handleError(record)
        finally:
            local.emitting = False

    def format(self, record: logging.LogRecord) -> str:
        """The record as JSON text (one object)."""
        doc = self.record_to_dict(record)
        try:
            return _dumps(doc)
        except (TypeError, ValueError, RecursionError):
            return _dumps({key: _json_safe(value) for key, value in doc.items()})

    def record_to_dict(self, record: logging.LogRecord) -> dict[str, Any]:
        """The JSON object for one record; override to change the shape.

        Keys: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message`` (the formatted
        message; with a formatter set, the formatter's output), ``module``, ``function``,
        ``line``, ``thread``, ``process``; ``exception`` and ``stack`` when present;
        ``extra``: the fields passed with ``extra=`` (values that are not JSON become
        strings).
        """
        if self.formatter is not None:
            message = self.formatter.format(record)
        else:
            message = record.getMessage()
        doc: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="microseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
            "module": record.module,
            "function": record.funcName,
            "line": record.lineno,
            "thread": record.threadName,
            "process": record.process,
        }
        if record.exc_info and record.exc_info[0] is not None:
            doc["exception"] = record.exc_text or logging.Formatter().formatException(
                record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = record.stack_info
        extra = {key: value for key, value in record.__dict__.items()
                 if key not in _STANDARD_ATTRS and not key.startswith("_")}
        if extra:
            doc["extra"] = {key: _json_safe(value) for key, value in extra.items()}
        return doc

    def flush(self) -> None:
        """Wait (up to ``close_timeout``) until every record so far is acknowledged."""
        producer = self.producer
        if producer is None or producer.closed:
            return
        try:
            producer.flush(timeout=self.close_timeout)
        except (errors.DurableStreamError, TimeoutError) as exc:
            self._warn(f"log records for {self.url} were not delivered: {exc}")

    def close(self) -> None:
        """Flush and close the producer (the stream stays open). Idempotent."""
        with self._producer_lock:
            producer = self._producer if self._pid == os.getpid() else None
            self._producer = None
            already = self._closed
            self._closed = True
        try:
            if producer is not None and not already:
                try:
                    producer.close(timeout=self.close_timeout)
                except (errors.DurableStreamError, TimeoutError) as exc:
                    self._warn(f"log records for {self.url} were not delivered: {exc}")
        finally:
            super().close()

    def _warn(self, message: str) -> None:
        # Not through logging: that could come back here. Like Handler.handleError.
        stream = sys.stderr
        if stream is None:
            return
        try:
            stream.write(f"durable_streams.logging: {redact_text(' '.join(message.split()))}\n")
            stream.flush()
        except (OSError, ValueError):
            pass

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<{type(self).__name__} {redact_url(self.url)} ({level})>"

