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

__all__ = ["ServerSentEvent", "SSEParser"]

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class ServerSentEvent:
    """One dispatched event. ``event`` is ``"message"`` when the event had no ``event:`` field."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Turns a byte stream into :class:`ServerSentEvent` objects, incrementally."""

    __slots__ = ("_decoder", "_partial", "_after_cr", "_started", "_event", "_data",
                 "_has_data", "_last_id", "_retry")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._partial = ""  # text of the line being received
        self._after_cr = False  # the previous chunk ended with CR: skip one leading LF
        self._started = False  # the BOM check has been done
        self._event = ""
        self._data: list[str] = []
        self._has_data = False
        self._last_id: str | None = None
        self._retry: int | None = None

    @property
    def last_event_id(self) -> str | None:
        """The last ``id:`` seen, as a reconnecting client would send in ``Last-Event-ID``."""
        return self._last_id

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        """Consume ``chunk`` and return the events it completed (possibly none)."""
        text = self._decoder.decode(chunk)
        return self._feed_text(text)

    def feed_text(self, text: str) -> list[ServerSentEvent]:
        """Like :meth:`feed` for text that is already decoded."""
        return self._feed_text(text)

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
            if text.startswith("\n"):
                text = text[1:]
                if not text:
                    return []
        buffer = self._partial + text if self._partial else text
        lines = _LINE_END.split(buffer)
        self._partial = lines.pop()
        self._after_cr = buffer.endswith("\r")
        events: list[ServerSentEvent] = []
        for line in lines:
            self._line(line, events)
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
        self._has_data = False

    def close(self) -> list[ServerSentEvent]:
        """Signal the end of the body. An unfinished event is dropped, per the SSE rules."""
        tail = self._decoder.decode(b"", final=True)
        if tail:
            self._feed_text(tail)
        self._partial = ""
        self._event = ""
        self._data = []
        self._has_data = False
        return []
