"""DurableStreamHandler never breaks application start-up (issue 16, item 6).

Constructing the handler does no network I/O: the stream is checked (or created) on a
background thread while records are kept (bounded); what becomes of kept records is
counted and reported. Against the real reference server, plus loopback sockets that accept
connections and never answer (the reference server cannot imitate those).
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from durable_streams import DurableStream, IdempotentProducer, stream
from durable_streams.logging import DurableStreamHandler
from durable_streams.testing import ReferenceServer

JSON = "application/json"


def read_items(url: str) -> list[Any]:
    with stream(url) as response:
        return response.read_json()


class StderrSpy(io.TextIOBase):
    """Stands in for sys.stderr; lets a test wait for a line the handler writes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.text = ""
        self._cond = threading.Condition()
        self._monkeypatch = monkeypatch

    def start(self) -> StderrSpy:
        # In the test body: pytest's capture sets sys.stderr again after fixture setup.
        self._monkeypatch.setattr(sys, "stderr", self)
        return self

    def write(self, s: str) -> int:
        with self._cond:
            self.text += s
            self._cond.notify_all()
        return len(s)

    def wait_for(self, needle: str, timeout: float = 20.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: needle in self.text, timeout)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> StderrSpy:
    return StderrSpy(monkeypatch)


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A loopback port whose kernel accepts connections that nobody ever answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1/stream/app-logs"
    finally:
        sock.close()


@pytest.fixture
def refused_url() -> str:
    """A port where nothing listens (a private server, stopped)."""
    with ReferenceServer() as private:
        return private.stream_url()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger(f"test-ds-startup-{time.monotonic_ns()}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


# -- construction does no network I/O -----------------------------------------------------

def test_handler_construction_returns_at_once_against_a_silent_server(
        silent_url: str, logger: logging.Logger, spy: StderrSpy) -> None:
    spy.start()
    t0 = time.monotonic()
    handler = DurableStreamHandler(silent_url, producer_id="silent", close_timeout=1.0)
    created = DurableStreamHandler(silent_url, producer_id="silent-create", create=True,
                                   close_timeout=1.0)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"construction took {elapsed:.2f}s against a silent server"
    assert not handler.available and not created.available
    logger.addHandler(handler)
    logger.info("kept while the server is silent")
    t0 = time.monotonic()
    handler.close()  # the check is stuck in a request: close waits close_timeout at most
    created.close()
    elapsed = time.monotonic() - t0
    assert elapsed < 2 * 1.0 + 4, f"close took {elapsed:.2f}s"  # not the 5 s read timeout
    assert handler.dropped == 1 and created.dropped == 0
    assert "1 log record(s) were not delivered" in spy.text


def test_producer_construction_returns_at_once_against_a_silent_server(
        silent_url: str) -> None:
    t0 = time.monotonic()
    producer = IdempotentProducer(silent_url, "silent-producer", auto_claim=True)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, f"IdempotentProducer() took {elapsed:.2f}s"
    t0 = time.monotonic()
    producer.close(timeout=1.0)  # nothing was appended: nothing to send
    assert time.monotonic() - t0 < 2.0


DICTCONFIG_APP = textwrap.dedent("""
    import logging, logging.config, sys, time
    import durable_streams.logging  # imported first: only the configuration is timed
    t0 = time.monotonic()
    logging.config.dictConfig({
        "version": 1,
        "handlers": {"stream": {"class": "durable_streams.logging.DurableStreamHandler",
                                "url": sys.argv[1], "producer_id": "web", "level": "INFO",
                                "close_timeout": 1.0}},
        "root": {"handlers": ["stream"], "level": "INFO"},
    })
    print(f"configured {time.monotonic() - t0:.3f}")
    logging.getLogger("app").info("the application started")
    print("started", flush=True)
""")


@pytest.mark.parametrize("which", ["refused", "silent"])
def test_readme_dictconfig_starts_the_application_with_the_log_server_down(
        which: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue(f"{which}_url")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", DICTCONFIG_APP, url], capture_output=True,
                          text=True, timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("configured ") and float(lines[0].split()[1]) < 1.0
    assert lines[1] == "started"
    # The exit (logging.shutdown) waits close_timeout at most for flush and for close.
    assert elapsed < 15, f"the application took {elapsed:.1f}s to start and exit"
    assert "Unable to configure" not in proc.stderr
    assert "Traceback" not in proc.stderr and "AttributeError" not in proc.stderr
    assert "1 log record(s) were not delivered" in proc.stderr, proc.stderr


BAD_ARGUMENTS = textwrap.dedent("""
    import logging, sys
    from durable_streams.logging import DurableStreamHandler
    cases = [dict(url=42), dict(url="ftp://h/x"), dict(url=sys.argv[1], producer_id=""),
             dict(url=sys.argv[1], close_timeout=float("nan")),
             dict(url=sys.argv[1], close_timeout=-1),
             dict(url=sys.argv[1], level="NO-SUCH-LEVEL"),
             dict(url=sys.argv[1], max_in_flight=0),
             dict(url=sys.argv[1], linger_ms=-5),
             dict(url=sys.argv[1], on_error="not callable"),
             dict(url=sys.argv[1], create="yes"),
             dict(url=sys.argv[1], content_type="")]
    for kwargs in cases:
        try:
            DurableStreamHandler(**kwargs)
        except (TypeError, ValueError) as exc:
            print(type(exc).__name__, exc)
        else:
            print("accepted", kwargs)
""")


def test_bad_arguments_raise_at_once_and_leave_nothing_behind(refused_url: str) -> None:
    proc = subprocess.run([sys.executable, "-c", BAD_ARGUMENTS, refused_url],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 11 and not [line for line in lines if line.startswith("accepted")]
    # No exit-hook error (logging.shutdown() flushing a half-built handler) and no thread
    # or request left behind: nothing on stderr at all.
    assert proc.stderr == ""
    assert "close_timeout" in lines[3] and "max_in_flight" in lines[6]


# -- records kept until the stream exists ---------------------------------------------------

def test_records_are_kept_until_the_stream_exists_then_delivered_in_order(
        server: ReferenceServer, logger: logging.Logger, spy: StderrSpy) -> None:
    spy.start()
    url = server.stream_url()
    handler = DurableStreamHandler(url, producer_id="late-stream", close_timeout=30)
    logger.addHandler(handler)
    logger.info("first")
    assert spy.wait_for("is not available yet"), spy.text  # the check failed (404)
    assert "(404)" in spy.text and not handler.available
    logger.info("second")
    DurableStream.create(url, content_type=JSON).close()
    logger.info("third")
    handler.flush()  # waits for the next check, then for the acknowledgements
    assert handler.available
    assert [i["message"] for i in read_items(url)] == ["first", "second", "third"]
    logger.info("fourth")
    handler.flush()
    assert [i["message"] for i in read_items(url)][-1] == "fourth"
    assert "is available" in spy.text and handler.dropped == 0


def test_create_makes_the_stream_in_the_background(server: ReferenceServer,
                                                   logger: logging.Logger) -> None:
    url = server.stream_url()
    handler = DurableStreamHandler(url, create=True)
    logger.addHandler(handler)
    logger.warning("created for me")
    handler.flush()
    with DurableStream(url) as handle:
        assert handle.head().content_type == JSON
    assert [i["message"] for i in read_items(url)] == ["created for me"]


def test_text_stream_learned_by_the_check_gets_json_lines(server: ReferenceServer,
                                                          logger: logging.Logger) -> None:
    url = server.stream_url()
    DurableStream.create(url, content_type="text/plain").close()
    handler = DurableStreamHandler(url)
    logger.addHandler(handler)
    logger.info("one")  # possibly before the check learned the type: framed when sent
    handler.flush()
    logger.info("two")
    handler.close()
    assert handler.content_type == "text/plain"
    with stream(url) as response:
        text = response.read_text()
    assert text.endswith("\n")
    assert [json.loads(line)["message"] for line in text.splitlines()] == ["one", "two"]


def test_kept_records_are_bounded_and_every_one_is_accounted_for(
        refused_url: str, logger: logging.Logger, spy: StderrSpy) -> None:
    spy.start()
    handler = DurableStreamHandler(refused_url, max_buffer_bytes=4096, max_batch_bytes=1024,
                                   close_timeout=1.0)
    logger.addHandler(handler)
    for i in range(100):
        logger.info("record %d %s", i, "x" * 100)
    kept_dropped = handler.dropped
    assert 0 < kept_dropped < 100  # some kept (<= 4096 bytes), the rest refused
    assert spy.text.count("dropping log records") == 1, spy.text
    assert "max_buffer_bytes (4096)" in spy.text
    handler.close()
    assert handler.dropped == 100  # the kept ones are reported at close
    assert f"{100 - kept_dropped} log record(s) were not delivered" in spy.text


def test_a_deleted_and_recreated_stream_resumes_by_itself(
        json_stream: DurableStream, logger: logging.Logger, spy: StderrSpy) -> None:
    spy.start()
    url = json_stream.url
    handler = DurableStreamHandler(url, producer_id="resume", linger_ms=1, close_timeout=30)
    logger.addHandler(handler)
    logger.info("before")
    handler.flush()
    json_stream.delete()
    logger.info("lost with the stream")
    handler.flush()  # the producer got 404 and stopped; the record is reported
    assert handler.dropped == 1
    assert "1 log record(s) were not delivered" in spy.text
    DurableStream.create(url, content_type=JSON).close()
    logger.info("after")  # the stopped producer is replaced once the stream is back
    handler.flush()
    assert [i["message"] for i in read_items(url)] == ["after"]
    logger.info("and later")
    handler.flush()
    assert [i["message"] for i in read_items(url)] == ["after", "and later"]
    assert handler.dropped == 1


def test_users_on_error_is_still_called(json_stream: DurableStream,
                                        logger: logging.Logger, spy: StderrSpy) -> None:
    spy.start()
    seen: list[int] = []
    done = threading.Event()

    def on_error(err: Any) -> None:
        seen.append(len(err.undelivered))
        done.set()

    handler = DurableStreamHandler(json_stream.url, on_error=on_error, linger_ms=1)
    logger.addHandler(handler)
    logger.info("ok")
    handler.flush()
    json_stream.delete()
    logger.info("undeliverable")
    assert done.wait(20)
    assert seen == [1] and handler.dropped == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_before_the_check_finished_checks_again_in_the_child(
        server: ReferenceServer, logger: logging.Logger, spy: StderrSpy) -> None:
    spy.start()
    url = server.stream_url()  # missing: the parent's check keeps failing
    handler = DurableStreamHandler(url, producer_id="fork-early", close_timeout=30)
    logger.addHandler(handler)
    logger.info("parent, kept")
    assert spy.wait_for("is not available yet")
    DurableStream.create(url, content_type=JSON).close()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            logger.info("child record")
            handler.flush()
            producer = handler.producer
            ok = producer is not None and producer.producer_id == f"fork-early-{os.getpid()}"
            handler.close()
            code = 0 if ok and handler.dropped == 0 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    handler.flush()
    assert sorted(i["message"] for i in read_items(url)) == ["child record", "parent, kept"]


def test_start_up_reports_never_show_credentials(refused_url: str, logger: logging.Logger,
                                                 spy: StderrSpy) -> None:
    spy.start()
    password, token = "pw-Start-9x", "tok-Start-3y"
    url = refused_url.replace("http://", f"http://alice:{password}@") + f"?token={token}"
    handler = DurableStreamHandler(url, close_timeout=0.5,
                                   headers={"Authorization": f"Bearer {token}"})
    logger.addHandler(handler)
    logger.info("kept")
    assert spy.wait_for("is not available yet")
    handler.close()
    assert "were not delivered" in spy.text
    assert password not in spy.text + repr(handler) and token not in spy.text
