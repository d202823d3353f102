"""The official TypeScript client as a baseline: ``@durable-streams/client``, pinned.

``benchmarks/ts_client/package.json`` and ``package-lock.json`` pin the release (as
``durable_streams/_server/`` pins the server); :meth:`TsClient.ensure` runs ``npm ci`` there
once (``node_modules`` is git-ignored) and :meth:`TsClient.throughput` runs
``ts_client/bench.mjs`` in Node: its ``IdempotentProducer`` with default options, a fresh
stream and a fresh producer id per run, timed first ``append()`` -> ``flush()`` resolved.
Each timed run's stream is read back here and its stored count checked before it is
deleted (:mod:`benchmarks._stored`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

from benchmarks._common import BaselineUnavailable, progress
from benchmarks._stored import check, delete

TS_PACKAGE = "@durable-streams/client"
TS_VERSION = "0.2.7"
TS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ts_client")


def _installed_version(directory: str) -> str | None:
    path = os.path.join(directory, "node_modules", *TS_PACKAGE.split("/"), "package.json")
    try:
        with open(path) as f:
            return str(json.load(f).get("version"))
    except (OSError, ValueError):
        return None


class TsClient:
    """Install (once) and run the pinned TypeScript client in a Node subprocess."""

    def __init__(self, directory: str = TS_DIR) -> None:
        self.directory = directory
        self.node = shutil.which("node")
        self._reason = ""
        self._ready: bool | None = None

    def ensure(self) -> None:
        """``npm ci`` into ``ts_client/`` unless the pinned version is already there;
        :class:`BaselineUnavailable` (with the reason) when Node/npm is missing or it fails."""
        if self._ready:
            return
        if self._ready is False:
            raise BaselineUnavailable(self._reason)
        try:
            if self.node is None:
                raise BaselineUnavailable("node is not on PATH")
            if _installed_version(self.directory) != TS_VERSION:
                npm = shutil.which("npm")
                if npm is None:
                    raise BaselineUnavailable("npm is not on PATH")
                progress(f"  installing {TS_PACKAGE}@{TS_VERSION} (npm ci) into "
                         f"{self.directory}")
                proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                                      cwd=self.directory, capture_output=True, text=True,
                                      timeout=600)
                if proc.returncode != 0:
                    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
                    raise BaselineUnavailable(f"npm ci failed: {tail[0]}")
                found = _installed_version(self.directory)
                if found != TS_VERSION:
                    raise BaselineUnavailable(f"npm ci installed version {found!r}")
        except BaselineUnavailable as exc:
            self._ready, self._reason = False, str(exc)
            raise
        except (OSError, subprocess.SubprocessError) as exc:
            self._ready, self._reason = False, f"{type(exc).__name__}: {exc}"
            raise BaselineUnavailable(self._reason) from exc
        self._ready = True

    def throughput(self, base_url: str, *, json_mode: bool, n: int, size: int = 100,
                   warmup: int = 0, timeout: float = 300) -> dict[str, Any]:
        """One timed run (after an untimed warm-up run of ``warmup`` messages in the same
        Node process); ``rate``, ``seconds`` and the stored-count check."""
        self.ensure()
        assert self.node is not None
        task = {"url": base_url, "mode": "json" if json_mode else "bytes", "n": n,
                "size": size, "runs": 1, "warmup": warmup}
        try:
            proc = subprocess.run([self.node, "bench.mjs", json.dumps(task)],
                                  cwd=self.directory, capture_output=True, text=True,
                                  timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise BaselineUnavailable(f"TypeScript client timed out after {timeout:.0f}s"
                                      ) from exc
        result: dict[str, Any] | None = None
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith("RESULT "):
                result = json.loads(line[7:])
                break
        if result is None:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise BaselineUnavailable(f"TypeScript client exited {proc.returncode}: {tail}")
        if "error" in result:
            raise BaselineUnavailable(f"TypeScript client failed: {result['error']}")
        run = result["runs"][0]
        try:
            stored = check(run["stream_url"], messages=n,
                           nbytes=None if json_mode else n * size)
        finally:
            delete(run["stream_url"])
        if run.get("error_count"):
            stored = {**stored, "stored_ok": False,
                      "stored": f"{run['error_count']} onError call(s): {run['errors'][:1]}"}
        return {"rate": run["rate"], "bytes_per_s": n * size / run["seconds"],
                "seconds": run["seconds"], "version": _installed_version(self.directory),
                "node": result.get("node"), **stored}
