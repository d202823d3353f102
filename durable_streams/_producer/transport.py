"""The one object through which a producer talks HTTP.

Every request a producer makes goes through :class:`Transport`: the batch POSTs, the
closing POST, the HEAD that learns the content type and the stream's tail, and the read
that looks for an in-doubt batch. None of its methods is called with the producer lock
held. Answers leave this module as :class:`~.outcome.Outcome` values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import requests

from .. import _protocol as P
from .. import errors
from .._http import (
    NO_RETRY,
    HeadersLike,
    HttpClient,
    ParamsLike,
    RetryPolicy,
    TimeoutLike,
    merge_headers,
    resolve,
)
from .._json import check_json_text
from .._redact import redact_url
from .._response import Response
from ..stream import DurableStream
from .outcome import Outcome, classify, client_error, client_failure, transport_failure

log = logging.getLogger("durable_streams.producer")


class MarkedBody:
    """A request body that reports when its last byte has been handed to the socket.

    ``__len__`` makes the client send ``Content-Length`` (no chunked framing), so once the
    iterator is exhausted the whole request has been written.
    """

    __slots__ = ("body", "on_written", "written")

    def __init__(self, body: bytes, on_written: Callable[[], None]) -> None:
        self.body = body
        self.on_written = on_written
        #: the last byte was handed to the socket: the request may reach the server
        self.written = False

    def __len__(self) -> int:
        return len(self.body)

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        self.written = True
        self.on_written()


class Transport:
    def __init__(self, url: str, *, producer_id: str, stream_headers: HeadersLike,
                 headers: HeadersLike, params: ParamsLike, content_type: str | None,
                 session: requests.Session | None, retry: RetryPolicy,
                 timeout: TimeoutLike, pool_size: int, max_batch_bytes: int = 0) -> None:
        self.url = url
        self.max_batch_bytes = max_batch_bytes  # (for the advice of a 413)
        self.where = redact_url(url)
        self.producer_id = producer_id
        self.stream_headers = stream_headers
        self.headers = headers
        self.params = params
        self.retry = retry
        self.timeout = timeout
        self.client = HttpClient(session, pool_size=pool_size, timeout=timeout)
        #: the stream's content type (learned with a HEAD when not given)
        self.content_type = content_type
        self.json_mode: bool | None = P.is_json(content_type) if content_type else None

    def close(self) -> None:
        self.client.close()

    # -- POST ------------------------------------------------------------------------------
    def _post(self, body: bytes | MarkedBody | None, extra: dict[str, str], operation: str
              ) -> Response:
        user = merge_headers(resolve(self.stream_headers), resolve(self.headers))
        headers = merge_headers(
            {k: v for k, v in user.items() if k.lower() not in P.PROTECTED_PRODUCER_HEADERS},
            extra,
        )
        query = sorted(resolve(self.params).items())
        return self.client.send("POST", self.url, operation=operation, headers=headers,
                                params=query, data=body, timeout=self.timeout)

    def _producer_headers(self, epoch: int, seq: int) -> dict[str, str]:
        return {
            P.PRODUCER_ID: self.producer_id,
            P.PRODUCER_EPOCH: str(epoch),
            P.PRODUCER_SEQ: str(seq),
        }

    def _outcome(self, response: Response, seq: int, operation: str,
                 nbytes: int = 0) -> Outcome:
        return classify(
            response.status_code, response.headers, seq, self.retry.is_retryable_status,
            lambda: self._error(response, operation, nbytes), url=self.url, where=self.where)

    def _error(self, response: Response, operation: str, nbytes: int
               ) -> errors.DurableStreamError:
        """The error for a refused POST, with the server's words escaped and truncated
        (never raw bytes) and the meaning of 410 and 413 for a producer."""
        status = response.status_code
        words = server_words(response)
        detail = f"; the server said: {words}" if words else ""
        kwargs: dict[str, object] = {"status": status, "url": self.url,
                                     "headers": response.headers, "body": words}
        if status == 413:
            size = f"a {nbytes}-byte batch" if nbytes else "the request"
            return errors.DurableStreamError(
                f"payload too large: {self.where} refused {size} (413){detail}; lower "
                f"max_batch_bytes (now {self.max_batch_bytes}) to what the server and any "
                "proxy in front of it accept", code="PAYLOAD_TOO_LARGE",
                **kwargs)  # type: ignore[arg-type]
        if status == 410:
            return gone_error(self.where, operation, **kwargs)
        return P.error_for_response(status, response.headers, words, url=self.url,
                                    operation=operation)

    def send_batch(self, body: bytes, epoch: int, seq: int,
                   on_written: Callable[[], None]) -> Outcome:
        """POST one batch with its producer headers; never raises for HTTP trouble."""
        extra = {P.CONTENT_TYPE: self.content_type or P.DEFAULT_CONTENT_TYPE}
        extra.update(self._producer_headers(epoch, seq))
        marked = MarkedBody(body, on_written)
        try:
            response = self._post(marked, extra, "append")
            return self._outcome(response, seq, "append", len(body))
        except errors.TransportError as exc:
            return transport_failure(exc)
        except Exception as exc:  # the application's hook or callable: this batch only
            log.warning("producer: a request to %s raised %s", self.where, type(exc).__name__)
            # Once the body was written the request may have been stored.
            return client_failure(exc, where=self.where, url=self.url, sent=marked.written)

    def send_close(self, body: bytes | None, epoch: int, seq: int) -> Outcome:
        """POST ``Stream-Closed: true`` (with the final message, if any)."""
        extra = self._producer_headers(epoch, seq)
        extra[P.STREAM_CLOSED] = "true"
        if body is not None:
            extra[P.CONTENT_TYPE] = self.learn_content_type()
        try:
            response = self._post(body, extra, "close")
            return self._outcome(response, seq, "close")
        except errors.TransportError as exc:
            return transport_failure(exc)
        except Exception as exc:  # the application's hook or callable
            # (no MarkedBody here: whether it was sent is unknown, so it may be stored)
            return client_failure(exc, where=self.where, url=self.url, sent=True)

    # -- HEAD and reads ----------------------------------------------------------------------
    def head(self, *, retry: bool) -> str:
        """The stream's tail offset (one HEAD; with ``retry``, the retry policy applies).

        Also learns the stream's content type if it was not known. Raises the mapped error.
        """
        handle = DurableStream(self.url, headers=self.stream_headers, params=self.params,
                               session=self.client.session,
                               retry=self.retry if retry else NO_RETRY, timeout=self.timeout)
        try:
            offset = handle.head().offset
        except errors.DurableStreamError as exc:
            if exc.status == 410:
                raise gone_error(self.where, "head", status=410, url=self.url,
                                 headers=exc.headers, body=exc.body) from exc
            raise
        except Exception as exc:  # the application's hook or callable: retried later
            raise client_error(exc, where=self.where, url=self.url) from exc
        finally:
            handle.close()
        if not self.content_type:
            self.content_type = handle.content_type or P.DEFAULT_CONTENT_TYPE
        if self.json_mode is None:
            self.json_mode = P.is_json(self.content_type)
        return offset

    def stream_closed(self) -> bool | None:
        """Is the stream closed? (One HEAD with the retry policy; None if it failed.)"""
        handle = DurableStream(self.url, headers=self.stream_headers, params=self.params,
                               session=self.client.session, retry=self.retry,
                               timeout=self.timeout)
        try:
            return handle.head().closed
        except Exception as exc:  # a mapped error, or the application's hook
            log.debug("producer: HEAD of %s after a close failed: %s", self.where, exc)
            return None
        finally:
            handle.close()

    def learn_content_type(self) -> str:
        """The stream's content type, with a HEAD the first time if it was not given."""
        if not self.content_type:
            self.head(retry=True)
        elif self.json_mode is None:
            self.json_mode = P.is_json(self.content_type)
        return self.content_type or P.DEFAULT_CONTENT_TYPE

    def final_body(self, body: bytes, *, validate: bool) -> bytes:
        """The closing POST's body for a final message (a one-item array in JSON mode)."""
        self.learn_content_type()
        if not self.json_mode:
            return body
        if validate:
            try:
                check_json_text(body)
            except ValueError as exc:
                raise ValueError(f"final_message is not valid JSON: {exc}") from None
        return b"[" + body + b"]"

    def read_from(self, offset: str) -> bytes:
        """Everything in the stream from ``offset`` to its tail now."""
        from ..reading import stream as read_stream

        try:
            with read_stream(self.url, offset=offset, headers=self.stream_headers,
                             params=self.params, content_type=self.content_type,
                             retry=self.retry, _client=self.client) as res:
                return res.read_bytes()
        except errors.DurableStreamError:
            raise
        except Exception as exc:  # the application's hook or callable
            raise client_error(exc, where=self.where, url=self.url) from exc


def server_words(response: Response, limit: int = 200) -> str:
    """What the server said in its body (read up to the client's error-body cap), fit for a
    message: see :func:`durable_streams._protocol.server_words`."""
    try:
        raw = response.content[:limit * 4] if response.content else b""
    except Exception:  # pragma: no cover - body already consumed or broken
        return ""
    return P.server_words(raw.decode("utf-8", errors="backslashreplace"), limit)


def gone_error(where: str, operation: str, **kwargs: object) -> errors.RetentionGoneError:
    """410 Gone for a producer: the stream no longer takes appends (PROTOCOL.md §5.2: a
    soft-deleted stream, deleted while forks still use its data, answers 410)."""
    words = kwargs.get("body")
    detail = f"; the server said: {words}" if words else ""
    return errors.RetentionGoneError(
        f"{operation} failed: {where} is gone (410){detail}: the stream was deleted and no "
        "longer accepts appends (a stream deleted while forks still use it answers 410 "
        "until every fork is deleted); these messages were not stored",
        code="GONE", **kwargs)  # type: ignore[arg-type]


def contains_batch(data: bytes, body: bytes, messages: list[bytes], json_mode: bool
                   ) -> bool | None:
    """Is this batch's data in ``data`` (read from the stream)? None: cannot tell."""
    if not json_mode:
        return body in data
    try:
        stored = P.load_json(data) if data else []
        ours = [P.load_json(m) for m in messages]
    except (ValueError, RecursionError):  # deep nesting: cannot tell (reported in doubt)
        return None
    if not isinstance(stored, list):
        return None
    n = len(ours)
    return any(stored[i:i + n] == ours for i in range(len(stored) - n + 1))
