"""One HTTP response, whichever transport made it: the library's only response type.

Both transports (urllib3 directly, or a user's ``requests.Session``) hand back a
:class:`Response` wrapping a urllib3 response (``requests`` is built on urllib3, and so are
the mocking libraries ``responses`` and ``requests_mock``). Only public APIs of urllib3 are
used: ``read``, ``read1``, ``close`` and ``shutdown`` (urllib3 >= 2.3).

The body is read at most once, through one of :attr:`content`, :meth:`load`, :meth:`read`
or :meth:`read1`. :meth:`load` with a ``limit`` keeps memory bounded by the client whatever
the server sends: past the limit the rest is not read and the connection is dropped.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ERROR_BODY_LIMIT", "Response"]

#: The most of an error response's body that is read (64 KiB): enough for any server's
#: explanation; a server cannot make an error cost more memory than this.
ERROR_BODY_LIMIT = 64 * 1024
_PIECE = 256 * 1024


def _charset(headers: Mapping[str, str]) -> str:
    content_type = headers.get("Content-Type") or ""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip("\"'")
    return "utf-8"


class _Buffered:
    """A body already in memory, with the part of urllib3's response interface used here."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes,
                 reason: str) -> None:
        self.status, self.headers, self.reason = status, headers, reason
        self._body = io.BytesIO(body)

    def read(self, amt: int | None = None, decode_content: bool = True) -> bytes:
        return self._body.read(amt)

    def read1(self, amt: int = -1, decode_content: bool = True) -> bytes:
        return self._body.read1(amt)

    def close(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class Response:
    """Status, headers and the (lazily read) body of one HTTP exchange.

    ``status_code``, ``headers`` (case-insensitive), ``url`` and ``reason`` are plain
    attributes. ``truncated`` is True when :meth:`load` stopped at its limit.
    """

    __slots__ = ("status_code", "headers", "url", "reason", "truncated", "_raw", "_content",
                 "_on_close")

    def __init__(self, raw: Any, url: str, *, status: int | None = None,
                 headers: Mapping[str, str] | None = None, reason: str | None = None,
                 on_close: Callable[[], None] | None = None) -> None:
        self._raw = raw
        self.status_code: int = raw.status if status is None else status
        self.headers: Mapping[str, str] = raw.headers if headers is None else headers
        self.url = url
        self.reason: str = (raw.reason if reason is None else reason) or ""
        self.truncated = False
        self._content: bytes | None = None
        self._on_close = on_close

    @classmethod
    def from_bytes(cls, status: int, headers: Mapping[str, str], body: bytes, url: str, *,
                   reason: str = "", on_close: Callable[[], None] | None = None) -> Response:
        """A response whose body is already in memory (a transport adapter that read it,
        or a test double)."""
        return cls(_Buffered(status, headers, body, reason), url, on_close=on_close)

    # -- the whole body -------------------------------------------------------------------
    def load(self, limit: int | None = None, deadline: float | None = None) -> bytes:
        """Read the body now: all of it, or at most ``limit`` bytes (then the rest is never
        read and the connection is closed instead of going back to the pool).

        With ``deadline`` (a ``time.monotonic()`` value) a body still arriving then raises
        :class:`TimeoutError`, however slowly the server drips it.
        """
        if self._content is None:
            # No body to wait for (HEAD, 204, Content-Length: 0): one plain read.
            if deadline is None or getattr(self._raw, "length_remaining", None) == 0:
                data = self._raw.read(None if limit is None else limit + 1,
                                      decode_content=True) or b""
            else:
                data = self._read_until(limit, deadline)
            if limit is not None and len(data) > limit:
                data = data[:limit]
                self.truncated = True
                self.close()
            self._content = bytes(data)
        return self._content

    def _read_until(self, limit: int | None, deadline: float) -> bytes:
        pieces: list[bytes] = []
        size = 0
        while limit is None or size <= limit:
            if time.monotonic() > deadline:
                self.close()
                raise TimeoutError("the response body did not arrive in time")
            piece = self._raw.read1(_PIECE, decode_content=True)
            if not piece:
                break
            pieces.append(piece)
            size += len(piece)
        return b"".join(pieces)

    @property
    def content(self) -> bytes:
        """The whole body (read on first use)."""
        return self.load()

    @property
    def text(self) -> str:
        """The body decoded with the charset of ``Content-Type`` (UTF-8 by default);
        undecodable bytes become U+FFFD."""
        data = self.load()
        try:
            return data.decode(_charset(self.headers), "replace")
        except LookupError:  # an unknown charset name from the server
            return data.decode("utf-8", "replace")

    # -- streaming ------------------------------------------------------------------------
    def read(self, amt: int | None = None) -> bytes:
        """Up to ``amt`` bytes of the body (all that is left when ``None``); ``b""`` at the end."""
        data: bytes = self._raw.read(amt, decode_content=True)
        return data or b""

    def read1(self, amt: int) -> bytes:
        """What is available now, at most ``amt`` bytes, waiting only if nothing is;
        ``b""`` at the end."""
        data: bytes = self._raw.read1(amt, decode_content=True)
        return data or b""

    # -- lifecycle ------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Wake a thread blocked reading this body (safe from any thread). The reading thread
        then sees the end of the body or an error, and must close the response."""
        with contextlib.suppress(ValueError, RuntimeError, OSError, AttributeError):
            self._raw.shutdown()

    def close(self) -> None:
        """Release the connection (idempotent): back to the pool when the body was read to
        the end, else closed."""
        with contextlib.suppress(Exception):
            self._raw.close()
        hook, self._on_close = self._on_close, None
        if hook is not None:
            with contextlib.suppress(Exception):
                hook()

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"
