"""Run the pinned TypeScript ``@durable-streams/state`` (``harness.mjs``) in Node.

``package.json`` and ``package-lock.json`` here pin the release; :meth:`NodeState.ensure`
runs ``npm ci`` once (``node_modules`` is git-ignored and reused) and raises
:class:`NodeUnavailable` with the reason when Node or npm is missing or the install fails,
so tests can skip with that reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

PACKAGE = "@durable-streams/state"
VERSION = "0.3.1"
DIRECTORY = Path(__file__).resolve().parent


class NodeUnavailable(RuntimeError):
    """Node, npm or the pinned package is not available."""


def installed_version(directory: Path = DIRECTORY) -> str | None:
    manifest = directory / "node_modules" / "@durable-streams" / "state" / "package.json"
    try:
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


class NodeState:
    def __init__(self, directory: Path = DIRECTORY) -> None:
        self.directory = directory
        self.node = shutil.which("node")

    def ensure(self) -> None:
        if self.node is None:
            raise NodeUnavailable("node is not on PATH (install Node.js 18+ to compare with "
                                  f"{PACKAGE})")
        if installed_version(self.directory) == VERSION:
            return
        npm = shutil.which("npm")
        if npm is None:
            raise NodeUnavailable("npm is not on PATH")
        proc = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                              cwd=self.directory, capture_output=True, text=True, timeout=600)
        if proc.returncode != 0 or installed_version(self.directory) != VERSION:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise NodeUnavailable(f"npm ci of {PACKAGE}@{VERSION} failed: {tail[0]}")

    def run(self, task: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
        self.ensure()
        assert self.node is not None
        proc = subprocess.run([self.node, "harness.mjs", json.dumps(task)], cwd=self.directory,
                              capture_output=True, text=True, timeout=timeout)
        for line in reversed(proc.stdout.splitlines()):
            if line.startswith("RESULT "):
                result: dict[str, Any] = json.loads(line[7:])
                if "error" in result:
                    raise AssertionError(f"the Node harness failed: {result['error']}")
                return result
        raise AssertionError(f"the Node harness exited {proc.returncode} without a result: "
                             f"{proc.stderr.strip()[-2000:]}")

    def read(self, url: str, *, summary: bool = False) -> dict[str, Any]:
        """Node's materialisation of the stream at ``url`` (see harness.mjs)."""
        return self.run({"mode": "read", "url": url, "summary": summary})

    def apply_file(self, path: str, repeat: int = 1) -> dict[str, Any]:
        """Node's best time applying the JSON array of events in ``path`` (no network)."""
        return self.run({"mode": "apply", "file": path, "repeat": repeat})

    def write(self, url: str, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Append events built by the TypeScript schema helpers; returns them."""
        events: list[dict[str, Any]] = self.run({"mode": "write", "url": url, "ops": ops})["events"]
        return events
