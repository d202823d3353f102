"""An incremental parser for ``text/event-stream`` bodies (Server-Sent Events).

Feed it bytes as they come off the socket, in chunks of any size; it returns the events
completed by each chunk. It follows the event-stream interpretation rules of the WHATWG HTML
standard, which is what PROTOCOL.md §5.8 refers to:

- lines end with CRLF, LF or CR (a CR at the end of one chunk followed by an LF at the start
  of the next is one line ending, not two);
- ``field:value`` with at most one space removed after the colon (``data:[1]`` and
  ``data: [1]`` are the same), a line without a colon is a field with an empty value;
- lines starting with ``:`` are comments;
- several ``data`` lines in one event are joined with ``\\n``;
- a blank line dispatches the event; an event without any ``data`` line is not dispatched;
- a UTF-8 byte order mark at the very start is ignored; bytes are decoded as UTF-8 with
  replacement characters, and a multi-byte character may be split across chunks;
- an unfinished event at the end of the body is dropped.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_SSE_BYTES", "SSELimitExceeded", "SSEParser", "ServerSentEvent"]

_LINE_END = re.compile(r"\r\n|\r|\n")

#: The longest SSE line, and the most data one event may carry, by default (64 MiB).
DEFAULT_MAX_SSE_BYTES = 64 * 1024 * 1024


class SSELimitExceeded(Exception):
    """A line or an event is longer than the parser's limit (the reader turns this into a
    :class:`~durable_streams.errors.ResponseTooLargeError` that names the URL)."""


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event. ``event`` is ``"message"`` when the event had no ``event:`` field."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Turns a byte stream into :class:`ServerSentEvent` objects, incrementally.

    The work is linear in the input: each character is looked at once when its chunk
    arrives (the text of an unfinished line is kept in pieces and joined once, when the
    line ends). ``max_bytes`` bounds the memory a server can make it hold: a line longer
    than that, or an event whose data lines add up to more, raises
    :class:`SSELimitExceeded`. Lengths are counted in decoded characters, which are bytes
    for the ASCII of JSON and base64 data.
    """

    __slots__ = ("_decoder", "_partial", "_partial_len", "_after_cr", "_started", "_event",
                 "_data", "_data_len", "_has_data", "_last_id", "_retry", "_max")

    def __init__(self, max_bytes: int = DEFAULT_MAX_SSE_BYTES) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial: list[str] = []  # pieces of the line being received
        self._partial_len = 0
        self._after_cr = False  # the previous chunk ended with CR: skip one leading LF
        self._started = False  # the BOM check has been done
        self._event = ""
        self._data: list[str] = []
        self._data_len = 0
        self._has_data = False
        self._last_id: str | None = None
        self._retry: int | None = None
        self._max = max_bytes

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume ``chunk`` and return the events it completed (possibly none)."""
        return self._feed_text(self._decoder.decode(chunk))

    def _feed_text(self, text: str) -> list[ServerSentEvent]:
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
                if not text:
                    return []
        if self._after_cr:
            self._after_cr = False
            if text[0] == "\n":
                text = text[1:]
                if not text:
                    return []
        events: list[ServerSentEvent] = []
        start = 0
        for match in _LINE_END.finditer(text):
            piece = text[start:match.start()]
            if self._partial:
                self._partial.append(piece)
                line = "".join(self._partial)
                self._partial = []
                self._partial_len = 0
            else:
                line = piece
            if len(line) > self._max:
                raise SSELimitExceeded(f"an SSE line is longer than {self._max} bytes")
            self._line(line, events)
            start = match.end()
        if start < len(text):
            rest = text[start:]
            self._partial_len += len(rest)
            if self._partial_len > self._max:
                self._partial = []
                raise SSELimitExceeded(f"an SSE line is longer than {self._max} bytes")
            self._partial.append(rest)
        self._after_cr = text[-1] == "\r"
        return events

    def _line(self, line: str, out: list[ServerSentEvent]) -> None:
        if not line:
            self._dispatch(out)
            return
        if line[0] == ":":
            return  # comment
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data_len += len(value) + 1
            if self._data_len > self._max:
                raise SSELimitExceeded(f"an SSE event carries more than {self._max} bytes")
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        # any other field name is ignored

    def _dispatch(self, out: list[ServerSentEvent]) -> None:
        if self._has_data:
            out.append(
                ServerSentEvent(
                    event=self._event or "message",
                    data="\n".join(self._data),
                    id=self._last_id,
                    retry=self._retry,
                )
            )
        self._event = ""
        self._data = []
        self._data_len = 0
        self._has_data = False

    def close(self) -> list[ServerSentEvent]:
        """Signal the end of the body. An unfinished event is dropped, per the SSE rules."""
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._feed_text(tail)
        self._partial = []
        self._partial_len = 0
        self._event = ""
        self._data = []
        self._data_len = 0
        self._has_data = False
        return []
