"""durable_streams.testing: the reference-server helpers users get for their own tests
(README, design decision 9). These start their own servers; the session server is left alone."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import durable_streams.testing as testing
from durable_streams import DurableStream
from durable_streams.testing import (
    SERVER_PACKAGE,
    SERVER_VERSION,
    ReferenceServer,
    ServerUnavailableError,
    ensure_server_installed,
)


@pytest.fixture
def own_server() -> Iterator[ReferenceServer]:
    srv = ReferenceServer()
    try:
        yield srv.start()
    finally:
        srv.stop()


def test_start_and_stop() -> None:
    """start() gives a live 127.0.0.1 URL on an ephemeral port; stop() ends the process."""
    srv = ReferenceServer()
    assert not srv.running and srv.pid is None
    srv.start()
    try:
        assert srv.running and srv.pid
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", srv.url)
        assert srv.port == int(srv.url.rsplit(":", 1)[1]) != 0
        pid = srv.pid
        assert srv.start() is srv and srv.pid == pid  # starting again is a no-op
        url = srv.stream_url()
        assert requests.put(url, timeout=10).status_code == 201
    finally:
        srv.stop()
    assert not srv.running and srv.pid is None
    with pytest.raises(requests.ConnectionError):
        requests.head(url, timeout=5)
    srv.stop()  # idempotent


def test_context_manager() -> None:
    with ReferenceServer() as srv:
        assert srv.running
        with DurableStream.create(srv.stream_url(), content_type="text/plain") as handle:
            handle.append("hi")
    assert not srv.running
    assert srv.log_tail() == ""  # the log file is released on exit


def test_stream_url_unique_and_named(own_server: ReferenceServer) -> None:
    urls = {own_server.stream_url() for _ in range(1000)}
    assert len(urls) == 1000
    assert all(u.startswith(own_server.url + "/") for u in urls)
    assert own_server.stream_url("orders") == f"{own_server.url}/orders"


def test_durable_stream_url_fixture_is_fresh(durable_stream_url: str,
                                             durable_streams_server: ReferenceServer) -> None:
    """The pytest plugin's fixtures: a running server and a not-yet-created stream URL."""
    assert durable_streams_server.running
    assert durable_stream_url.startswith(durable_streams_server.url + "/")
    assert requests.head(durable_stream_url, timeout=10).status_code == 404


def test_inject_fault_and_clear_faults(own_server: ReferenceServer) -> None:
    url = own_server.stream_url()
    requests.put(url, timeout=10)
    own_server.inject_fault(url, status=503, count=5, retryAfter=3)  # full URL form
    response = requests.head(url, timeout=10)
    assert response.status_code == 503
    assert response.headers.get("Retry-After") == "3"
    own_server.clear_faults()
    assert requests.head(url, timeout=10).status_code == 200
    path = url[len(own_server.url):]
    own_server.inject_fault(path, status=418, count=1, method="DELETE")  # path form
    assert requests.head(url, timeout=10).status_code == 200  # other methods untouched
    assert requests.delete(url, timeout=10).status_code == 418
    assert requests.delete(url, timeout=10).status_code == 204  # count=1 used up


def test_kill_and_start_with_data_dir_keeps_data(tmp_path: Path) -> None:
    """On-disk mode: a crash (SIGKILL) and restart on the same port keeps the streams."""
    srv = ReferenceServer(data_dir=tmp_path / "data")
    srv.start()
    try:
        url = srv.stream_url("durable")
        with DurableStream.create(url, content_type="text/plain") as handle:
            handle.append("hello ")
            tail = handle.append("world")
        port, pid = srv.port, srv.pid
        srv.kill()
        assert not srv.running
        srv.start()
        assert srv.port == port and srv.pid != pid
        assert srv.stream_url("durable") == url
        with DurableStream.connect(url) as again:
            assert again.head().offset == tail
            assert again.append("!") > tail
        body = requests.get(url, params={"offset": "-1"}, timeout=10).content
        assert body == b"hello world!"
        assert any((tmp_path / "data").iterdir())
    finally:
        srv.stop()


def test_restart_in_memory_loses_data(own_server: ReferenceServer) -> None:
    url = own_server.stream_url()
    DurableStream.create(url).close()
    port = own_server.port
    own_server.restart()
    assert own_server.port == port
    assert requests.head(url, timeout=10).status_code == 404


# -- installation ---------------------------------------------------------------------------


def _fake_install(directory: Path, version: str = SERVER_VERSION) -> None:
    manifest = directory / "node_modules" / "@durable-streams" / "server" / "package.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"name": SERVER_PACKAGE, "version": version}))


def _no_npm(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError(f"npm must not run: {args!r}")


def test_ensure_server_installed_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real install dir: a second call finds the pinned version and runs nothing."""
    first = ensure_server_installed()
    monkeypatch.setattr(subprocess, "run", _no_npm)
    second = ensure_server_installed()
    assert first == second
    assert testing._installed_version(second) == SERVER_VERSION
    for name in ("package.json", "package-lock.json"):
        assert (second / name).read_bytes() == (testing._ASSETS / name).read_bytes()
    launcher = second / testing._script_name()
    assert launcher.read_bytes() == (testing._ASSETS / "start.mjs").read_bytes()
    pinned = json.loads((second / "package.json").read_text())["dependencies"][SERVER_PACKAGE]
    assert pinned == SERVER_VERSION


def test_ensure_server_installed_refreshes_assets_without_npm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_install(tmp_path)
    (tmp_path / "package.json").write_text("{}")  # stale
    (tmp_path / "start-0123456789ab.mjs").write_text("// another library version's launcher")
    monkeypatch.setattr(subprocess, "run", _no_npm)
    assert ensure_server_installed(tmp_path) == tmp_path
    pinned = (testing._ASSETS / "package.json").read_bytes()
    assert (tmp_path / "package.json").read_bytes() == pinned
    launcher = tmp_path / testing._script_name()
    assert launcher.read_bytes() == (testing._ASSETS / "start.mjs").read_bytes()
    # The other version's launcher is left alone (it may be running right now).
    assert (tmp_path / "start-0123456789ab.mjs").read_text().startswith("//")


def test_install_without_npm_is_a_clear_error(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_install(tmp_path, version="0.0.1")  # wrong version: an install would be needed
    monkeypatch.setattr(testing.shutil, "which", lambda name: None)
    with pytest.raises(ServerUnavailableError, match="npm"):
        ensure_server_installed(tmp_path)


def test_start_without_node_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testing.shutil, "which", lambda name: None)
    with pytest.raises(ServerUnavailableError, match="node"):
        ReferenceServer().start()


def test_server_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    """A broken install makes node exit at once: a ServerUnavailableError with the log."""
    _fake_install(tmp_path)  # a manifest but no code: the import fails
    srv = ReferenceServer(install_dir=tmp_path, startup_timeout=20)
    with pytest.raises(ServerUnavailableError, match="did not start") as info:
        srv.start()
    assert "durable-streams" in str(info.value) or "Cannot find" in str(info.value)
    assert not srv.running
