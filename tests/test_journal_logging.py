"""`DurableStreamHandler(..., journal=DIR)` (README "Crash-safe journal"): records logged
while the server refuses appends survive `kill -9` of the logging process, and the next
process's handler on the same journal delivers them exactly once, in order."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

from producer_helpers import read_json

from durable_streams import DurableStream
from durable_streams.logging import DurableStreamHandler
from durable_streams.testing import ReferenceServer

ROOT = Path(__file__).parents[1]

CHILD = r"""
import logging, sys
sys.path.insert(0, sys.argv[3])
from durable_streams.logging import DurableStreamHandler
h = DurableStreamHandler(sys.argv[1], producer_id="logj", journal=sys.argv[2])
log = logging.getLogger("app")
log.addHandler(h)
log.setLevel(logging.INFO)
log.info("r0")
h.flush()  # the stream is checked and r0 acknowledged: later records go to the journal
assert h.available
print("ready", flush=True)
sys.stdin.readline()  # the server now refuses appends
for i in range(1, 21):
    log.info("r%d", i)
print("logged", flush=True)
sys.stdin.readline()  # killed here
"""


def _messages(url: str) -> list[str]:
    return [r["message"] for r in read_json(url)]


def test_logged_records_survive_kill_9_and_the_next_handler_delivers_them(
        server: ReferenceServer, json_stream: DurableStream, tmp_path: Path) -> None:
    journal = str(tmp_path / "j")
    url = json_stream.url
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, journal, str(ROOT)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "ready"
        server.inject_fault(url[len(server.url):], status=503, count=100_000,
                            method="POST")
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "logged"
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=30)
    server.clear_faults()
    assert _messages(url) == ["r0"]
    handler = DurableStreamHandler(url, producer_id="logj", journal=journal,
                                   close_timeout=30)
    try:
        handler.emit(logging.LogRecord("app", logging.INFO, __file__, 1, "r21", None, None))
        handler.flush()
    finally:
        handler.close()
    assert handler.dropped == 0
    assert _messages(url) == [f"r{i}" for i in range(22)]
