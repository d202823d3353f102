"""Redaction and failure wording, without a server (issue 11 §2)."""

from __future__ import annotations

import http.client
import logging
import sys

import pytest
import requests
from urllib3 import exceptions as u3

from durable_streams._redact import RedactingFilter, redact_headers, redact_text, redact_url
from durable_streams._transport_errors import describe_failure, is_timeout

URL = "http://alice:pw1@h.example:8080/v1/stream/s?token=abc"


@pytest.mark.parametrize(("text", "expected"), [
    ("GET http://a:b@h/x?t=1&u=2 failed", "GET http://***@h/x?t=***&u=***"),
    ("Max retries exceeded with url: /x?token=abc (Caused by X)",
     "Max retries exceeded with url: /x?token=*** (Caused by X)"),
    ("{'Authorization': 'Bearer xyz', 'A': 'b'}", "{'Authorization': '***', 'A': 'b'}"),
    ("Proxy-Authorization: Basic Zm9v", "Proxy-Authorization: ***"),
    ("no secrets: offset 0_5, max_block_ms=100", "no secrets: offset 0_5, max_block_ms=100"),
])
def test_redact_text(text: str, expected: str) -> None:
    assert redact_text(text).startswith(expected)


def test_redact_text_replaces_the_given_url_and_is_idempotent() -> None:
    once = redact_text(f"at {URL} now", url=URL)
    assert once == "at http://***@h.example:8080/v1/stream/s?token=*** now"
    assert redact_text(once) == once
    assert redact_url("not a url") == "not a url"
    assert redact_headers({"X-Key": "v"}) == {"X-Key": "***"}


def _refused() -> u3.NewConnectionError:
    err = u3.NewConnectionError(None, "Failed to establish a new connection: refused")  # type: ignore[arg-type]
    err.__cause__ = ConnectionRefusedError(111, "Connection refused")
    return err


def test_describe_failure_in_plain_words() -> None:
    refused = _refused()
    assert describe_failure(refused, URL) == \
        "connection refused by h.example:8080 (is the server running?)"
    wrapped = requests.exceptions.ConnectionError(
        u3.MaxRetryError(None, "/v1/stream/s?token=abc", refused))  # type: ignore[arg-type]
    assert describe_failure(wrapped, URL).startswith("connection refused by h.example:8080")
    assert not is_timeout(refused) and not is_timeout(wrapped)
    read = u3.ReadTimeoutError(None, "/x?token=abc", "Read timed out.")  # type: ignore[arg-type]
    assert describe_failure(read, URL) == "no response from h.example:8080 within the read timeout"
    assert is_timeout(read)
    broken = u3.ProtocolError("Connection aborted.",
                              http.client.RemoteDisconnected("Remote end closed connection"))
    text = describe_failure(broken, URL)
    assert text.startswith("the connection to h.example:8080 broke") and "abc" not in text
    resolve = u3.NameResolutionError("h.example", None, OSError("no such host"))  # type: ignore[arg-type]
    assert "cannot resolve the host name h.example" in describe_failure(resolve, URL)


def test_filter_redacts_message_args_and_traceback() -> None:
    try:
        raise RuntimeError(f"boom at {URL}")
    except RuntimeError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("durable_streams", logging.ERROR, __file__, 1,
                               "failed %s", (URL,), exc_info)
    assert RedactingFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "pw1" not in text and "abc" not in text and "h.example:8080" in text
