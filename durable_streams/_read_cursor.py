"""The read cursor: where a read stands, and how each answer moves it (pure, no HTTP).

PROTOCOL.md §5.6 (catch-up), §5.7 (long-poll), §5.8 (SSE control events), §8 (offsets are
ordered and opaque) and §10 (cursor echo).

A :class:`ReadCursor` holds the offset to resume from, the last ``Stream-Cursor``, the
up-to-date and closed (EOF) flags, and the HTTP status of the last answer it applied. It is
moved by exactly two kinds of input:

- :meth:`ReadCursor.apply_response`: the status, headers and body of a catch-up or long-poll
  response (``Stream-Next-Offset``, ``Stream-Cursor``, ``Stream-Up-To-Date``,
  ``Stream-Closed``);
- :meth:`ReadCursor.apply_control`: an SSE ``control`` event with the ``data`` events
  received before it.

Each returns the :class:`Chunk` to deliver, or ``None`` when there is nothing to deliver (no
data and no up-to-date/EOF notification). It never moves back: an answer whose next offset
is before the current one raises :class:`RetryableRead` and leaves the cursor untouched, so
the caller delivers nothing and asks again after a backoff. Malformed answers raise
:class:`~durable_streams.errors.ParseError` (JSON, SSE) or a ``PROTOCOL_ERROR``
:class:`~durable_streams.errors.DurableStreamError` (a response without
``Stream-Next-Offset``). No HTTP, no threads, no clock: the HTTP side (``_read_session``)
feeds it, and ``tests/unit/test_read_cursor.py`` drives it without a server.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import _json, errors
from . import _protocol as P
from ._redact import redact_url

__all__ = [
    "Chunk",
    "JsonBatch",
    "ReadCursor",
    "RetryableRead",
    "StreamEvent",
    "decode_sse_base64",
    "join_json_arrays",
    "parse_json_array",
]

log = logging.getLogger("durable_streams")


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One chunk of a read: what one server response (or SSE control event) delivered.

    ``data`` is the raw content (for JSON streams: a JSON array text); ``offset`` is the
    offset *after* this chunk, to resume from; ``up_to_date`` means the reader had caught up
    with the stream when the server answered; ``closed`` means EOF; ``cursor`` is the
    server's last ``Stream-Cursor``. ``data`` is empty only for pure up-to-date/EOF
    notifications.
    """

    data: bytes
    offset: str
    up_to_date: bool
    closed: bool
    cursor: str | None = None


@dataclass(frozen=True, slots=True)
class JsonBatch:
    """The messages of one chunk of a JSON stream, with the offset to resume after them."""

    items: list[Any]
    offset: str
    up_to_date: bool
    cursor: str | None
    closed: bool


# Public types: shown (and pickled) under the module users import them from.
StreamEvent.__module__ = "durable_streams.reading"
JsonBatch.__module__ = "durable_streams.reading"


class Chunk(NamedTuple):
    """A chunk to deliver: the event, and for JSON streams its parsed messages."""

    event: StreamEvent
    items: list[Any] | None


class RetryableRead(Exception):
    """A transient failure: back off and ask again (``error`` is raised when retries run out)."""

    def __init__(self, error: errors.DurableStreamError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


def parse_json_array(data: bytes, *, where: str, url: str | None = None) -> list[Any]:
    """Decode a JSON-mode body (§9.1.5): exactly one JSON array. Raise :class:`ParseError`."""
    try:
        value = _json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise errors.ParseError(
            f"{where}: the server sent JSON that does not parse ({exc}); "
            f"first bytes: {data[:120]!r}",
            url=url,
        ) from exc
    if not isinstance(value, list):
        raise errors.ParseError(
            f"{where}: expected a JSON array of messages (PROTOCOL §9.1.5), got "
            f"{type(value).__name__}",
            url=url,
        )
    return value


def join_json_arrays(arrays: list[bytes]) -> bytes:
    """Concatenate the texts of several valid JSON arrays into one array text."""
    if len(arrays) == 1:
        return arrays[0]
    inner = []
    for text in arrays:
        body = text.strip()[1:-1].strip()
        if body:
            inner.append(body)
    return b"[" + b",".join(inner) + b"]"


def decode_sse_base64(text: str, *, where: str = "SSE data", url: str | None = None) -> bytes:
    """Decode base64 SSE data (§5.8): drop CR/LF inserted between lines, then decode strictly."""
    compact = text.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise errors.ParseError(f"{where}: invalid base64 data ({exc})", url=url) from exc


class ReadCursor:
    """The state of one read and the rules that move it (see the module docstring).

    Attributes (read them freely; only the ``apply_*`` methods change them):
    ``offset`` (where to resume; the start offset until an answer was applied), ``cursor``
    (the last ``Stream-Cursor``, echoed on the next request), ``up_to_date``, ``closed``
    (EOF), ``status`` (HTTP status of the last answer applied, ``None`` before any) and
    ``json_mode`` (messages are JSON arrays, §9.1).
    """

    __slots__ = ("url", "shown_url", "offset", "cursor", "up_to_date", "closed", "status",
                 "json_mode")

    def __init__(self, url: str, offset: str, *, json_mode: bool = False) -> None:
        self.url = url
        self.shown_url = redact_url(url)
        self.offset = offset
        self.cursor: str | None = None
        self.up_to_date = False
        self.closed = False
        self.status: int | None = None
        self.json_mode = json_mode

    def where(self) -> str:
        """``read of <url> at offset <offset>``, for messages (the URL redacted)."""
        return f"read of {self.shown_url} at offset {self.offset}"

    def finished(self, stop_when_current: bool) -> bool:
        """True when the read is over: EOF, or caught up and only catching up."""
        return self.closed or (self.up_to_date and stop_when_current)

    def query(self, live: str | None) -> dict[str, str]:
        """The protocol's query parameters for the next request (§5.6-§5.8, §10)."""
        protocol = {"offset": self.offset}
        if live is not None:
            protocol["live"] = live
        if self.cursor:
            protocol["cursor"] = self.cursor
        return protocol

    def check_forward(self, next_offset: str) -> None:
        """Never move back: offsets are ordered (§8), so an answer whose next offset is
        before the one we asked for (seen from a server recovering its on-disk tail after
        a crash) would re-deliver data. Raise :class:`RetryableRead` to ask again."""
        current = self.offset
        if current in (P.OFFSET_BEGINNING, P.OFFSET_NOW) or next_offset >= current:
            return
        raise RetryableRead(errors.DurableStreamError(
            f"{self.where()}: the server answered with next offset {next_offset}, before "
            f"the requested {current}; asking again",
            code="PROTOCOL_ERROR", url=self.url,
        ), None)

    def apply_response(self, status: int, headers: Mapping[str, str], body: bytes
                       ) -> Chunk | None:
        """Apply a 2xx catch-up or long-poll response whose body was read (§5.6, §5.7)."""
        next_offset = headers.get(P.STREAM_NEXT_OFFSET)
        if not next_offset:
            raise errors.DurableStreamError(
                f"{self.where()}: the server answered {status} without a Stream-Next-Offset "
                "header",
                status=status, code="PROTOCOL_ERROR", url=self.url, headers=headers,
            )
        closed = P.header_true(headers.get(P.STREAM_CLOSED))
        up_to_date = closed or P.header_true(headers.get(P.STREAM_UP_TO_DATE))
        items: list[Any] | None = None
        if self.json_mode:
            items = parse_json_array(body, where=self.where(), url=self.url) if body else []
        self.check_forward(next_offset)
        if not body and not up_to_date and next_offset == self.offset:
            # No data, no progress and no up-to-date flag: asking again would loop forever.
            log.debug("%s: empty response without progress; treating as up to date",
                      self.where())
            up_to_date = True
        self.offset = next_offset
        self.cursor = headers.get(P.STREAM_CURSOR) or self.cursor
        self.up_to_date = up_to_date
        self.closed = closed
        self.status = status
        return self._chunk(body, items)

    def apply_control(self, text: str, parts: list[str], base64_data: bool, *,
                      status: int = 200) -> Chunk | None:
        """Apply an SSE ``control`` event and the ``data`` events before it (§5.8).

        ``parts`` are the data events' texts (base64 when ``base64_data``); ``status`` is
        that of the SSE response carrying them.
        """
        where = self.where()
        try:
            control = _json.loads(text)
        except ValueError as exc:
            raise errors.ParseError(
                f"{where}: SSE control event is not JSON ({exc}): {text[:200]!r}", url=self.url
            ) from exc
        if not isinstance(control, dict):
            raise errors.ParseError(
                f"{where}: SSE control event is not a JSON object: {text[:200]!r}",
                url=self.url,
            )
        next_offset = control.get("streamNextOffset")
        if not isinstance(next_offset, str) or not next_offset:
            raise errors.ParseError(
                f"{where}: SSE control event without streamNextOffset: {text[:200]!r}",
                url=self.url,
            )
        pieces: list[bytes] = []
        for part in parts:
            if base64_data:
                pieces.append(decode_sse_base64(part, where=where, url=self.url))
            else:
                pieces.append(part.encode("utf-8"))
        items: list[Any] | None = None
        if self.json_mode:
            items = []
            arrays = []
            for piece in pieces:
                if piece.strip():
                    items.extend(parse_json_array(piece, where=where, url=self.url))
                    arrays.append(piece)
            data = join_json_arrays(arrays) if arrays else b""
        else:
            data = b"".join(pieces)
        self.check_forward(next_offset)
        closed = control.get("streamClosed") is True
        cursor = control.get("streamCursor")
        self.offset = next_offset
        if isinstance(cursor, str) and cursor:
            self.cursor = cursor
        self.up_to_date = closed or control.get("upToDate") is True
        self.closed = closed
        self.status = status
        return self._chunk(data, items)

    def _chunk(self, data: bytes, items: list[Any] | None) -> Chunk | None:
        empty = not items if items is not None else not data
        if empty:
            if not (self.up_to_date or self.closed):
                return None
            data = b""
        event = StreamEvent(data, self.offset, self.up_to_date, self.closed, self.cursor)
        return Chunk(event, items)
