"""The request body of a one-shot append or create, expiry headers and the offset a write
answers with (``durable_streams._message``): server-free."""

from __future__ import annotations

import datetime as dt

import pytest

from durable_streams import DurableStream, errors
from durable_streams._message import (
    as_bytes,
    create_body,
    encode_message,
    expiry_headers,
    next_offset,
)
from durable_streams._response import Response

JSON = "application/json"
SECRET_URL = "http://alice:hunter2@127.0.0.1:9/v1/stream/s?token=sekrit"


def test_byte_mode_bodies_are_the_bytes() -> None:
    assert encode_message(b"a\x00b", "data", content_type="text/plain", url="http://h/s") \
        == b"a\x00b"
    assert encode_message("é", "data", content_type="application/octet-stream",
                          url="http://h/s") == "é".encode()
    assert as_bytes(bytearray(b"xy"), "data") == b"xy"
    with pytest.raises(TypeError, match="data must be str or bytes"):
        as_bytes(3, "data")
    with pytest.raises(ValueError, match="lone surrogate"):
        as_bytes("\ud800", "data")


def test_json_mode_wraps_one_value_and_refuses_several() -> None:
    assert encode_message('{"a": 1}', "data", content_type=JSON, url="http://h/s") \
        == b'[{"a": 1}]'
    assert encode_message({"a": 1}, "data", content_type=JSON, url="http://h/s") \
        == b'[{"a":1}]'
    assert encode_message("  ", "data", content_type=JSON, url="http://h/s") == b""
    with pytest.raises(ValueError, match="not one valid JSON value"):
        encode_message("1,2", "data", content_type=JSON, url="http://h/s")


def test_a_refused_message_names_the_stream_without_its_secrets() -> None:
    with pytest.raises(ValueError) as caught:
        encode_message("1,2", "data", content_type=JSON, url=SECRET_URL)
    text = str(caught.value)
    assert "127.0.0.1:9/v1/stream/s" in text
    assert "hunter2" not in text and "sekrit" not in text
    handle = DurableStream(SECRET_URL, content_type=JSON)  # the same through the handle
    try:
        with pytest.raises(ValueError) as caught:
            handle.append("[1] [2]")
        assert "hunter2" not in str(caught.value) and "sekrit" not in str(caught.value)
    finally:
        handle.close()


def test_create_body_serialises_only_non_text_in_json_mode() -> None:
    assert create_body(None, JSON) is None
    assert create_body([1, 2], JSON) == b"[1,2]"
    assert create_body("[1,2]", JSON) == b"[1,2]"
    assert create_body("x", "text/plain") == b"x"
    with pytest.raises(TypeError):
        create_body([1], "text/plain")


def test_expiry_headers() -> None:
    assert expiry_headers(None, None) == {}
    assert expiry_headers(60, None) == {"Stream-TTL": "60"}
    when = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    assert expiry_headers(None, when) == {"Stream-Expires-At": when.isoformat()}
    with pytest.raises(ValueError, match="not both"):
        expiry_headers(60, when)
    with pytest.raises(ValueError, match=">= 0"):
        expiry_headers(-1, None)


def test_next_offset_is_required_and_stripped() -> None:
    ok = Response.from_bytes(204, {"Stream-Next-Offset": " 12_34 "}, b"", "http://h/s")
    assert next_offset(ok, "append", "http://h/s") == "12_34"
    missing = Response.from_bytes(204, {}, b"", SECRET_URL)
    with pytest.raises(errors.DurableStreamError) as caught:
        next_offset(missing, "append", SECRET_URL)
    assert caught.value.code == "PROTOCOL_ERROR" and caught.value.status == 204
    assert "without a Stream-Next-Offset" in str(caught.value)
    assert "hunter2" not in str(caught.value) and "sekrit" not in str(caught.value)
    assert caught.value.url == SECRET_URL  # the attribute keeps the URL, as every error
