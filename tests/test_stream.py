"""DurableStream against the real reference server (PROTOCOL.md §5.1–5.5, §8, §9).

Reads are checked with a plain ``requests.get(url + "?offset=...")`` so these tests do not
depend on the reading module. Request shapes that the server cannot echo back (dynamic
headers and params) are checked against a tiny local HTTP server that records what it got.
"""

from __future__ import annotations

import datetime as dt
import http.server
import itertools
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from durable_streams import (
    BadRequestError,
    ContentTypeMismatchError,
    DurableStream,
    DurableStreamError,
    RateLimitedError,
    RetentionGoneError,
    RetryPolicy,
    SeqConflictError,
    StreamClosedError,
    StreamExistsError,
    StreamInfo,
    StreamNotFoundError,
    StreamSoftDeletedError,
)
from durable_streams.testing import ReferenceServer

JSON = "application/json"
FAST = RetryPolicy(max_retries=2, initial_delay_ms=1, max_delay_ms=5)


def read_all(url: str, offset: str = "-1") -> requests.Response:
    """Catch-up read (§5.6) with plain requests; the reading module is not used here."""
    response = requests.get(url, params={"offset": offset}, timeout=10)
    response.raise_for_status()
    return response


def read_json(url: str, offset: str = "-1") -> list[Any]:
    body = read_all(url, offset).json()
    assert isinstance(body, list)
    return body


# -- a tiny local HTTP server that records requests ------------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    server: _CaptureServer

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers),
             "body": body}
        )
        status = {"PUT": 201, "HEAD": 200, "POST": 204, "DELETE": 204}.get(self.command, 200)
        self.send_response(status)
        self.send_header("Content-Type", self.server.content_type)
        self.send_header("Stream-Next-Offset", f"{len(self.server.requests):016d}")
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_HEAD = do_POST = do_DELETE = do_GET = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _CaptureServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Recorder)
        self.requests: list[dict[str, Any]] = []
        self.content_type = JSON

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def capture() -> Iterator[_CaptureServer]:
    srv = _CaptureServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


# -- create (§5.1) ---------------------------------------------------------------------------


def test_create_then_idempotent_create(url: str) -> None:
    """§5.1: 201 for a new stream, 200 for the same config again; `created` tells which."""
    with DurableStream.create(url, content_type=JSON) as first:
        assert first.created is True
        assert first.content_type == JSON
    with DurableStream.create(url, content_type=JSON) as again:
        assert again.created is False
        assert again.content_type == JSON
    assert read_json(url) == []


def test_create_with_different_config_is_stream_exists(url: str) -> None:
    """§5.1: an existing stream with a different config answers 409 -> StreamExistsError."""
    DurableStream.create(url, content_type=JSON).close()
    with pytest.raises(StreamExistsError) as info:
        DurableStream.create(url, content_type="text/plain")
    err = info.value
    assert err.status == 409
    assert err.url == url
    assert url in str(err)
    assert isinstance(err, DurableStreamError)


def test_create_different_ttl_conflicts(url: str) -> None:
    """§5.1: TTL is part of the configuration compared for idempotent create."""
    DurableStream.create(url, ttl_seconds=600).close()
    DurableStream.create(url, ttl_seconds=600).close()  # same config: fine
    with pytest.raises(StreamExistsError):
        DurableStream.create(url, ttl_seconds=900)


def test_create_ttl_visible_via_head(url: str) -> None:
    """§5.1/§5.5: Stream-TTL is sent on create and reported by HEAD."""
    with DurableStream.create(url, content_type="text/plain", ttl_seconds=3600) as handle:
        info = handle.head()
    assert info.ttl_seconds == 3600
    assert info.expires_at is None


@pytest.mark.parametrize(
    "expires",
    [dt.datetime(2099, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc),
     dt.datetime(2099, 1, 2, 5, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
     "2099-01-02T03:04:05Z"],
    ids=["utc-datetime", "offset-datetime", "rfc3339-string"],
)
def test_create_expires_at_visible_via_head(url: str, expires: Any) -> None:
    """§5.1/§5.5: Stream-Expires-At (RFC 3339) is sent on create and reported by HEAD."""
    with DurableStream.create(url, expires_at=expires) as handle:
        info = handle.head()
    assert info.ttl_seconds is None
    assert info.expires_at is not None
    got = dt.datetime.fromisoformat(info.expires_at.replace("Z", "+00:00"))
    assert got == dt.datetime(2099, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"ttl_seconds": 60, "expires_at": "2099-01-01T00:00:00Z"}, ValueError),
        ({"ttl_seconds": -1}, ValueError),
        ({"ttl_seconds": True}, TypeError),
        ({"ttl_seconds": 1.5}, TypeError),
        ({"ttl_seconds": "60"}, TypeError),
        ({"expires_at": dt.datetime(2099, 1, 1)}, ValueError),  # naive
        ({"expires_at": 12345}, TypeError),
        ({"expires_at": "  "}, TypeError),
        ({"content_type": JSON, "body": {1, 2}}, TypeError),  # a set is not JSON
        ({"content_type": JSON, "body": float("nan")}, TypeError),
        ({"content_type": "text/plain", "body": 42}, TypeError),
    ],
    ids=["ttl+expires", "negative-ttl", "bool-ttl", "float-ttl", "str-ttl", "naive-datetime",
         "int-expires", "blank-expires", "set-body", "nan-body", "int-body-bytes-mode"],
)
def test_create_bad_arguments_fail_before_any_request(
    capture: _CaptureServer, kwargs: dict[str, Any], exc: type[Exception]
) -> None:
    """§5.1: bad create arguments raise ValueError/TypeError and send nothing."""
    with pytest.raises(exc):
        DurableStream.create(f"{capture.base}/s", **kwargs)
    assert capture.requests == []


def test_handle_rejects_non_http_url() -> None:
    with pytest.raises(ValueError, match="http"):
        DurableStream("ftp://example.com/stream")


def test_create_closed(url: str) -> None:
    """§5.1 Stream-Closed: created closed; same closed config is 200, open config is 409."""
    with DurableStream.create(url, content_type=JSON, closed=True) as handle:
        assert handle.created is True
        assert handle.head().closed is True
        with pytest.raises(StreamClosedError):
            handle.append({"late": True})
    with DurableStream.create(url, content_type=JSON, closed=True) as again:
        assert again.created is False
    with pytest.raises(StreamExistsError):
        DurableStream.create(url, content_type=JSON)  # closure status mismatch


def test_create_closed_with_body_is_the_whole_stream(url: str) -> None:
    """§5.1: with Stream-Closed the body becomes the complete and final content."""
    DurableStream.create(url, content_type=JSON, closed=True, body={"answer": 42}).close()
    response = read_all(url)
    assert response.json() == [{"answer": 42}]
    assert response.headers.get("Stream-Closed") == "true"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ([{"a": 1}, {"b": 2}], [{"a": 1}, {"b": 2}]),  # a list is flattened (§9.1.2)
        ('[{"a": 1}, {"b": 2}]', [{"a": 1}, {"b": 2}]),  # so is JSON text of a list
        ({"only": "one"}, [{"only": "one"}]),
        ('"text"', ["text"]),
        ([], []),  # §9.1.3: an empty array on PUT creates an empty stream
    ],
    ids=["list", "list-text", "object", "string-text", "empty-list"],
)
def test_create_with_initial_json_body(url: str, body: Any, expected: list[Any]) -> None:
    """§5.1 request body + §9.1.2: the initial body is not wrapped, so a list flattens."""
    with DurableStream.create(url, content_type=JSON, body=body) as handle:
        assert handle.created is True
    assert read_json(url) == expected


@pytest.mark.parametrize("body", [b"raw \x00\xff", bytearray(b"raw \x00\xff"),
                                  memoryview(b"raw \x00\xff")])
def test_create_with_initial_bytes_body(url: str, body: Any) -> None:
    """§5.1: in byte mode the initial body is stored byte for byte."""
    DurableStream.create(url, content_type="application/octet-stream", body=body).close()
    assert read_all(url).content == b"raw \x00\xff"


def test_create_with_invalid_json_body_is_bad_request_with_reason(url: str) -> None:
    """§9.1.4: the server validates JSON; BadRequestError carries the server's reason."""
    with pytest.raises(BadRequestError) as info:
        DurableStream.create(url, content_type=JSON, body="{not json")
    err = info.value
    assert err.status == 400
    assert err.code == "BAD_REQUEST"
    assert "Invalid JSON" in err.reason
    assert "Invalid JSON" in str(err)
    assert url in str(err)
    with pytest.raises(StreamNotFoundError):
        DurableStream.connect(url)


def test_create_learns_default_content_type(url: str) -> None:
    """§5.1: without Content-Type the server defaults (to octet-stream); the handle learns it."""
    with DurableStream.create(url) as handle:
        assert handle.content_type == "application/octet-stream"
        assert handle.head().content_type == "application/octet-stream"


# -- connect and head (§5.5) -----------------------------------------------------------------


def test_connect_existing(url: str) -> None:
    """§5.5: connect sends HEAD and learns the content type."""
    DurableStream.create(url, content_type=JSON).close()
    with DurableStream.connect(url) as handle:
        assert handle.content_type == JSON
        assert handle.created is None


def test_connect_missing_is_not_found_naming_url(url: str) -> None:
    """§5.5: HEAD on a missing stream is 404 -> StreamNotFoundError with the URL."""
    with pytest.raises(StreamNotFoundError) as info:
        DurableStream.connect(url)
    err = info.value
    assert (err.status, err.code, err.url) == (404, "NOT_FOUND", url)
    assert url in str(err)


def test_head_fields(url: str) -> None:
    """§5.5: offset, content type, closed, TTL, ETag and Cache-Control from HEAD."""
    with DurableStream.create(url, content_type=JSON, ttl_seconds=120) as handle:
        info = handle.head()
        assert isinstance(info, StreamInfo)
        assert info.content_type == JSON
        assert info.closed is False
        assert info.ttl_seconds == 120
        assert info.expires_at is None
        assert info.etag
        assert info.cache_control == "no-store"
        offset = handle.append({"n": 1})
        after = handle.head()
        assert after.offset == offset > info.offset
        assert after.etag and after.etag != info.etag
        handle.close_stream()
        assert handle.head().closed is True


def test_head_refreshes_content_type(url: str) -> None:
    DurableStream.create(url, content_type="text/plain").close()
    with DurableStream(url, content_type="application/x-wrong") as handle:
        assert handle.head().content_type == "text/plain"
        assert handle.content_type == "text/plain"


# -- append (§5.2, §8, §9) -------------------------------------------------------------------


def test_append_json_objects_are_serialised(json_stream: DurableStream) -> None:
    """§9.1: in JSON mode Python values are serialised, each call is one message."""
    values: list[Any] = [{"type": "order.created", "order_id": "123"}, 1, 2.5, None, True,
                         [1, 2, 3], [], {"nested": [{"x": [1]}]}, ["a str inside a list"]]
    for value in values:
        json_stream.append(value)
    assert read_json(json_stream.url) == values
    # A bare Python str is JSON *text*, not a JSON string (README decision 4): "two" is rejected.
    with pytest.raises(ValueError):
        json_stream.append("two")


def test_append_json_str_is_json_text(json_stream: DurableStream) -> None:
    """§9.1: in JSON mode a str (or bytes) is JSON text, stored as one message."""
    json_stream.append('{"type": "order.paid", "order_id": "123"}')
    json_stream.append(b'"bytes text"')
    json_stream.append("[1, 2]")  # a list in text is still one message
    json_stream.append(' {"padded": true} ')
    assert read_json(json_stream.url) == [
        {"type": "order.paid", "order_id": "123"}, "bytes text", [1, 2], {"padded": True},
    ]


@pytest.mark.parametrize("text", ["1,2", '{"a":1},{"b":2}', "1],[2", "{not json", "NaN",
                                  b"\xef\xbb\xbf[1,2]", b'["\xff","x"]'])
def test_append_json_text_must_be_one_value(json_stream: DurableStream, text: Any) -> None:
    """§9.1.2: text that is not exactly one JSON value must never become several messages.

    Regression: '1,2' used to be wrapped as '[1,2]' and stored as two messages.
    """
    before = json_stream.head().offset
    with pytest.raises(ValueError, match="JSON"):
        json_stream.append(text)
    assert json_stream.head().offset == before
    assert read_json(json_stream.url) == []


def test_append_list_is_one_message(json_stream: DurableStream) -> None:
    """§9.1.2: the client wraps the value, so one call stores one message even for a list."""
    json_stream.append([{"a": 1}, {"b": 2}])
    json_stream.append([[1, 2], [3, 4]])
    assert read_json(json_stream.url) == [[{"a": 1}, {"b": 2}], [[1, 2], [3, 4]]]


def test_append_non_serialisable_in_json_mode(json_stream: DurableStream) -> None:
    with pytest.raises(TypeError, match="JSON"):
        json_stream.append(object())
    with pytest.raises(TypeError, match="JSON"):
        json_stream.append({"bad": float("inf")})
    assert read_json(json_stream.url) == []


@pytest.mark.parametrize("data", ["héllo ", b"\x00\xffbytes", bytearray(b"ba"),
                                  memoryview(b"mv")])
def test_append_byte_mode_accepts_str_and_bytes_like(url: str, data: Any) -> None:
    """§5.2: byte mode stores the bytes as sent; str is UTF-8."""
    with DurableStream.create(url, content_type="application/octet-stream") as handle:
        handle.append(data)
        handle.append(b"|")
    expected = data.encode() if isinstance(data, str) else bytes(data)
    assert read_all(url).content == expected + b"|"


@pytest.mark.parametrize("data", [1, 1.5, None, {"a": 1}, [b"x"], object()])
def test_append_byte_mode_rejects_other_types(text_stream: DurableStream, data: Any) -> None:
    with pytest.raises(TypeError, match="str or bytes"):
        text_stream.append(data)
    assert read_all(text_stream.url).content == b""


def test_append_returns_increasing_offsets(text_stream: DurableStream) -> None:
    """§5.2/§8: append returns the new tail; offsets are strictly increasing as strings."""
    start = text_stream.head().offset
    offsets = [text_stream.append(f"m{i};") for i in range(12)]
    assert all(isinstance(o, str) and o for o in offsets)
    assert [start, *offsets] == sorted({start, *offsets})  # strictly increasing, no repeats
    assert text_stream.head().offset == offsets[-1]
    # Reading from a returned offset gives exactly what came after it.
    assert read_all(text_stream.url, offsets[9]).content == b"m10;m11;"


def test_append_seq_is_sent_and_regression_conflicts(text_stream: DurableStream) -> None:
    """§5.2 Stream-Seq: strictly increasing, compared bytewise; a regression is 409."""
    text_stream.append("a", seq="001")
    text_stream.append("b", seq="002")
    for stale in ("002", "001", "0010"):  # "0010" < "002" lexicographically
        with pytest.raises(SeqConflictError) as info:
            text_stream.append("x", seq=stale)
        assert info.value.status == 409
        assert info.value.code == "SEQUENCE_CONFLICT"
        assert text_stream.url in str(info.value)
    text_stream.append("c", seq="01")
    assert read_all(text_stream.url).content == b"abc"


def test_content_type_mismatch(url: str) -> None:
    """§5.2: a body with a different content type is 409 -> ContentTypeMismatchError."""
    DurableStream.create(url, content_type=JSON).close()
    with DurableStream(url, content_type="text/plain") as wrong, \
            pytest.raises(ContentTypeMismatchError) as info:
        wrong.append("plain text")
    err = info.value
    assert (err.status, err.code, err.url) == (409, "CONTENT_TYPE_MISMATCH", url)
    assert url in str(err)
    assert read_json(url) == []


def test_handle_without_content_type_learns_it_before_first_append(url: str) -> None:
    """§5.5: a bare handle asks HEAD for the content type, then appends in JSON mode."""
    DurableStream.create(url, content_type=JSON).close()
    with DurableStream(url) as handle:
        assert handle.content_type is None
        handle.append({"learned": True})  # a dict is only accepted in JSON mode
        assert handle.content_type == JSON
    assert read_json(url) == [{"learned": True}]


def test_append_to_missing_stream_names_url(url: str) -> None:
    """§5.2: 404 on append; the message must name the stream."""
    with DurableStream(url, content_type="text/plain") as handle, \
            pytest.raises(StreamNotFoundError) as info:
        handle.append("x")
    assert info.value.status == 404
    assert url in str(info.value)


@pytest.mark.parametrize(("content_type", "data"), [("text/plain", ""), ("text/plain", b""),
                                                     (JSON, ""), (JSON, "   ")])
def test_empty_append_is_bad_request_with_reason(url: str, content_type: str, data: Any) -> None:
    """§5.2 request body: an empty POST without Stream-Closed is 400 (server's reason kept)."""
    with DurableStream.create(url, content_type=content_type) as handle, \
            pytest.raises(BadRequestError) as info:
        handle.append(data)
    err = info.value
    assert err.status == 400
    assert err.reason == "Empty body"
    assert "Empty body" in str(err) and url in str(err)


# -- close_stream (§5.3, §4.1) ---------------------------------------------------------------


def test_close_stream_without_body(text_stream: DurableStream) -> None:
    """§5.3: close-only returns the final offset; it is idempotent."""
    tail = text_stream.append("data")
    final = text_stream.close_stream()
    assert final == tail
    assert text_stream.head().closed is True
    assert text_stream.close_stream() == final  # idempotent close-only
    with pytest.raises(StreamClosedError) as info:
        text_stream.append("late")
    err = info.value
    assert err.final_offset == final
    assert (err.status, err.code, err.url) == (409, "STREAM_CLOSED", text_stream.url)
    assert text_stream.url in str(err)


def test_close_stream_with_final_message(json_stream: DurableStream) -> None:
    """§5.2 Stream-Closed with a body: the final message is appended atomically."""
    json_stream.append({"type": "order.created"})
    final = json_stream.close_stream(final_message='{"type": "done"}')
    assert json_stream.head().offset == final
    response = read_all(json_stream.url)
    assert response.json() == [{"type": "order.created"}, {"type": "done"}]
    assert response.headers.get("Stream-Closed") == "true"
    with pytest.raises(StreamClosedError) as info:
        json_stream.close_stream(final_message={"type": "again"})  # not idempotent with a body
    assert info.value.final_offset == final
    assert json_stream.close_stream() == final  # close-only still fine


def test_close_stream_deprecated_body_still_works(text_stream: DurableStream) -> None:
    """The old spelling ``body=`` warns at the caller, naming ``final_message``, and has the
    same effect: the final message stored and the stream closed (§5.2)."""
    text_stream.append("a")
    with pytest.warns(DeprecationWarning, match="final_message") as record:
        final = text_stream.close_stream(body="z")
    assert [w.filename for w in record] == [__file__]
    response = read_all(text_stream.url)
    assert response.content == b"az"
    assert response.headers.get("Stream-Closed") == "true"
    assert text_stream.head().offset == final


def test_close_stream_object_body_is_one_message(json_stream: DurableStream) -> None:
    json_stream.close_stream(final_message=[1, 2])
    assert read_json(json_stream.url) == [[1, 2]]


def test_handle_close_does_not_end_the_stream(url: str) -> None:
    """README decision 3: leaving a `with` block releases the session, never closes the stream."""
    with DurableStream.create(url, content_type="text/plain") as handle:
        handle.append("x")
    handle.close()  # idempotent
    with DurableStream.connect(url) as again:
        assert again.head().closed is False
        again.append("y")
    assert read_all(url).content == b"xy"


# -- delete (§5.4) and gone (410) ------------------------------------------------------------


def test_delete(url: str) -> None:
    """§5.4: 204, then the stream is gone: HEAD and a second DELETE are 404."""
    handle = DurableStream.create(url, content_type="text/plain")
    handle.append("x")
    handle.delete()
    with pytest.raises(StreamNotFoundError):
        handle.head()
    with pytest.raises(StreamNotFoundError) as info:
        handle.delete()
    assert url in str(info.value)
    handle.close()
    with DurableStream.create(url, content_type="text/plain") as fresh:
        assert fresh.created is True


def test_soft_deleted_stream_is_gone(server: ReferenceServer, url: str) -> None:
    """§5.4 soft-delete: a deleted stream with a live fork answers 410 -> RetentionGoneError."""
    source = DurableStream.create(url, content_type="text/plain", body="abc")
    fork_url = server.stream_url()
    path = url[len(server.url):]
    fork = requests.put(fork_url, headers={"Stream-Forked-From": path,
                                           "Content-Type": "text/plain"}, timeout=10)
    assert fork.status_code == 201
    try:
        source.delete()
        for operation in (source.head, lambda: source.append("x"), source.delete):
            with pytest.raises(RetentionGoneError) as info:
                operation()
            err = info.value
            assert (err.status, err.code, err.url) == (410, "SOFT_DELETED", url)
            assert isinstance(err, StreamSoftDeletedError)
            assert url in str(err) and "still has forks" in str(err)
        with pytest.raises(StreamSoftDeletedError) as created:  # the path cannot be reused yet
            DurableStream.create(url, content_type="text/plain")
        assert created.value.status == 409
    finally:
        source.close()
        requests.delete(fork_url, timeout=10)


# -- every error: status, code, url, message -------------------------------------------------


def test_rate_limited_after_retries(server: ReferenceServer, url: str) -> None:
    """§5.5 429: retried, then RateLimitedError with the server's Retry-After hint."""
    DurableStream.create(url).close()
    server.inject_fault(url, status=429, count=3, method="HEAD")
    with DurableStream(url, retry=FAST) as handle:
        with pytest.raises(RateLimitedError) as info:
            handle.head()
        err = info.value
        assert (err.status, err.code, err.url) == (429, "RATE_LIMITED", url)
        assert url in str(err)
        assert err.retry_after is None
    server.inject_fault(url, status=429, retryAfter=7, method="HEAD")
    with DurableStream(url, retry=RetryPolicy(max_retries=0)) as no_retry, \
            pytest.raises(RateLimitedError) as info:
        no_retry.head()
    assert info.value.retry_after == 7.0


def test_errors_carry_status_code_url(server: ReferenceServer, url: str) -> None:
    """Every mapped error has .status, .code, .url and names the URL in its message."""
    produced: list[DurableStreamError] = []
    DurableStream.create(url, content_type="text/plain").close()
    h = DurableStream(url, content_type="text/plain", retry=RetryPolicy(max_retries=0))
    wrong_type = DurableStream(url, content_type=JSON)

    def seq_regression() -> None:
        h.append("x", seq="b")
        h.append("y", seq="a")

    attempts = [
        lambda: DurableStream.create(url, content_type=JSON),
        seq_regression,
        lambda: wrong_type.append("1"),
        lambda: h.append(""),
        lambda: DurableStream.connect(url + "-missing"),
    ]
    server.inject_fault(url, status=503, method="DELETE")
    attempts.append(h.delete)
    for attempt in attempts:
        with pytest.raises(DurableStreamError) as info:
            attempt()
        produced.append(info.value)
    h.close_stream()
    with pytest.raises(DurableStreamError) as info:
        h.append("z")
    produced.append(info.value)
    h.close()
    wrong_type.close()
    codes = [e.code for e in produced]
    assert codes == ["CONFLICT", "SEQUENCE_CONFLICT", "CONTENT_TYPE_MISMATCH", "BAD_REQUEST",
                     "NOT_FOUND", "SERVER_ERROR", "STREAM_CLOSED"]
    for err in produced:
        assert isinstance(err.status, int) and 400 <= err.status < 600
        assert err.url and err.url.startswith(url)
        assert err.url in str(err)


def test_missing_next_offset_is_an_error_not_empty(capture: _CaptureServer) -> None:
    """§5.2: a success without a usable Stream-Next-Offset raises; append never returns ''."""

    class NoOffset(_Recorder):
        def send_header(self, keyword: str, value: str) -> None:
            if keyword == "Stream-Next-Offset":
                value = ""
            super().send_header(keyword, value)

    capture.RequestHandlerClass = NoOffset
    with DurableStream(f"{capture.base}/s", content_type=JSON) as handle, \
            pytest.raises(DurableStreamError, match="Stream-Next-Offset") as info:
        handle.append({"a": 1})
    assert info.value.code == "PROTOCOL_ERROR"
    assert info.value.url == f"{capture.base}/s"


# -- dynamic headers and params, sessions ----------------------------------------------------


def test_dynamic_headers_and_params_evaluated_per_request(capture: _CaptureServer) -> None:
    """README "DurableStream": header/param callables are evaluated on every request."""
    counter = itertools.count(1)
    param_counter = itertools.count(0)
    tokens: list[str] = []

    def token() -> str:
        tokens.append(f"Bearer t{next(counter)}")
        return tokens[-1]

    url = f"{capture.base}/stream-a"
    with DurableStream.create(
        url, content_type=JSON,
        headers={"Authorization": token, "X-Static": "s", "X-Skip": lambda: None},
        params=lambda: {"tenant": "acme", "n": str(next(param_counter))},
    ) as handle:
        handle.head()
        handle.append({"a": 1})
        handle.close_stream()
        handle.delete()
    seen = capture.requests
    assert [r["method"] for r in seen] == ["PUT", "HEAD", "POST", "POST", "DELETE"]
    assert [r["headers"]["Authorization"] for r in seen] == tokens
    assert len(set(tokens)) == 5
    for i, r in enumerate(seen):
        assert r["headers"]["X-Static"] == "s"
        assert "X-Skip" not in r["headers"]
        assert r["path"] == f"/stream-a?n={i}&tenant=acme"  # sorted keys (§10.1)


def test_protocol_headers_win_over_user_headers(capture: _CaptureServer) -> None:
    """A user header with a protocol name (any case) does not override the protocol's."""
    url = f"{capture.base}/s"
    with DurableStream(url, content_type=JSON,
                       headers={"content-type": "text/evil", "stream-seq": "zzz"}) as handle:
        handle.append({"a": 1}, seq="001")
    headers = {k.lower(): v for k, v in capture.requests[0]["headers"].items()}
    assert headers["content-type"] == JSON
    assert headers["stream-seq"] == "001"
    assert capture.requests[0]["body"] == b'[{"a":1}]'


class _CountingSession(requests.Session):
    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.closed = 0

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.sent += 1
        return super().request(*args, **kwargs)

    def close(self) -> None:
        self.closed += 1
        super().close()


def test_callers_session_is_used_and_never_closed(url: str) -> None:
    """The caller's requests.Session carries every request and is left open."""
    session = _CountingSession()
    session.headers["X-From-Session"] = "1"
    with DurableStream.create(url, content_type=JSON, session=session) as handle:
        handle.append({"a": 1})
        handle.head()
    DurableStream.connect(url, session=session).close()
    with pytest.raises(StreamNotFoundError):
        DurableStream.connect(url + "-missing", session=session)
    assert session.sent == 5
    assert session.closed == 0
    session.close()


def test_owned_session_closed_by_close_and_with(url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A handle-owned session is closed by close() and by leaving the with-block."""
    closed: list[requests.Session] = []
    real_close = requests.Session.close

    def spy(self: requests.Session) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(requests.Session, "close", spy)
    with DurableStream.create(url, content_type=JSON) as handle:
        owned = handle._client.session
        assert owned not in closed
    assert closed.count(owned) == 1
    other = DurableStream(url)
    asked = other._client.session  # made on demand on the default (urllib3) path
    other.head()
    other.close()
    other.close()
    assert closed.count(asked) == 1
    with pytest.raises(StreamNotFoundError):  # a failed connect/create leaves nothing open
        DurableStream.connect(url + "-missing")
    assert len(closed) == 2
    # Closing handles does not close the shared connection pool: others keep working.
    with DurableStream(url) as third:
        assert third.head().content_type == JSON


def test_repr_names_url(url: str) -> None:
    handle = DurableStream(url, content_type=JSON)
    assert url in repr(handle) and JSON in repr(handle)
    handle.close()


def test_data_round_trip_with_json_dumps(json_stream: DurableStream) -> None:
    """§9.1.5: what a JSON append stores is what json.loads reads back."""
    value = {"unicode": "héllo \u2028 ☃", "num": 1.25, "neg": -3, "esc": "\"\\/\n"}
    json_stream.append(value)
    json_stream.append(json.dumps(value))
    assert read_json(json_stream.url) == [value, value]
