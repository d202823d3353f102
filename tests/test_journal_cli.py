"""`durable-streams append --journal DIR` (README "Crash-safe journal"): a run that cannot
deliver exits 75 once its input is journaled; the next run delivers it first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from producer_helpers import read_json

from durable_streams import DurableStream
from durable_streams.testing import ReferenceServer

ROOT = Path(__file__).parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "durable_streams", *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_append_journal_exits_75_then_the_next_run_delivers_first(
        server: ReferenceServer, json_stream: DurableStream, tmp_path: Path) -> None:
    journal = str(tmp_path / "j")
    url = json_stream.url
    first = _cli("append", url, "1", "--producer-id", "nightly", "--journal", journal)
    assert first.returncode == 0, first.stderr  # the journal learns the content type
    server.inject_fault(url[len(server.url):], status=503, count=100_000, method="POST")
    down = _cli("append", url, "2", "3", "--producer-id", "nightly", "--journal", journal,
                "--delivery-timeout", "1")
    assert down.returncode == 75, down.stderr
    assert "kept in the journal" in down.stderr and journal in down.stderr
    server.clear_faults()
    assert read_json(url) == [1]
    nxt = _cli("append", url, "4", "--producer-id", "nightly", "--journal", journal)
    assert nxt.returncode == 0, nxt.stderr
    assert read_json(url) == [1, 2, 3, 4]


def test_append_journal_needs_a_producer_id(json_stream: DurableStream, tmp_path: Path
                                            ) -> None:
    bad = _cli("append", json_stream.url, json.dumps("b"), "--journal", str(tmp_path / "j"))
    assert bad.returncode == 2 and "--producer-id" in bad.stderr
