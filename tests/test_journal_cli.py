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


def _pending(journal: str) -> dict[str, object]:
    shown = _cli("journal", journal, "--json")
    assert shown.returncode == 0, shown.stderr
    data: dict[str, object] = json.loads(shown.stdout)
    return data


def test_journal_shows_pending_then_drain_delivers_exactly_once(
        server: ReferenceServer, json_stream: DurableStream, tmp_path: Path) -> None:
    journal = str(tmp_path / "j")
    url = json_stream.url
    # user-info and a query value in the URL the user gives: neither may reach the output
    secret_url = url.replace("http://", "http://user:hunter2@") + "?token=sekrit"
    assert _cli("append", secret_url, "1", "--producer-id", "nightly",
                "--journal", journal).returncode == 0
    path = url[len(server.url):]
    server.inject_fault(path, status=503, count=100_000, method="POST")
    down = _cli("append", url, "2", "3", "--producer-id", "nightly", "--journal", journal,
                "--delivery-timeout", "1")
    assert down.returncode == 75, down.stderr
    info = _pending(journal)
    assert info["stream"] == url and info["producer_id"] == "nightly"
    assert info["pending_messages"] == 2 and info["pending_batches"] >= 1
    assert info["pending_bytes"] == 2  # b"2" and b"3"
    assert info["content_type"] == "application/json"
    text = _cli("journal", journal)
    assert text.returncode == 0 and "2 messages" in text.stdout and "nightly" in text.stdout
    for out in (text.stdout + text.stderr, json.dumps(info)):
        assert "hunter2" not in out and "sekrit" not in out
    still = _cli("journal", journal, "--drain", "--delivery-timeout", "1")
    assert still.returncode == 75, still.stderr
    assert _pending(journal)["pending_messages"] == 2
    server.clear_faults()
    assert read_json(url) == [1]
    other = _cli("journal", journal, url + "-other", "--drain")
    assert other.returncode == 2 and "belongs to" in other.stderr
    drained = _cli("journal", journal, secret_url, "--drain")
    assert drained.returncode == 0, drained.stderr
    assert read_json(url) == [1, 2, 3]
    assert _pending(journal)["pending_messages"] == 0
    again = _cli("journal", journal, "--drain")
    assert again.returncode == 0, again.stderr
    assert read_json(url) == [1, 2, 3]  # nothing sent twice


def test_journal_of_a_directory_without_one_is_a_usage_error(tmp_path: Path) -> None:
    empty = _cli("journal", str(tmp_path))
    assert empty.returncode == 2 and "holds no journal" in empty.stderr
    missing = _cli("journal", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not a directory" in missing.stderr


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed: nothing listens there


def test_first_run_with_the_server_unreachable_journals_with_content_type(
        tmp_path: Path) -> None:
    journal = str(tmp_path / "j")
    port = _free_port()
    dead = f"http://127.0.0.1:{port}/cron-first"
    # Without --content-type a first run cannot know how to frame its input: it fails (1)
    # and nothing is accepted.
    blind = _cli("append", dead, "1", "--producer-id", "cron", "--journal", journal,
                 "--timeout", "2")
    assert blind.returncode == 1, blind.stderr
    down = _cli("append", dead, "1", "2", "--producer-id", "cron", "--journal", journal,
                "--content-type", "application/json", "--timeout", "2",
                "--delivery-timeout", "1")
    assert down.returncode == 75, down.stderr
    info = _pending(journal)
    assert info["pending_messages"] == 2 and info["content_type"] == "application/json"
    assert info["stream"] == dead and info["producer_id"] == "cron"
    bad = _cli("append", dead, "3", "--producer-id", "cron", "--journal", journal,
               "--content-type", "text/plain", "--timeout", "2")
    assert bad.returncode == 2 and "does not match" in bad.stderr
    # The server comes up at that address: the next run delivers the journal first.
    with ReferenceServer(port=port) as srv:
        url = srv.stream_url("cron-first")
        assert url == dead
        DurableStream.create(url, content_type="application/json").close()
        nxt = _cli("append", url, "3", "--producer-id", "cron", "--journal", journal)
        assert nxt.returncode == 0, nxt.stderr
        assert read_json(url) == [1, 2, 3]
        assert _pending(journal)["pending_messages"] == 0
        mismatch = _cli("append", url, "4", "--producer-id", "cron", "--journal", journal,
                        "--content-type", "text/plain")
        assert mismatch.returncode == 2 and "does not match" in mismatch.stderr
        assert read_json(url) == [1, 2, 3]
