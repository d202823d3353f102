"""Run the Durable Streams reference server for tests.

``ReferenceServer`` starts the pinned npm package ``@durable-streams/server`` with ``node`` on
127.0.0.1 and an ephemeral port. The first start installs it (``npm ci``) into a cache
directory; later starts reuse it. The same machinery backs this project's own test suite and
the pytest plugin fixtures below, which any project that installs ``durable_streams`` gets:

- ``durable_streams_server``: a session-wide running :class:`ReferenceServer`.
- ``durable_stream_url``: a fresh, not yet created stream URL on that server.
- ``durable_streams_webhook_server``: a session-wide :class:`ReferenceServer` started with
  webhook subscriptions enabled (``ReferenceServer(webhooks=True)``; the server refuses
  webhook subscriptions otherwise). Subscriptions only see streams under its
  :attr:`ReferenceServer.stream_root` (``{url}/v1/stream``).

Requirements: ``node`` (18 or newer) and ``npm`` on ``PATH``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "SERVER_PACKAGE",
    "SERVER_VERSION",
    "ReferenceServer",
    "ServerUnavailableError",
    "ensure_server_installed",
]

SERVER_PACKAGE = "@durable-streams/server"
SERVER_VERSION = "0.3.7"

_log = logging.getLogger("durable_streams.testing")
_ASSETS = Path(__file__).with_name("_server")
_INSTALL_LOCK = threading.Lock()


class ServerUnavailableError(RuntimeError):
    """The reference server could not be installed or started."""


def _default_install_dir() -> Path:
    override = os.environ.get("DURABLE_STREAMS_SERVER_DIR")
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "durable-streams" / f"reference-server-{SERVER_VERSION}"


def _installed_version(directory: Path) -> str | None:
    manifest = directory / "node_modules" / "@durable-streams" / "server" / "package.json"
    try:
        version = json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return str(version)


def ensure_server_installed(directory: str | Path | None = None) -> Path:
    """Install the pinned reference server into ``directory`` (default: a user cache dir).

    Returns the directory holding the launcher and ``node_modules``. Safe to call often: it
    only runs ``npm ci`` when the pinned version is not there yet.
    """
    target = Path(directory) if directory is not None else _default_install_dir()
    with _INSTALL_LOCK:
        target.mkdir(parents=True, exist_ok=True)
        for name in ("package.json", "package-lock.json"):
            src = _ASSETS / name
            dst = target / name
            if not dst.exists() or dst.read_bytes() != src.read_bytes():
                shutil.copyfile(src, dst)
        # The launcher is named after its content, so two versions of this library sharing
        # the cache (two checkouts, two virtualenvs) never run each other's launcher.
        script = target / _script_name()
        if not script.exists():
            tmp = script.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(_ASSETS / "start.mjs", tmp)
            os.replace(tmp, script)
        if _installed_version(target) == SERVER_VERSION:
            return target
        npm = shutil.which("npm")
        if npm is None:
            raise ServerUnavailableError(
                "npm is not on PATH: install Node.js 18+ with npm to run the reference server"
            )
        lock_file = target / ".install.lock"
        with open(lock_file, "w") as lock:
            _lock_file(lock)
            if _installed_version(target) != SERVER_VERSION:
                _log.info("installing %s@%s into %s", SERVER_PACKAGE, SERVER_VERSION, target)
                proc = subprocess.run(
                    [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                    cwd=target,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if proc.returncode != 0 or _installed_version(target) != SERVER_VERSION:
                    raise ServerUnavailableError(
                        f"npm ci for {SERVER_PACKAGE}@{SERVER_VERSION} failed in {target}: "
                        f"{proc.stderr.strip()[-2000:]}"
                    )
    return target


def _script_name() -> str:
    """``start-<hash>.mjs``: the launcher's name in the install directory."""
    digest = hashlib.sha256((_ASSETS / "start.mjs").read_bytes()).hexdigest()[:12]
    return f"start-{digest}.mjs"


def _lock_file(handle: IO[str]) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: rely on the thread lock only
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)


class ReferenceServer:
    """The Durable Streams reference server in a child ``node`` process.

    Use it as a context manager or call :meth:`start` and :meth:`stop`. With ``data_dir`` the
    server keeps its streams on disk, so :meth:`kill` followed by :meth:`start` simulates a
    crash and restart on the same port. With ``webhooks=True`` the server accepts webhook
    subscriptions (PROTOCOL §6.2) and signs its deliveries with an Ed25519 key made at each
    start (so the key id changes on every restart).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        data_dir: str | Path | None = None,
        long_poll_timeout_ms: int | None = None,
        compression: bool = False,
        webhooks: bool = False,
        install_dir: str | Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.long_poll_timeout_ms = long_poll_timeout_ms
        self.compression = compression
        self.webhooks = webhooks
        self.install_dir = install_dir
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self.url: str = ""

    # -- lifecycle -----------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> ReferenceServer:
        """Start the server (installing it first if needed) and wait until it listens."""
        if self.running:
            return self
        node = shutil.which("node")
        if node is None:
            raise ServerUnavailableError("node is not on PATH: install Node.js 18+")
        directory = ensure_server_installed(self.install_dir)
        env = dict(os.environ)
        env["DS_HOST"] = self.host
        env["DS_PORT"] = str(self.port)
        env["DS_COMPRESSION"] = "1" if self.compression else "0"
        env["DS_WEBHOOKS"] = "1" if self.webhooks else "0"
        if self.data_dir is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            env["DS_DATA_DIR"] = str(self.data_dir)
        if self.long_poll_timeout_ms is not None:
            env["DS_LONG_POLL_MS"] = str(self.long_poll_timeout_ms)
        if self._stderr is None:
            # Closed in __exit__ (or at garbage collection); it outlives start()/kill().
            self._stderr = tempfile.TemporaryFile(  # noqa: SIM115
                prefix="ds-server-", suffix=".log"
            )
        self._proc = subprocess.Popen(
            [node, _script_name()],
            cwd=directory,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        url = self._wait_ready()
        self.url = url
        self.port = int(url.rsplit(":", 1)[1])
        return self

    def _wait_ready(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        result: list[str] = []
        stdout = self._proc.stdout

        def reader() -> None:
            for raw in stdout:
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith("READY "):
                    result.append(line[6:])
                    return

        thread = threading.Thread(target=reader, name="ds-server-ready", daemon=True)
        thread.start()
        thread.join(self.startup_timeout)
        if not result:
            self._terminate(force=True)
            raise ServerUnavailableError(
                f"the reference server did not start within {self.startup_timeout}s: "
                f"{self.log_tail()}"
            )
        return result[0]

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the server process exits, at most ``timeout`` seconds (``None``: no
        limit); return its exit code, or ``None`` if it is still running (or never started).
        ``durable-streams serve`` waits here in the foreground."""
        proc = self._proc
        if proc is None:
            return None
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """Stop the server gracefully (closing its stdin); kill it if it does not exit."""
        self._terminate(force=False)

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash would."""
        self._terminate(force=True)

    def restart(self) -> ReferenceServer:
        """Stop and start again on the same port (streams survive only with ``data_dir``)."""
        self.stop()
        return self.start()

    def _terminate(self, *, force: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if force:
            proc.kill()
        else:
            with contextlib.suppress(OSError):
                if proc.stdin is not None:
                    proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def log_tail(self, limit: int = 4000) -> str:
        """The end of the server's stderr log (for failure messages)."""
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        data = self._stderr.read()
        self._stderr.seek(0, os.SEEK_END)
        return bytes(data[-limit:]).decode("utf-8", "replace")

    def __enter__(self) -> ReferenceServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    # -- helpers -------------------------------------------------------------------------
    @property
    def stream_root(self) -> str:
        """The stream root that subscriptions see (``{url}/v1/stream``): subscription bodies
        name streams relative to it, and the control APIs live under ``{root}/__ds/``."""
        return f"{self.url}/v1/stream"

    def stream_url(self, name: str | None = None) -> str:
        """A URL on this server for a stream (a fresh unique one when ``name`` is omitted)."""
        return f"{self.url}/{name or 'test-' + uuid.uuid4().hex}"

    def inject_fault(self, path_or_url: str, **fault: Any) -> None:
        """Ask the server to misbehave on a stream path (POST /_test/inject-error).

        Keyword arguments are the server's fault fields: ``status``, ``count``,
        ``retryAfter``, ``method``, ``probability``, ``delayMs``, ``jitterMs``,
        ``dropConnection``, ``truncateBodyBytes``, ``corruptBody``, ``injectSseEvent``.
        """
        path = path_or_url[len(self.url) :] if path_or_url.startswith(self.url) else path_or_url
        body = json.dumps({"path": path, **fault}).encode()
        request = urllib.request.Request(
            f"{self.url}/_test/inject-error",
            data=body,
            method="POST",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def clear_faults(self) -> None:
        """Remove every injected fault."""
        request = urllib.request.Request(f"{self.url}/_test/inject-error", method="DELETE")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


# -- pytest plugin ---------------------------------------------------------------------------
try:
    import pytest
except ImportError:  # pragma: no cover - the helpers above work without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    def _running(server: ReferenceServer) -> Iterator[ReferenceServer]:
        """Start ``server`` (a clear test failure if Node is missing), yield it, stop it."""
        try:
            server.start()
        except ServerUnavailableError as exc:  # pragma: no cover - environment problem
            pytest.fail(str(exc), pytrace=False)
        try:
            yield server
        finally:
            server.stop()

    @pytest.fixture(scope="session")
    def durable_streams_server() -> Iterator[ReferenceServer]:
        """A reference server running for the whole test session."""
        yield from _running(ReferenceServer())

    @pytest.fixture(scope="session")
    def durable_streams_webhook_server() -> Iterator[ReferenceServer]:
        """A reference server with webhook subscriptions enabled, for the whole session.

        Create streams under ``server.stream_root`` and webhook subscriptions at
        ``{server.stream_root}/__ds/subscriptions/{id}``; the signing keys are published at
        ``{server.stream_root}/__ds/jwks.json``.
        """
        yield from _running(ReferenceServer(webhooks=True))

    @pytest.fixture
    def durable_stream_url(durable_streams_server: ReferenceServer) -> str:
        """A unique stream URL on the session's reference server (not created)."""
        return durable_streams_server.stream_url()

