"""IdempotentProducer across process boundaries: os.fork() with a live producer, pending
messages at interpreter exit, and the same producer id used by two runs of a job.

Forks happen in the test process only with a child that leaves through ``os._exit`` (it
never returns into pytest). Exit-time behaviour is checked in fresh Python processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from durable_streams import (
    DeliveryError,
    DurableStream,
    IdempotentProducer,
    ProducerForkedError,
    RetryPolicy,
    StaleEpochError,
)
from durable_streams.testing import ReferenceServer

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python 3.12+ warns about fork() in a multi-threaded process: that is the point here.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

JSON = "application/json"
FAST = RetryPolicy(initial_delay_ms=2, max_delay_ms=50)
REPO = str(Path(__file__).resolve().parents[1])


def read_json(url: str) -> list[Any]:
    response = requests.get(url, params={"offset": "-1"}, timeout=30)
    response.raise_for_status()
    body = json.loads(response.content)
    assert isinstance(body, list)
    return body


# -- fork helpers -------------------------------------------------------------------------------


def fork_and_run(child: Callable[[], dict[str, Any]], *, timeout: float = 20.0,
                 holding: list[Any] | None = None) -> dict[str, Any]:
    """Run ``child`` in a forked process and return what it reported (a JSON dict).

    The child always leaves with ``os._exit``. If it has not finished within ``timeout``
    (a deadlock), it is killed and the test fails. The locks in ``holding`` are held by
    this thread at the moment of the fork.
    """
    read_fd, write_fd = os.pipe()
    with contextlib.ExitStack() as stack:
        for lock in holding or ():
            stack.enter_context(lock)
        pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 0
        try:
            os.close(read_fd)
            try:
                result = child()
            except BaseException as exc:
                result = {"crashed": f"{type(exc).__name__}: {exc}"}
                code = 3
            with os.fdopen(write_fd, "w") as out:
                out.write(json.dumps(result))
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.append(_read_all(read_fd)), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail(f"the forked child did not finish within {timeout}s (deadlock?)")
    reader.join(5)
    assert status is not None and os.WIFEXITED(status)
    report: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    assert "crashed" not in report, report
    assert os.WEXITSTATUS(status) == 0, report
    return report


def _read_all(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as f:
        return f.read()


def timed(call: Callable[[], Any]) -> tuple[str, float]:
    """Run ``call``; return the name of what it raised ('' if nothing) and the seconds."""
    start = time.monotonic()
    try:
        call()
        outcome = ""
    except Exception as exc:
        outcome = type(exc).__name__
    return outcome, time.monotonic() - start


# -- fork -----------------------------------------------------------------------------------


def test_fork_while_another_thread_appends_heavily(json_stream: DurableStream) -> None:
    """Fork several times while a thread appends as fast as it can and the senders are busy
    (so the producer's locks are likely held at the moment of the fork). In each child the
    inherited producer refuses promptly with ProducerForkedError, nothing deadlocks, and a
    new producer made in the child delivers. The parent loses and duplicates nothing."""
    parent = IdempotentProducer(json_stream, "parent", retry=FAST, max_in_flight=3)
    stop = threading.Event()
    appended: list[int] = []

    def appender() -> None:
        i = 0
        while not stop.is_set() and i < 200_000:
            parent.append(f'["parent",{i}]')
            appended.append(i)
            i += 1

    worker = threading.Thread(target=appender)
    worker.start()
    try:
        assert _wait_for(lambda: len(appended) > 2000)
        for k in range(3):
            def child(k: int = k) -> dict[str, Any]:
                report: dict[str, Any] = {}
                report["append"] = timed(lambda: parent.append('"child"'))
                report["flush"] = timed(lambda: parent.flush(timeout=5))
                report["close_stream"] = timed(lambda: parent.close_stream())
                report["close"] = timed(lambda: parent.close(timeout=5))
                report["append_after_close"] = timed(lambda: parent.append('"child"'))
                fresh = IdempotentProducer(json_stream.url, f"child-{k}", content_type=JSON,
                                           retry=FAST)
                for i in range(10):
                    fresh.append(f'["child-{k}",{i}]')
                report["fresh_close"] = timed(lambda: fresh.close(timeout=10))
                return report

            report = fork_and_run(child)
            for call in ("append", "flush", "close_stream"):
                outcome, seconds = report[call]
                assert outcome == "ProducerForkedError", (call, report)
                assert seconds < 1.0, (call, report)
            assert report["close"][0] in ("", "ProducerForkedError"), report
            assert report["close"][1] < 1.0
            assert report["append_after_close"][0] in ("ProducerForkedError",
                                                       "ProducerClosedError"), report
            assert report["fresh_close"][0] == "", report
    finally:
        stop.set()
        worker.join(30)
    parent.close(timeout=30)
    got = read_json(json_stream.url)
    mine = [i for who, i in got if who == "parent"]
    assert mine == appended  # every parent message exactly once, in order
    for k in range(3):
        assert [i for who, i in got if who == f"child-{k}"] == list(range(10))
    assert len(got) == len(appended) + 30


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def test_fork_while_the_producer_lock_is_held(json_stream: DurableStream) -> None:
    """The worst case, made deterministic: the producer's internal locks are held at the
    moment of the fork (as a sender or appender thread would hold them). The child must
    still get ProducerForkedError at once rather than block on a lock nobody will release.
    This reaches into private attributes on purpose; it fails if they are renamed."""
    parent = IdempotentProducer(json_stream, "parent", retry=FAST)
    parent.append('"p"')
    parent.flush()
    # The producer lock and the sender pool's seal lock (producer.py documents both).
    locks = [getattr(parent, "_lock", None),
             getattr(getattr(parent, "_pool", None), "seal_lock", None)]
    assert all(hasattr(lock, "acquire") for lock in locks), (
        "the producer's internal locks moved: update this test, do not skip it")

    def child() -> dict[str, Any]:
        fresh = IdempotentProducer(json_stream.url, "child", content_type=JSON, retry=FAST)
        fresh.append('"c"')
        return {"append": timed(lambda: parent.append('"x"')),
                "flush": timed(lambda: parent.flush(timeout=2)),
                "stats": timed(parent.stats),
                "close": timed(lambda: parent.close(timeout=2)),
                "fresh": timed(lambda: fresh.close(timeout=10))}

    report = fork_and_run(child, holding=locks)
    assert report["append"][0] == "ProducerForkedError"
    assert report["flush"][0] == "ProducerForkedError"
    for call in ("append", "flush", "stats", "close"):
        assert report[call][1] < 1.0, (call, report)
    assert report["fresh"][0] == ""
    parent.close()
    assert read_json(json_stream.url) == ["p", "c"]


def test_fork_error_names_the_fix(json_stream: DurableStream) -> None:
    parent = IdempotentProducer(json_stream, "parent", retry=FAST)
    parent.append('"p"')
    parent.flush()

    def child() -> dict[str, Any]:
        try:
            parent.append('"c"')
        except ProducerForkedError as exc:
            return {"message": str(exc), "code": exc.code}
        return {"message": ""}

    report = fork_and_run(child)
    assert "fork" in report["message"]
    assert report["code"] == "FORKED"
    parent.close()
    assert read_json(json_stream.url) == ["p"]


def test_child_with_same_id_and_auto_claim_takes_over(json_stream: DurableStream) -> None:
    """A child that reuses the parent's producer id must claim a new epoch (auto_claim);
    the parent, still on the old epoch, is then fenced instead of interleaving seqs."""
    parent = IdempotentProducer(json_stream, "worker", retry=FAST)
    for i in range(5):
        parent.append(f'"parent-{i}"')
    parent.flush()

    def child() -> dict[str, Any]:
        fresh = IdempotentProducer(json_stream.url, "worker", auto_claim=True,
                                   content_type=JSON, retry=FAST)
        for i in range(5):
            fresh.append(f'"child-{i}"')
        fresh.close(timeout=10)
        return {"epoch": fresh.epoch}

    report = fork_and_run(child)
    assert report["epoch"] >= 1
    assert read_json(json_stream.url) == [f"parent-{i}" for i in range(5)] + [
        f"child-{i}" for i in range(5)]
    parent.append('"parent-late"')
    with pytest.raises(DeliveryError) as info:
        parent.flush(timeout=10)
    assert any(isinstance(e, StaleEpochError) for e in info.value.errors)
    with pytest.raises(StaleEpochError):
        parent.append('"again"')
    with contextlib.suppress(DeliveryError):
        parent.close()
    assert "parent-late" not in read_json(json_stream.url)


# -- subprocess helpers ---------------------------------------------------------------------


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO,
    )


PRELUDE = """
import json, logging, os, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
from durable_streams import IdempotentProducer, RetryPolicy
url = sys.argv[1]
FAST = RetryPolicy(initial_delay_ms=2, max_delay_ms=50)
"""


# -- interpreter exit -------------------------------------------------------------------------


def test_pending_messages_are_delivered_at_interpreter_exit(json_stream: DurableStream) -> None:
    proc = run_python(PRELUDE + """
p = IdempotentProducer(url, "exit", content_type="application/json", linger_ms=60_000,
                       retry=FAST)
for i in range(100):
    p.append(json.dumps(i))
# no flush, no close: the script just ends
""", json_stream.url)
    assert proc.returncode == 0, proc.stderr
    assert read_json(json_stream.url) == list(range(100))


def test_sys_exit_inside_with_block_delivers(json_stream: DurableStream) -> None:
    proc = run_python(PRELUDE + """
with IdempotentProducer(url, "exit", content_type="application/json", linger_ms=60_000,
                        retry=FAST) as p:
    for i in range(50):
        p.append(json.dumps(i))
    sys.exit(3)
""", json_stream.url)
    assert proc.returncode == 3, proc.stderr
    assert read_json(json_stream.url) == list(range(50))


def test_uncaught_exception_still_delivers_pending(json_stream: DurableStream) -> None:
    proc = run_python(PRELUDE + """
p = IdempotentProducer(url, "exit", content_type="application/json", linger_ms=60_000,
                       retry=FAST)
p.append('"before the crash"')
raise RuntimeError("job crashed")
""", json_stream.url)
    assert proc.returncode == 1
    assert "job crashed" in proc.stderr
    assert read_json(json_stream.url) == ["before the crash"]


def test_exit_with_server_down_is_bounded_and_logged() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = sock.getsockname()[1]
    try:
        start = time.monotonic()
        proc = run_python(PRELUDE + """
p = IdempotentProducer(url, "exit", content_type="application/json", retry=FAST,
                       exit_timeout_ms=1_000)
p.append('"nowhere to go"')
""", f"http://127.0.0.1:{port}/down")
        elapsed = time.monotonic() - start
    finally:
        sock.close()
    assert proc.returncode == 0
    assert elapsed < 15  # exit_timeout_ms=1_000 plus interpreter start-up and shutdown
    assert "not delivered" in proc.stderr


def test_flush_at_exit_can_be_disabled(json_stream: DurableStream) -> None:
    proc = run_python(PRELUDE + """
p = IdempotentProducer(url, "exit", content_type="application/json", linger_ms=60_000,
                       retry=FAST, flush_at_exit=False)
p.append('"dropped on purpose"')
""", json_stream.url)
    assert proc.returncode == 0, proc.stderr
    assert read_json(json_stream.url) == []


def test_forked_child_exiting_normally_does_not_send_parents_buffer(
        json_stream: DurableStream) -> None:
    """The child's copy of the buffer belongs to the parent: the child's interpreter exit
    must not flush it (that would duplicate the parent's messages or reuse its seqs)."""
    proc = run_python(PRELUDE + """
p = IdempotentProducer(url, "forky", content_type="application/json", linger_ms=60_000,
                       retry=FAST)
for i in range(10):
    p.append(json.dumps(i))
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit: atexit handlers run in the child
_, status = os.waitpid(pid, 0)
assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
p.close()
""", json_stream.url)
    assert proc.returncode == 0, proc.stderr
    assert read_json(json_stream.url) == list(range(10))


# -- the same producer id in two runs of a job --------------------------------------------------

NIGHTLY_JOB = PRELUDE + """
run, auto_claim, count = sys.argv[2], sys.argv[3] == "1", int(sys.argv[4])
p = IdempotentProducer(url, "nightly-job", content_type="application/json", retry=FAST,
                       auto_claim=auto_claim, max_batch_items=10, linger_ms=0)
messages = [json.dumps(f"{run}-{i}") for i in range(count)]
refused, undelivered, failure = [], [], None
for i, m in enumerate(messages):
    try:
        p.append(m)
    except Exception as exc:  # a fenced producer refuses further appends: stop the loop
        refused = [json.loads(x) for x in messages[i:]]
        failure = exc
        break
try:
    p.close(timeout=30)
except Exception as exc:
    undelivered = [json.loads(x) for x in getattr(exc, "undelivered", ())]
    failure = failure or exc
print(json.dumps({"epoch": p.epoch, "undelivered": undelivered, "refused": refused}))
if failure is not None:
    print(f"job failed: {type(failure).__name__}: {failure}", file=sys.stderr)
    sys.exit(2)
"""


def job_report(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def test_same_producer_id_two_runs_with_auto_claim(json_stream: DurableStream) -> None:
    first = run_python(NIGHTLY_JOB, json_stream.url, "run1", "1", "30")
    assert first.returncode == 0, first.stderr
    second = run_python(NIGHTLY_JOB, json_stream.url, "run2", "1", "30")
    assert second.returncode == 0, second.stderr
    assert job_report(second)["epoch"] >= 1
    assert read_json(json_stream.url) == [f"run{r}-{i}" for r in (1, 2) for i in range(30)]


def test_same_producer_id_two_runs_without_auto_claim_fails_loudly(
        json_stream: DurableStream) -> None:
    first = run_python(NIGHTLY_JOB, json_stream.url, "run1", "0", "30")
    assert first.returncode == 0, first.stderr
    second = run_python(NIGHTLY_JOB, json_stream.url, "run2", "0", "100")
    assert second.returncode != 0
    assert "auto_claim" in second.stderr  # the error names the fix
    report = job_report(second)
    not_delivered = report["undelivered"] + report["refused"]
    assert not_delivered, "the second run must report what it could not deliver"
    got = read_json(json_stream.url)
    assert got[:30] == [f"run1-{i}" for i in range(30)]
    delivered = got[30:]
    sent = [f"run2-{i}" for i in range(100)]
    # Nothing silently dropped, nothing duplicated: each run-2 message is in the stream
    # once, or reported undelivered, or was refused by append() -- exactly one of these.
    assert len(delivered) == len(set(delivered))
    assert len(not_delivered) == len(set(not_delivered))
    assert set(delivered).isdisjoint(not_delivered)
    assert sorted(delivered + not_delivered, key=sent.index) == sent


def test_same_producer_id_across_server_restart_on_disk(tmp_path: Path) -> None:
    """The nightly job again, against an on-disk server restarted between runs."""
    with ReferenceServer(data_dir=tmp_path / "data") as private:
        url = private.stream_url("nightly")
        DurableStream.create(url, content_type=JSON).close()
        first = run_python(NIGHTLY_JOB, url, "run1", "1", "20")
        assert first.returncode == 0, first.stderr
        private.restart()
        second = run_python(NIGHTLY_JOB, url, "run2", "1", "20")
        assert second.returncode == 0, second.stderr
        assert read_json(url) == [f"run{r}-{i}" for r in (1, 2) for i in range(20)]
