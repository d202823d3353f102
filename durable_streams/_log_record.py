"""How the log handler turns a :class:`logging.LogRecord` into one JSON object."""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

__all__ = ["JsonRecords"]

#: Attributes every LogRecord has; anything else in ``record.__dict__`` came from ``extra=``.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__
) | {"message", "asctime", "taskName"}


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


class JsonRecords:
    """``format()`` and ``record_to_dict()`` of the log handler (a mixin placed before
    :class:`logging.Handler` in :class:`~durable_streams.logging.DurableStreamHandler`)."""

    formatter: logging.Formatter | None

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
