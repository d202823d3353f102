"""Secrets never leak into text the library produces (issue 11 §2, design decision 11).

Each failure kind is triggered with three secrets in play: a password in the URL's user-info,
a token in ``params=``, and an ``Authorization`` header. Every text the library produced is
collected -- ``str()``, ``repr()`` and the full traceback (with causes and context) of the
exception, the per-message errors of a ``DeliveryError``, every log record at DEBUG from the
``durable_streams`` and ``urllib3`` loggers (message and traceback text), and the CLI's
stdout and stderr -- and none of the secrets may appear in it. Each test also checks that the
text it inspects is there and useful (host, path, parameter name, status), so a test cannot
pass by producing nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from durable_streams import (
    DeliveryError,
    DurableStream,
    IdempotentProducer,
    RetryPolicy,
    ServerError,
    StreamNotFoundError,
    TransportError,
    stream,
)
from durable_streams._redact import redact_headers, redact_text, redact_url
from durable_streams.testing import ReferenceServer

PASSWORD = "pw-S3cr3t-9f1x"
TOKEN = "tok-T0ken-77ab"
BEARER = "auth-Zz9-hidden"
SECRETS = (PASSWORD, TOKEN, BEARER)
PARAMS = {"token": TOKEN}
HEADERS = {"Authorization": f"Bearer {BEARER}"}
FAST = RetryPolicy(max_retries=3, initial_delay_ms=5, max_delay_ms=20)


def with_password(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"alice:{PASSWORD}@{parts.netloc}", parts.path,
                       parts.query, ""))


def exception_text(exc: BaseException) -> str:
    """Everything an error tracker or a log handler could render from ``exc``."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:  # causes and context, even suppressed ones
        seen.add(id(cur))
        parts += [str(cur), repr(cur)]
        for err in getattr(cur, "errors", None) or ():
            parts.append(exception_text(err))
        cur = cur.__cause__ or cur.__context__
    return "\n".join(parts)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.DEBUG)  # root: durable_streams and urllib3 records alike
    for name in ("durable_streams", "urllib3"):
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"secret {secret!r} leaked into:\n{text}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the redaction functions --------------------------------------------------------------


def test_redact_url_and_text_keep_what_is_useful() -> None:
    url = f"http://alice:{PASSWORD}@h.example:8080/v1/s?token={TOKEN}&live=sse"
    shown = redact_url(url)
    assert shown == "http://***@h.example:8080/v1/s?token=***&live=***"
    text = redact_text(f"GET {url} failed; also /x?token={TOKEN} and "
                       f"{{'Authorization': 'Bearer {BEARER}'}}")
    assert_clean(text)
    assert "h.example:8080/v1/s" in text and "token=" in text and "Authorization" in text
    assert redact_headers(HEADERS) == {"Authorization": "***"}


# -- failure kinds ------------------------------------------------------------------------


def test_refused_connection(logs: pytest.LogCaptureFixture) -> None:
    url = with_password(f"http://127.0.0.1:{free_port()}/v1/stream/s")
    with pytest.raises(TransportError) as info:
        DurableStream.create(url, content_type="text/plain", params=PARAMS, headers=HEADERS,
                             retry=FAST)
    text = exception_text(info.value) + log_text(logs)
    assert_clean(text)
    message = str(info.value)
    # What happened, where, how hard we tried -- not urllib3's "Max retries exceeded".
    assert "connection refused by 127.0.0.1:" in message
    assert "4 attempts over" in message and "Max retries" not in message
    assert "/v1/stream/s?token=***" in message
    assert info.value.url == url  # the attribute keeps the URL as given, for programs
    assert any(r.name == "durable_streams" and "retry" in r.getMessage()
               for r in logs.records)


def test_refused_connection_user_session(logs: pytest.LogCaptureFixture) -> None:
    """The same through a user's requests.Session (requests' own wording is replaced)."""
    url = with_password(f"http://127.0.0.1:{free_port()}/s")
    with requests.Session() as session, pytest.raises(TransportError) as info:
        DurableStream(url, params=PARAMS, headers=HEADERS, session=session,
                      retry=FAST).head()
    assert_clean(exception_text(info.value) + log_text(logs))
    assert "connection refused by 127.0.0.1:" in str(info.value)
    assert "Max retries" not in str(info.value)


def test_not_found(server: ReferenceServer, url: str, logs: pytest.LogCaptureFixture) -> None:
    secret_url = with_password(url)
    with pytest.raises(StreamNotFoundError) as info:
        DurableStream.connect(secret_url, params=PARAMS, headers=HEADERS)
    with pytest.raises(StreamNotFoundError) as read_info:
        stream(secret_url, params=PARAMS, headers=HEADERS).read_bytes()
    text = exception_text(info.value) + exception_text(read_info.value) + log_text(logs)
    assert_clean(text)
    assert "(404)" in str(info.value) and urlsplit(url).path in str(info.value)
    # urllib3 logged the request lines at DEBUG (the library caused them): redacted.
    lines = [r.getMessage() for r in logs.records if r.name.startswith("urllib3")]
    assert any("token=***" in line for line in lines), lines


def test_server_error_storm(server: ReferenceServer, url: str,
                            logs: pytest.LogCaptureFixture) -> None:
    with DurableStream.create(url, content_type="text/plain") as plain:
        plain.append("x")
    server.inject_fault(url, status=503, count=20)
    handle = DurableStream(with_password(url), params=PARAMS, headers=HEADERS, retry=FAST)
    with pytest.raises(ServerError) as info:
        handle.head()
    handle.close()
    server.clear_faults()
    assert_clean(exception_text(info.value) + repr(handle) + log_text(logs))
    assert info.value.status == 503 and "503" in str(info.value)
    assert "4 attempts over" in str(info.value)
    retries = [r for r in logs.records if r.name == "durable_streams" and "HTTP 503" in
               r.getMessage()]
    assert len(retries) == FAST.max_retries


def test_undeliverable_producer_batch(server: ReferenceServer, url: str,
                                      logs: pytest.LogCaptureFixture) -> None:
    """A batch to a stream that does not exist: DeliveryError from flush()."""
    producer = IdempotentProducer(with_password(url) + f"?token={TOKEN}", "p",
                                  content_type="text/plain", headers=HEADERS, retry=FAST,
                                  flush_at_exit=False)
    try:
        producer.append("lost")
        with pytest.raises(DeliveryError) as info:
            producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)
    err = info.value
    assert err.errors and isinstance(err.errors[0], StreamNotFoundError)
    assert_clean(exception_text(err) + repr(producer) + log_text(logs))
    assert "404" in exception_text(err)
    assert any(r.levelno >= logging.WARNING for r in logs.records
               if r.name.startswith("durable_streams"))


def test_invalid_header_value_is_not_echoed(url: str) -> None:
    with pytest.raises(ValueError) as info:
        DurableStream(url, headers={"Authorization": f"Bearer {BEARER}\r\nX: y"}).head()
    assert_clean(exception_text(info.value))
    assert "header" in str(info.value)


def test_logging_handler_that_cannot_deliver(server: ReferenceServer, url: str,
                                            capsys: pytest.CaptureFixture[str],
                                            logs: pytest.LogCaptureFixture) -> None:
    """DurableStreamHandler: its warnings on stderr and its repr name the URL redacted."""
    from durable_streams.logging import DurableStreamHandler

    DurableStream.create(url, content_type="application/json").close()
    handler = DurableStreamHandler(with_password(url) + f"?token={TOKEN}", "h",
                                   content_type="application/json", headers=HEADERS,
                                   retry=FAST, close_timeout=1)
    shown = repr(handler)
    server.inject_fault(url, status=503, count=10_000, method="POST")
    handler.handle(logging.LogRecord("app", logging.INFO, __file__, 1, "hello", None, None))
    handler.close()
    server.clear_faults()
    err = capsys.readouterr().err
    assert_clean(shown + err + log_text(logs))
    assert "not delivered" in err and "token=***" in err


# -- the CLI ------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
         env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "durable_streams", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def test_cli_errors(server: ReferenceServer, url: str) -> None:
    missing = with_password(url) + f"?token={TOKEN}"
    header = f"Authorization: Bearer {BEARER}"
    refused = with_password(f"http://127.0.0.1:{free_port()}/s") + f"?token={TOKEN}"
    outputs = []
    for args in (("head", missing, "-H", header),
                 ("append", missing, "hello", "-H", header),
                 ("read", missing, "-H", header),
                 ("head", refused, "-H", header),
                 ("head", url, "-H", f"Authorization Bearer {BEARER}"),  # malformed header
                 ("head", url, "-H", f"Authorization: Bearer {BEARER}\r")):
        proc = run_cli(*args)
        assert proc.returncode != 0, (args, proc.stdout, proc.stderr)
        assert proc.stderr.strip(), args
        outputs.append(proc.stdout + proc.stderr)
    assert_clean("\n".join(outputs))
    assert "token=***" in outputs[0] and "404" in outputs[0]
    assert "connection refused" in outputs[3]
