"""The conformance adapter, driven the way the suite's runner drives it.

``tests/conformance/adapter.py`` is spawned as an executable with no arguments and stdio
pipes, from an unrelated working directory; commands go in one JSON line at a time and each
answer must come back as one JSON line within a bound (a reader thread feeds a queue, so a
hung adapter fails the test instead of hanging it). The session runs against the real
reference server; faults are injected through it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from durable_streams.testing import ReferenceServer

ADAPTER = Path(__file__).resolve().parent / "conformance" / "adapter.py"
#: Every answer must arrive within this many seconds (the runner allows 30).
ANSWER_TIMEOUT = 15.0
FEATURES = ("batching", "sse", "longPoll", "auto", "streaming", "dynamicHeaders",
            "retryOptions", "batchItems", "strictZeroValidation")


class AdapterProcess:
    """The adapter as a child process, spoken to over its stdin/stdout."""

    def __init__(self, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [str(ADAPTER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, cwd=cwd,
        )
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.decode("utf-8", "replace"))

    def start(self, cmd: dict[str, Any]) -> Callable[..., dict[str, Any]]:
        """Send a command; return a function that waits for its answer (background reads)."""
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

        def answer(timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"no answer to {cmd['type']} within {timeout}s; adapter stderr:\n"
                    + "".join(self.stderr[-30:])
                ) from None
            assert line is not None, "adapter exited: " + "".join(self.stderr[-30:])
            assert line.endswith(b"\n")
            assert line.isascii()  # escaped: U+2028/U+2029 cannot split a line anywhere
            result: dict[str, Any] = json.loads(line)
            return result

        return answer

    def send(self, cmd: dict[str, Any], timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
        return self.start(cmd)(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


@pytest.fixture(scope="module")
def session(durable_streams_server: ReferenceServer, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[tuple[AdapterProcess, dict[str, Any]]]:
    proc = AdapterProcess(tmp_path_factory.mktemp("adapter-cwd"))
    try:
        init = proc.send({"type": "init", "serverUrl": durable_streams_server.url})
        yield proc, init
    finally:
        proc.stop()


@pytest.fixture
def adapter(session: tuple[AdapterProcess, dict[str, Any]], server: ReferenceServer
            ) -> AdapterProcess:
    return session[0]


def new_path() -> str:
    return f"/conformance-{uuid.uuid4().hex}"


def server_append(server: ReferenceServer, path: str, data: str | bytes,
                  content_type: str = "text/plain") -> int:
    """A direct POST, as the runner's ``server-append`` does while the adapter is busy."""
    body = data.encode() if isinstance(data, str) else data
    request = urllib.request.Request(server.url + path, data=body, method="POST",
                                     headers={"content-type": content_type})
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def joined(result: dict[str, Any]) -> str:
    assert result["type"] == "read", result
    return "".join(chunk["data"] for chunk in result["chunks"])


def assert_error(result: dict[str, Any], command: str, code: str, status: int | None = None
                 ) -> None:
    assert result["type"] == "error", result
    assert result["success"] is False
    assert result["commandType"] == command
    assert result["errorCode"] == code, result
    assert isinstance(result["message"], str) and result["message"]
    if status is None:
        return
    assert result["status"] == status, result


def create(adapter: AdapterProcess, content_type: str = "text/plain", **extra: Any) -> str:
    path = new_path()
    result = adapter.send({"type": "create", "path": path, "contentType": content_type, **extra})
    assert result == {"type": "create", "success": True, "status": 201}
    return path


def append(adapter: AdapterProcess, path: str, data: str, **extra: Any) -> dict[str, Any]:
    result = adapter.send({"type": "append", "path": path, "data": data, **extra})
    assert result["type"] == "append" and result["success"] is True, result
    assert result["status"] == 200
    return result


# -- init, create, connect -------------------------------------------------------------------


def test_init_reports_every_feature(session: tuple[AdapterProcess, dict[str, Any]]) -> None:
    _, init = session
    assert init["type"] == "init" and init["success"] is True
    assert init["clientName"] and init["clientVersion"]
    assert {name: init["features"].get(name) for name in FEATURES} == dict.fromkeys(
        FEATURES, True)


def test_create_is_idempotent_and_reports_conflicts(adapter: AdapterProcess) -> None:
    path = create(adapter)
    again = adapter.send({"type": "create", "path": path, "contentType": "text/plain"})
    assert again == {"type": "create", "success": True, "status": 200}
    conflict = adapter.send({"type": "create", "path": path, "contentType": "application/json"})
    assert_error(conflict, "create", "CONFLICT", 409)


def test_connect(adapter: AdapterProcess) -> None:
    path = create(adapter, "application/json")
    assert adapter.send({"type": "connect", "path": path}) == {
        "type": "connect", "success": True, "status": 200}
    missing = new_path()
    result = adapter.send({"type": "connect", "path": missing})
    assert_error(result, "connect", "NOT_FOUND", 404)
    assert missing in result["message"]


# -- append ----------------------------------------------------------------------------------


def test_append_text_binary_and_seq(adapter: AdapterProcess) -> None:
    path = create(adapter, "application/octet-stream")
    first = append(adapter, path, "hello ")
    assert first["offset"]
    append(adapter, path, base64.b64encode(b"binary").decode(), binary=True)
    assert joined(adapter.send({"type": "read", "path": path})) == "hello binary"

    raw = bytes([0x00, 0x9B, 0xF5, 0xFF])
    path2 = create(adapter, "application/octet-stream")
    append(adapter, path2, base64.b64encode(raw).decode(), binary=True)
    read = adapter.send({"type": "read", "path": path2})
    # Bytes that are not UTF-8 come back intact, as base64 flagged binary.
    assert read["chunks"] == [{"data": base64.b64encode(raw).decode(), "binary": True,
                               "offset": read["offset"]}]

    path3 = create(adapter)
    append(adapter, path3, "a", seq=1)
    append(adapter, path3, "b", seq=2)
    assert_error(adapter.send({"type": "append", "path": path3, "data": "c", "seq": 2}),
                 "append", "SEQUENCE_CONFLICT", 409)
    assert joined(adapter.send({"type": "read", "path": path3})) == "ab"


def test_append_errors_carry_the_real_status(adapter: AdapterProcess) -> None:
    path = create(adapter)
    empty = adapter.send({"type": "append", "path": path, "data": ""})
    assert empty["type"] == "error" and empty["status"] == 400
    missing = new_path()
    result = adapter.send({"type": "append", "path": missing, "data": "x"})
    assert_error(result, "append", "NOT_FOUND", 404)
    assert missing in result["message"]


def test_append_survives_injected_500_and_dropped_connection(
        adapter: AdapterProcess, server: ReferenceServer) -> None:
    path = create(adapter)
    server.inject_fault(path, status=500, count=1, method="POST")
    append(adapter, path, "one;")
    server.inject_fault(path, status=503, count=1)
    append(adapter, path, "two;")
    # A connection that dies after the request was sent is ambiguous: a plain append is
    # reported as a network error (status-less), never silently repeated (issue 2).
    server.inject_fault(path, dropConnection=True, count=1, method="POST")
    result = adapter.send({"type": "append", "path": path, "data": "three;"})
    assert result["type"] == "error" and result["errorCode"] == "NETWORK_ERROR", result
    # With Stream-Seq a repeat is detectable, so the library retries it.
    server.inject_fault(path, dropConnection=True, count=1, method="POST")
    assert adapter.send({"type": "append", "path": path, "data": "four;", "seq": 1}
                        )["success"] is True
    assert joined(adapter.send({"type": "read", "path": path})) == "one;two;four;"


# -- reads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("live", [False, True, "auto", "long-poll", "sse"])
def test_read_each_live_mode(adapter: AdapterProcess, live: Any) -> None:
    path = create(adapter)
    offsets = [append(adapter, path, part)["offset"] for part in ("part1", "part2", "part3")]
    cmd: dict[str, Any] = {"type": "read", "path": path, "live": live,
                           "waitForUpToDate": True, "timeoutMs": 5000}
    started = time.monotonic()
    result = adapter.send(cmd)
    assert time.monotonic() - started < 4.0  # ended at up-to-date, not at the timeout
    assert result["success"] is True and result["status"] == 200
    assert joined(result) == "part1part2part3"
    assert result["upToDate"] is True and result["streamClosed"] is False
    assert result["offset"] == offsets[-1]
    # From a saved offset, only what follows it.
    resumed = adapter.send({**cmd, "offset": offsets[0]})
    assert joined(resumed) == "part2part3"
    # offset=now: nothing old, the tail offset to resume from.
    now = adapter.send({**cmd, "offset": "now"})
    assert now["chunks"] == [] and now["upToDate"] is True
    assert now["offset"] == offsets[-1]


@pytest.mark.parametrize("live", ["long-poll", "sse", "auto"])
def test_live_read_follows_new_data_and_stops_at_max_chunks(
        adapter: AdapterProcess, server: ReferenceServer, live: str) -> None:
    path = create(adapter)
    tail = append(adapter, path, "initial")["offset"]
    answer = adapter.start({"type": "read", "path": path, "offset": tail, "live": live,
                            "timeoutMs": 10_000, "maxChunks": 1})
    # Like the runner's "wait" step: makes it likely that the read is already in its live
    # request. Either order gives the same answer (the catch-up from `tail` would carry it).
    time.sleep(0.2)
    assert server_append(server, path, "new-data") in (200, 204)
    started = time.monotonic()
    result = answer()
    assert time.monotonic() - started < 5.0  # stopped at maxChunks, not at timeoutMs
    assert [chunk["data"] for chunk in result["chunks"]] == ["new-data"]
    assert result["offset"] == result["chunks"][0]["offset"] != tail


@pytest.mark.parametrize("live", ["long-poll", "sse", True])
def test_live_read_timeout_is_bounded(adapter: AdapterProcess, live: Any) -> None:
    path = create(adapter)
    tail = append(adapter, path, "data")["offset"]
    started = time.monotonic()
    result = adapter.send({"type": "read", "path": path, "offset": tail, "live": live,
                           "timeoutMs": 400})
    elapsed = time.monotonic() - started
    assert 0.35 < elapsed < 3.0
    assert result["chunks"] == [] and result["upToDate"] is True
    assert result["offset"] == tail


@pytest.fixture(scope="module")
def quick_adapter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdapterProcess]:
    """An adapter on a second server whose long-poll hold is 200 ms (it answers 204 soon)."""
    with ReferenceServer(long_poll_timeout_ms=200) as srv:
        proc = AdapterProcess(tmp_path_factory.mktemp("adapter-quick-cwd"))
        try:
            proc.send({"type": "init", "serverUrl": srv.url})
            yield proc
        finally:
            proc.stop()


def test_read_reports_the_status_of_an_empty_long_poll(quick_adapter: AdapterProcess) -> None:
    """PROTOCOL §5.7: a long-poll that times out with nothing new is a 204, and the read
    result carries that status (the runner compares it with expect.status)."""
    path = create(quick_adapter)
    tail = append(quick_adapter, path, "data")["offset"]
    result = quick_adapter.send({"type": "read", "path": path, "offset": tail,
                                 "live": "long-poll", "timeoutMs": 1000})
    assert result["success"] is True
    assert result["status"] == 204
    assert result["chunks"] == [] and result["upToDate"] is True and result["offset"] == tail
    # Data, then the end of the read: a catch-up read reports the 200 that carried it.
    caught_up = quick_adapter.send({"type": "read", "path": path})
    assert caught_up["status"] == 200 and joined(caught_up) == "data"


def test_live_read_without_timeout_uses_the_default(adapter: AdapterProcess) -> None:
    path = create(adapter)
    started = time.monotonic()
    result = adapter.send({"type": "read", "path": path, "live": "long-poll"})
    assert 4.5 < time.monotonic() - started < 9.0  # the reference default: 5000 ms
    assert result["chunks"] == [] and result["upToDate"] is True


@pytest.mark.parametrize("live", [False, "long-poll", "sse"])
def test_read_reports_stream_closed(adapter: AdapterProcess, live: Any) -> None:
    path = create(adapter)
    append(adapter, path, "data")
    closed = adapter.send({"type": "close", "path": path, "data": "-final"})
    assert closed["type"] == "close" and closed["success"] is True
    assert closed["status"] == 200 and closed["finalOffset"]
    started = time.monotonic()
    result = adapter.send({"type": "read", "path": path, "live": live, "timeoutMs": 5000})
    assert time.monotonic() - started < 4.0  # EOF ends a live read at once
    assert joined(result) == "data-final"
    assert result["streamClosed"] is True and result["upToDate"] is True
    assert result["offset"] == closed["finalOffset"]
    at_tail = adapter.send({"type": "read", "path": path, "offset": closed["finalOffset"],
                            "live": live, "timeoutMs": 5000})
    assert at_tail["chunks"] == [] and at_tail["streamClosed"] is True


@pytest.mark.parametrize("live", [False, "long-poll", "sse"])
def test_json_chunks_are_compact_arrays(adapter: AdapterProcess, live: Any) -> None:
    path = create(adapter, "application/json")
    append(adapter, path, '{"message": "hello"}')
    append(adapter, path, '[1, 2.0, "\u00e9\u2028"]')
    result = adapter.send({"type": "read", "path": path, "live": live, "waitForUpToDate": True})
    assert len(result["chunks"]) == 1
    assert joined(result) == '[{"message":"hello"},[1,2,"\u00e9\u2028"]]'
    assert json.loads(joined(result)) == [{"message": "hello"}, [1, 2, "\u00e9\u2028"]]


@pytest.mark.parametrize("live", [False, "long-poll", "sse"])
def test_read_missing_stream_is_not_found(adapter: AdapterProcess, live: Any) -> None:
    missing = new_path()
    result = adapter.send({"type": "read", "path": missing, "live": live, "timeoutMs": 1000})
    assert_error(result, "read", "NOT_FOUND", 404)
    assert missing in result["message"]


def test_read_errors(adapter: AdapterProcess, server: ReferenceServer) -> None:
    path = create(adapter, "application/json")
    append(adapter, path, '{"a": 1}')
    assert_error(adapter.send({"type": "read", "path": path, "offset": "not-an-offset"}),
                 "read", "INVALID_OFFSET", 400)
    server.inject_fault(path, corruptBody=True, count=1)
    assert_error(adapter.send({"type": "read", "path": path}), "read", "PARSE_ERROR")
    server.inject_fault(path, status=400, count=1)  # a 400 is final: not retried
    injected = adapter.send({"type": "read", "path": path})
    assert injected["type"] == "error" and injected["status"] == 400
    server.inject_fault(path, status=500, count=2)  # transient: retried
    assert joined(adapter.send({"type": "read", "path": path})) == '[{"a":1}]'
    refused = adapter.send({"type": "read", "path": path, "live": "long-poll",
                            "encoding": "base64", "timeoutMs": 500})
    assert refused["status"] == 400 and "encoding" in refused["message"]


@pytest.mark.parametrize("data", ["{invalid json", ""])
def test_sse_control_event_that_is_not_json_is_a_parse_error(
        adapter: AdapterProcess, server: ReferenceServer, data: str) -> None:
    path = create(adapter)
    append(adapter, path, "data")
    server.inject_fault(path, injectSseEvent={"eventType": "control", "data": data})
    result = adapter.send({"type": "read", "path": path, "live": "sse", "maxChunks": 1,
                           "timeoutMs": 2000})
    assert_error(result, "read", "PARSE_ERROR")


def test_sse_data_loses_exactly_one_leading_space(adapter: AdapterProcess) -> None:
    # The reference server writes "data:<line>" with no space after the colon; an SSE
    # parser then drops the payload's first space (WHATWG EventSource rules), as the
    # suite's sse-strips-single-leading-space case expects.
    path = create(adapter)
    append(adapter, path, "  two leading spaces")
    result = adapter.send({"type": "read", "path": path, "live": "sse",
                           "waitForUpToDate": True})
    assert joined(result) == " two leading spaces"


def test_unknown_sse_events_are_ignored(adapter: AdapterProcess, server: ReferenceServer
                                        ) -> None:
    path = create(adapter)
    append(adapter, path, "test-data")
    server.inject_fault(path, injectSseEvent={"eventType": "future-type", "data": "{}"})
    result = adapter.send({"type": "read", "path": path, "live": "sse", "maxChunks": 1,
                           "timeoutMs": 2000})
    assert joined(result) == "test-data"


# -- head, close, delete ---------------------------------------------------------------------


def test_head_close_delete(adapter: AdapterProcess) -> None:
    path = create(adapter, "application/json")
    head = adapter.send({"type": "head", "path": path})
    assert head["type"] == "head" and head["status"] == 200
    assert head["contentType"] == "application/json"
    assert head["offset"] and head["streamClosed"] is False
    first = adapter.send({"type": "close", "path": path})
    second = adapter.send({"type": "close", "path": path})  # closing again is fine
    assert first["finalOffset"] == second["finalOffset"] == head["offset"]
    assert adapter.send({"type": "head", "path": path})["streamClosed"] is True
    assert_error(adapter.send({"type": "append", "path": path, "data": "1"}),
                 "append", "STREAM_CLOSED", 409)
    assert adapter.send({"type": "delete", "path": path}) == {
        "type": "delete", "success": True, "status": 200}
    for cmd in ({"type": "head", "path": path}, {"type": "delete", "path": path},
                {"type": "read", "path": path}):
        result = adapter.send(cmd)
        assert_error(result, cmd["type"], "NOT_FOUND", 404)
        assert path in result["message"]
    assert_error(adapter.send({"type": "close", "path": path}), "close", "NOT_FOUND", 404)


# -- idempotent producer ----------------------------------------------------------------------


def test_idempotent_append_keeps_one_producer_per_id_and_epoch(adapter: AdapterProcess
                                                               ) -> None:
    path = create(adapter)
    producer = {"path": path, "producerId": "writer-1", "epoch": 0, "autoClaim": False}
    seqs = []
    for i in range(3):
        result = adapter.send({"type": "idempotent-append", **producer, "data": f"m{i};"})
        assert result["success"] is True and result["status"] == 200, result
        assert result["offset"]
        seqs.append(result["producerSeq"])
    assert seqs == [0, 1, 2]  # one producer across commands: seq continues
    assert joined(adapter.send({"type": "read", "path": path})) == "m0;m1;m2;"

    close = {"type": "idempotent-close", **producer}
    first = adapter.send(close)
    again = adapter.send({**close, "data": "ignored"})  # idempotent, first result kept
    assert first["success"] is again["success"] is True
    assert first["status"] == again["status"] == 200
    assert first["finalOffset"] == again["finalOffset"]
    other = adapter.send({**close, "producerId": "writer-2"})
    assert_error(other, "idempotent-close", "STREAM_CLOSED", 409)
    assert adapter.send({"type": "head", "path": path})["streamClosed"] is True
    assert joined(adapter.send({"type": "read", "path": path})) == "m0;m1;m2;"


def test_idempotent_close_with_final_message(adapter: AdapterProcess) -> None:
    path = create(adapter, "application/json")
    result = adapter.send({"type": "idempotent-close", "path": path, "producerId": "p",
                           "epoch": 0, "autoClaim": False, "data": '{"end": true}'})
    assert result["status"] == 200 and result["finalOffset"]
    read = adapter.send({"type": "read", "path": path})
    assert joined(read) == '[{"end":true}]' and read["streamClosed"] is True


@pytest.mark.parametrize("content_type, items, expected", [
    ("text/plain", [f"msg-{i:02d};" for i in range(20)],
     "".join(f"msg-{i:02d};" for i in range(20))),
    ("application/json", [json.dumps({"id": i}) for i in range(10)],
     json.dumps([{"id": i} for i in range(10)], separators=(",", ":"))),
])
def test_idempotent_append_batch_with_concurrent_requests(
        adapter: AdapterProcess, content_type: str, items: list[str], expected: str) -> None:
    path = create(adapter, content_type)
    result = adapter.send({"type": "idempotent-append-batch", "path": path, "items": items,
                           "producerId": "batcher", "epoch": 0, "autoClaim": False,
                           "maxInFlight": 5})
    assert result["success"] is True and result["status"] == 200, result
    assert result["producerSeq"] == len(items) - 1  # one request per item
    # In order and exactly once, even though requests raced each other.
    assert joined(adapter.send({"type": "read", "path": path})) == expected
    # The batch producer was detached, not closed: the stream stays open.
    assert adapter.send({"type": "head", "path": path})["streamClosed"] is False


def test_idempotent_append_batch_default_is_one_request(adapter: AdapterProcess) -> None:
    path = create(adapter, "application/json")
    result = adapter.send({"type": "idempotent-append-batch", "path": path,
                           "items": ["true", "false", "null"], "producerId": "b",
                           "epoch": 0, "autoClaim": False})
    assert result["producerSeq"] == 0
    assert joined(adapter.send({"type": "read", "path": path})) == "[true,false,null]"


def test_idempotent_detach_leaves_the_stream_open(adapter: AdapterProcess) -> None:
    path = create(adapter)
    producer = {"path": path, "producerId": "d", "epoch": 0}
    adapter.send({"type": "idempotent-append", **producer, "autoClaim": False, "data": "x"})
    assert adapter.send({"type": "idempotent-detach", **producer}) == {
        "type": "idempotent-detach", "success": True, "status": 200}
    assert adapter.send({"type": "head", "path": path})["streamClosed"] is False
    append(adapter, path, "y")
    assert joined(adapter.send({"type": "read", "path": path})) == "xy"


def test_auto_claim_takes_over_an_epoch_in_use(adapter: AdapterProcess,
                                               server: ReferenceServer) -> None:
    path = create(adapter)
    request = urllib.request.Request(
        server.url + path, data=b"first;", method="POST",
        headers={"content-type": "text/plain", "Producer-Id": "shared",
                 "Producer-Epoch": "0", "Producer-Seq": "0"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    result = adapter.send({"type": "idempotent-append", "path": path, "producerId": "shared",
                           "epoch": 0, "autoClaim": True, "data": "second;"})
    assert result["success"] is True and result["producerEpoch"] == 1, result
    assert joined(adapter.send({"type": "read", "path": path})) == "first;second;"


# -- dynamic headers and params ----------------------------------------------------------------


def test_dynamic_headers_and_params(adapter: AdapterProcess) -> None:
    path = create(adapter)
    assert adapter.send({"type": "set-dynamic-header", "name": "X-Request-Counter",
                         "valueType": "counter"}) == {
        "type": "set-dynamic-header", "success": True}
    adapter.send({"type": "set-dynamic-header", "name": "Authorization",
                  "valueType": "token", "initialValue": "Bearer token-v1"})
    assert adapter.send({"type": "set-dynamic-param", "name": "request_id",
                         "valueType": "counter"}) == {
        "type": "set-dynamic-param", "success": True}
    adapter.send({"type": "set-dynamic-param", "name": "ts", "valueType": "timestamp"})
    try:
        first = append(adapter, path, "a")
        assert first["headersSent"] == {"X-Request-Counter": "1",
                                        "Authorization": "Bearer token-v1"}
        assert first["paramsSent"]["request_id"] == "1"
        assert abs(int(first["paramsSent"]["ts"]) - time.time() * 1000) < 60_000
        read = adapter.send({"type": "read", "path": path})
        assert read["headersSent"]["X-Request-Counter"] == "2"
        assert read["paramsSent"]["request_id"] == "2"
        adapter.send({"type": "set-dynamic-header", "name": "Authorization",
                      "valueType": "token", "initialValue": "Bearer token-v2"})
        refreshed = append(adapter, path, "b")
        assert refreshed["headersSent"] == {"X-Request-Counter": "3",
                                            "Authorization": "Bearer token-v2"}
        live = adapter.send({"type": "read", "path": path, "live": "long-poll",
                             "waitForUpToDate": True})
        assert live["headersSent"]["X-Request-Counter"] == "4" and joined(live) == "ab"
    finally:
        assert adapter.send({"type": "clear-dynamic"}) == {"type": "clear-dynamic",
                                                           "success": True}
    plain = append(adapter, path, "c")
    assert "headersSent" not in plain and "paramsSent" not in plain


# -- validate ------------------------------------------------------------------------------


@pytest.mark.parametrize("target, field", [
    ({"target": "retry-options", "maxRetries": 3, "initialDelayMs": 100, "maxDelayMs": 5000,
      "multiplier": 2.0}, None),
    ({"target": "retry-options", "maxRetries": -1}, "maxRetries"),
    ({"target": "retry-options", "initialDelayMs": 0}, "initialDelayMs"),
    ({"target": "retry-options", "initialDelayMs": -100}, "initialDelayMs"),
    ({"target": "retry-options", "initialDelayMs": 1000, "maxDelayMs": 500}, "maxDelayMs"),
    ({"target": "retry-options", "multiplier": 0.5}, "multiplier"),
    ({"target": "retry-options", "initialDelayMs": 30_000}, None),
    ({"target": "idempotent-producer", "producerId": "p", "epoch": 0,
      "maxBatchBytes": 1048576}, None),
    ({"target": "idempotent-producer", "producerId": "p", "maxBatchBytes": 128 << 20}, None),
    ({"target": "idempotent-producer", "producerId": "p", "epoch": -1}, "epoch"),
    ({"target": "idempotent-producer", "producerId": "p", "maxBatchBytes": 0}, "maxBatchBytes"),
    ({"target": "idempotent-producer", "producerId": "p", "maxBatchBytes": -1},
     "maxBatchBytes"),
    ({"target": "idempotent-producer", "producerId": "p", "maxBatchItems": 0}, "maxBatchItems"),
    ({"target": "idempotent-producer", "producerId": "p", "maxBatchItems": -1},
     "maxBatchItems"),
])
def test_validate(adapter: AdapterProcess, target: dict[str, Any], field: str | None) -> None:
    result = adapter.send({"type": "validate", "target": target})
    if field is None:
        assert result == {"type": "validate", "success": True}
    else:
        assert_error(result, "validate", "INVALID_ARGUMENT")
        assert field in result["message"]  # case-sensitive, as the suite checks it


def test_validate_unknown_target(adapter: AdapterProcess) -> None:
    assert_error(adapter.send({"type": "validate", "target": {"target": "nope"}}),
                 "validate", "NOT_SUPPORTED")


# -- protocol hygiene ----------------------------------------------------------------------


def test_unknown_commands_and_bad_lines_get_one_answer_each(adapter: AdapterProcess) -> None:
    assert_error(adapter.send({"type": "frobnicate"}), "frobnicate", "NOT_SUPPORTED")
    assert adapter.proc.stdin is not None
    adapter.proc.stdin.write(b"this is not json\n")
    adapter.proc.stdin.flush()
    bad = adapter.start({"type": "validate", "target": {"target": "retry-options"}})
    assert bad()["type"] == "error"  # the bad line's answer comes first...
    assert bad() == {"type": "validate", "success": True}  # ...then the command's
    assert adapter.lines.empty()


def test_benchmark_operations(adapter: AdapterProcess) -> None:
    octets = create(adapter, "application/octet-stream")
    json_path = create(adapter, "application/json")
    adapter.send({"type": "idempotent-append-batch", "path": json_path, "producerId": "seed",
                  "epoch": 0, "autoClaim": False,
                  "items": [json.dumps({"n": i}) for i in range(500)]})
    operations: list[tuple[dict[str, Any], int, int]] = [
        ({"op": "append", "path": octets, "size": 100}, 1, 100),
        ({"op": "read", "path": octets}, 1, 100),
        ({"op": "create", "path": new_path()}, 1, 0),
        ({"op": "roundtrip", "path": new_path(), "size": 100}, 1, 200),
        ({"op": "roundtrip", "path": new_path(), "size": 10, "live": "sse",
          "contentType": "application/json"}, 1, -1),
        ({"op": "throughput_append", "path": octets, "count": 2000, "size": 100,
          "concurrency": 200}, 2000, 200_000),
        ({"op": "throughput_read", "path": json_path}, 500,
         sum(len(json.dumps({"n": i}, separators=(",", ":"))) for i in range(500))),
    ]
    for operation, messages, nbytes in operations:
        result = adapter.send({"type": "benchmark", "iterationId": "measure-0",
                               "operation": operation}, timeout=60)
        assert result["type"] == "benchmark" and result["success"] is True, result
        assert result["iterationId"] == "measure-0"
        assert isinstance(result["durationNs"], str) and int(result["durationNs"]) > 0
        assert result["metrics"]["messagesProcessed"] == messages
        if nbytes >= 0:
            assert result["metrics"]["bytesTransferred"] == nbytes, operation
    assert joined(adapter.send({"type": "read", "path": octets})) == "*" * 200_100
    assert_error(adapter.send({"type": "benchmark", "iterationId": "measure-1",
                               "operation": {"op": "nope"}}), "benchmark", "NOT_SUPPORTED")


def test_shutdown_answers_then_exits(durable_streams_server: ReferenceServer,
                                     tmp_path: Path) -> None:
    env_free = AdapterProcess(tmp_path)
    try:
        assert env_free.send({"type": "init", "serverUrl": durable_streams_server.url})[
            "success"] is True
        path = new_path()
        assert env_free.send({"type": "create", "path": path})["status"] == 201
        assert env_free.send({"type": "idempotent-append", "path": path, "producerId": "p",
                              "epoch": 0, "autoClaim": False, "data": "x"})["success"]
        assert env_free.send({"type": "shutdown"}) == {"type": "shutdown", "success": True}
        assert env_free.proc.wait(timeout=10) == 0
        assert env_free.lines.get(timeout=5) is None  # nothing else was written on stdout
    finally:
        env_free.stop()


def test_adapter_is_executable() -> None:
    assert os.access(ADAPTER, os.X_OK)
    assert ADAPTER.read_text().startswith("#!/usr/bin/env python3\n")
