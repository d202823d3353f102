"""DurableStreamHandler against the real reference server."""

from __future__ import annotations

import datetime as dt
import json
import logging
import logging.config
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from durable_streams import DurableStream, stream
from durable_streams.logging import DurableStreamHandler
from durable_streams.testing import ReferenceServer

JSON = "application/json"


def read_items(url: str) -> list[Any]:
    with stream(url) as response:
        return response.read_json()


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    """A private logger (not propagating) so other tests' logging is untouched."""
    log = logging.getLogger(f"test-ds-handler-{time.monotonic_ns()}")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


@pytest.fixture
def root_debug() -> Iterator[logging.Logger]:
    """The root logger at DEBUG (so urllib3 and library records are produced)."""
    root = logging.getLogger()
    old_level, old_handlers = root.level, list(root.handlers)
    root.setLevel(logging.DEBUG)
    yield root
    for handler in list(root.handlers):
        if handler not in old_handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(old_level)


def test_module_name_does_not_shadow_stdlib_logging() -> None:
    import durable_streams.logging as ds_logging

    assert ds_logging.logging is logging  # the stdlib module, not itself
    assert logging.Handler in DurableStreamHandler.__mro__


def test_record_shape(json_stream: DurableStream, logger: logging.Logger) -> None:
    handler = DurableStreamHandler(json_stream.url, producer_id="shape")
    logger.addHandler(handler)
    before = dt.datetime.now(dt.timezone.utc)
    logger.info("hello %s", "world", extra={"user": "ann", "obj": object(),
                                             "nan": float("nan"), "nested": {"k": [1, 2]}})
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    logger.warning("with stack", stack_info=True)
    handler.flush()
    items = read_items(json_stream.url)
    assert [i["message"] for i in items] == ["hello world", "failed", "with stack"]
    first = items[0]
    when = dt.datetime.fromisoformat(first["time"])
    assert when.tzinfo is not None and abs((when - before).total_seconds()) < 60
    assert first["level"] == "INFO" and first["logger"] == logger.name
    assert first["thread"] == threading.current_thread().name
    assert first["process"] == os.getpid()
    assert first["function"] == "test_record_shape" and isinstance(first["line"], int)
    extra = first["extra"]
    assert extra["user"] == "ann" and extra["nested"] == {"k": [1, 2]}
    assert extra["obj"].startswith("<object object")
    assert extra["nan"] == "nan"  # NaN is not JSON: sent as text, the record is not lost
    assert "exception" not in first
    assert items[1]["level"] == "ERROR"
    assert "ValueError: boom" in items[1]["exception"]
    assert "Traceback" in items[1]["exception"]
    assert "test_record_shape" in items[2]["stack"]


def test_formatter_sets_the_message(json_stream: DurableStream,
                                    logger: logging.Logger) -> None:
    handler = DurableStreamHandler(json_stream.url)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    logger.addHandler(handler)
    logger.error("formatted")
    handler.flush()
    assert read_items(json_stream.url)[0]["message"] == "[ERROR] formatted"


def test_missing_stream_never_fails_construction_and_create_creates(
        server: ReferenceServer) -> None:
    # Construction does no network I/O (tests/test_logging_startup.py has the details): a
    # missing stream is found by the background check and reported, never raised.
    url = server.stream_url()
    DurableStreamHandler(url, close_timeout=0).close()
    handler = DurableStreamHandler(url, create=True)
    try:
        handler.flush()  # waits for the background check, which creates the stream
        assert handler.available
        with DurableStream(url) as handle:
            assert handle.head().content_type == JSON
    finally:
        handler.close()


def test_text_stream_gets_one_json_line_per_record(server: ReferenceServer,
                                                   logger: logging.Logger) -> None:
    url = server.stream_url()
    handler = DurableStreamHandler(url, content_type="text/plain")
    logger.addHandler(handler)
    logger.info("one")
    logger.info("two")
    handler.close()
    with stream(url) as response:
        lines = response.read_text().splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["one", "two"]


def test_emit_never_waits_for_the_network(server: ReferenceServer, json_stream: DurableStream,
                                          logger: logging.Logger) -> None:
    handler = DurableStreamHandler(json_stream, producer_id="slow")
    logger.addHandler(handler)
    server.inject_fault(json_stream.url, delayMs=800, method="POST", count=5)
    t0 = time.perf_counter()
    for i in range(200):
        logger.info("record %d", i)
    emitting = time.perf_counter() - t0
    assert emitting < 0.5, f"200 emits took {emitting:.2f}s while the server was slow"
    handler.flush()
    assert [i["message"] for i in read_items(json_stream.url)] == [
        f"record {i}" for i in range(200)]


def test_library_records_and_http_chatter_never_loop(
        json_stream: DurableStream, root_debug: logging.Logger) -> None:
    handler = DurableStreamHandler(json_stream.url, producer_id="loop", linger_ms=1)
    root_debug.addHandler(handler)
    app = logging.getLogger("app.loop-test")
    for i in range(50):
        app.info("app %d", i)
        logging.getLogger("durable_streams").debug("library record %d", i)
        logging.getLogger("durable_streams.producer").warning("library child %d", i)
    handler.flush()
    # Sending produced urllib3 debug records on the producer's threads, and the library
    # logged on its own loggers: none of it was appended.
    assert handler.producer is not None
    assert handler.producer.stats().messages_appended == 50
    root_debug.removeHandler(handler)  # reading below makes HTTP requests on this thread
    items = read_items(json_stream.url)
    assert {i["logger"] for i in items} == {"app.loop-test"}
    assert [i["message"] for i in items] == [f"app {i}" for i in range(50)]


def test_reentrant_logging_during_emit_is_dropped_not_recursive(
        json_stream: DurableStream, logger: logging.Logger) -> None:
    class Chatty(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            logger.warning("logged from inside format")  # would recurse forever
            return super().format(record)

    handler = DurableStreamHandler(json_stream.url)
    handler.setFormatter(Chatty())
    logger.addHandler(handler)
    logger.info("outer")
    handler.flush()
    assert [i["message"] for i in read_items(json_stream.url)] == ["outer"]


def test_full_buffer_drops_and_says_so_once(server: ReferenceServer,
                                             json_stream: DurableStream,
                                             logger: logging.Logger,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    handler = DurableStreamHandler(json_stream.url, max_buffer_bytes=4096,
                                   max_batch_bytes=1024, max_in_flight=1)
    logger.addHandler(handler)
    server.inject_fault(json_stream.url, delayMs=500, method="POST", count=1)
    for i in range(200):
        logger.info("record %d %s", i, "x" * 100)
    assert handler.dropped > 0
    err = capsys.readouterr().err
    assert err.count("dropping log records") == 1, err
    handler.flush()
    delivered = read_items(json_stream.url)
    assert len(delivered) + handler.dropped == 200
    numbers = [int(i["message"].split()[1]) for i in delivered]
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


def test_dict_config_with_class_key(json_stream: DurableStream) -> None:
    name = f"dictcfg-{time.monotonic_ns()}"
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {
            "stream": {
                "class": "durable_streams.logging.DurableStreamHandler",
                "url": json_stream.url,
                "producer_id": "dictconfig",
                "level": "WARNING",
                "linger_ms": 2,
            },
        },
        "loggers": {name: {"handlers": ["stream"], "level": "DEBUG", "propagate": False}},
    })
    log = logging.getLogger(name)
    handler = log.handlers[0]
    try:
        assert isinstance(handler, DurableStreamHandler)
        assert handler.level == logging.WARNING
        log.info("below the handler's level")
        log.warning("shipped")
        handler.flush()
        assert [i["message"] for i in read_items(json_stream.url)] == ["shipped"]
    finally:
        log.removeHandler(handler)
        handler.close()


def test_close_is_idempotent_and_later_records_are_dropped(
        json_stream: DurableStream, logger: logging.Logger,
        capsys: pytest.CaptureFixture[str]) -> None:
    handler = DurableStreamHandler(json_stream.url)
    logger.addHandler(handler)
    logger.info("before close")
    handler.close()
    handler.close()
    assert handler.producer is None
    logger.info("after close")
    assert handler.dropped == 1
    assert "dropping log records" in capsys.readouterr().err
    assert [i["message"] for i in read_items(json_stream.url)] == ["before close"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_producer(json_stream: DurableStream,
                                            logger: logging.Logger) -> None:
    handler = DurableStreamHandler(json_stream.url, producer_id="forky")
    logger.addHandler(handler)
    logger.info("parent before fork")
    parent_producer = handler.producer
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            logger.info("child record")
            producer = handler.producer
            ok = producer is not None and producer is not parent_producer
            ok = ok and producer.producer_id == f"forky-{os.getpid()}"
            handler.close()
            code = 0 if ok else 2
        finally:
            os._exit(code)
    logger.info("parent after fork")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    handler.flush()
    messages = sorted(i["message"] for i in read_items(json_stream.url))
    assert messages == ["child record", "parent after fork", "parent before fork"]


CHILD = textwrap.dedent("""
    import logging, logging.config, sys, threading

    url = sys.argv[1]
    logging.config.dictConfig({
        "version": 1,
        "handlers": {
            "stream": {
                "()": "durable_streams.logging.DurableStreamHandler",
                "url": url,
                "producer_id": "exit-test",
                "linger_ms": 20,
            },
        },
        "root": {"handlers": ["stream"], "level": "DEBUG"},
    })

    def work(t):
        log = logging.getLogger(f"app.worker{t}")
        for i in range(500):
            log.info("record %d from %d", i, t, extra={"t": t, "i": i})
        logging.getLogger("durable_streams").warning("library record from %d", t)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # No flush, no close, no logging.shutdown(): the interpreter just exits.
""")


def test_every_record_arrives_when_the_interpreter_just_exits(
        json_stream: DurableStream) -> None:
    proc = subprocess.run([sys.executable, "-c", CHILD, json_stream.url],
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stderr == b""
    items = read_items(json_stream.url)
    assert len(items) == 8 * 500
    got = sorted((i["extra"]["t"], i["extra"]["i"]) for i in items)
    assert got == [(t, i) for t in range(8) for i in range(500)]
    assert {i["logger"] for i in items} == {f"app.worker{t}" for t in range(8)}
    for t in range(8):  # each thread's records in its own order
        mine = [i["extra"]["i"] for i in items if i["extra"]["t"] == t]
        assert mine == list(range(500))
