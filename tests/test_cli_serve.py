"""``durable-streams serve``: the pinned reference server in the foreground (README,
"Quickstart"), run as a real subprocess: it prints its URL, serves, and Ctrl-C stops it."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from durable_streams import DurableStream, RetryPolicy, Subscription, TransportError, stream

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
NO_RETRY = RetryPolicy(max_retries=0)


@contextmanager
def serving(*args: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc = subprocess.Popen([sys.executable, "-m", "durable_streams", "serve", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 90)  # first run: npm ci
        assert ready, "serve printed no URL within 90 s"
        line = proc.stdout.readline().decode().strip()
        assert line.startswith("http://127.0.0.1:"), (line, proc.stderr.read() if
                                                      proc.poll() is not None else b"")
        yield proc, line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def stop_with_ctrl_c(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=20)


def test_serve_prints_its_url_serves_and_stops_on_ctrl_c() -> None:
    with serving("--port", "0") as (proc, base):
        url = f"{base}/v1/stream/serve-{uuid.uuid4().hex[:8]}"
        with DurableStream.create(url, content_type="application/json") as handle:
            handle.append({"n": 1})
        with stream(url) as res:
            assert res.read_json() == [{"n": 1}]
        assert stop_with_ctrl_c(proc) == 0
        assert proc.stderr is not None
        assert b"Traceback" not in proc.stderr.read()
        # Stopped means stopped: nothing listens there any more.
        with pytest.raises(TransportError):
            DurableStream(url, retry=NO_RETRY).head()


def test_serve_keeps_streams_in_data_dir_and_accepts_webhooks(tmp_path: Path) -> None:
    data = tmp_path / "data"
    name = f"kept-{uuid.uuid4().hex[:8]}"
    with serving("--port", "0", "--data-dir", str(data), "--webhooks") as (proc, base):
        root = f"{base}/v1/stream"
        DurableStream.create(f"{root}/{name}", content_type="application/json").append([1])
        # Webhook subscriptions are refused unless the server runs with --webhooks.
        sub = Subscription.create(root, f"sub-{name}", streams=[name],
                                  webhook_url="http://127.0.0.1:9/hook")
        assert sub.created
        sub.close()
        assert stop_with_ctrl_c(proc) == 0
    assert data.is_dir() and any(data.iterdir())
    with serving("--port", "0", "--data-dir", str(data)) as (proc, base):
        with stream(f"{base}/v1/stream/{name}") as res:
            assert res.read_json() == [[1]]
        assert stop_with_ctrl_c(proc) == 0


def test_serve_reports_a_port_in_use() -> None:
    with serving("--port", "0") as (proc, base):
        port = base.rsplit(":", 1)[1]
        second = subprocess.run([sys.executable, "-m", "durable_streams", "serve",
                                 "--port", port], capture_output=True, timeout=60,
                                stdin=subprocess.DEVNULL)
        assert second.returncode == 1
        err = second.stderr.decode()
        assert f"is port {port} in use?" in err and "Traceback" not in err
        assert stop_with_ctrl_c(proc) == 0
