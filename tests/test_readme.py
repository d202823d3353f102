"""Every code snippet in the README runs as shown, each against a fresh reference server,
so none can rot (README, "Quickstart"). A snippet that cannot run here is preceded by a
``<!-- snippet: not run by tests/test_readme.py: <why> -->`` line that says why.

Snippets use the address ``durable-streams serve`` gives (``http://127.0.0.1:4437``) or a
placeholder host (``https://streams.example.com``); both are replaced by the test server's
URL. Python snippets run in a child interpreter, shell snippets in ``bash -euo pipefail``
with ``durable-streams`` meaning this tree's command line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from durable_streams import DurableStream
from durable_streams.testing import ReferenceServer

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LOCAL = "http://127.0.0.1:4437"
PLACEHOLDER = "https://streams.example.com"
NOT_RUN = re.compile(r"<!-- snippet: not run by tests/test_readme\.py: (.+?) -->")
RUNNABLE = {"python", "bash", "sh"}


@dataclass(frozen=True)
class Snippet:
    section: str
    language: str
    code: str
    line: int
    not_run: str | None  # the reason, when it is marked

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.section.lower()).strip("-")
        return f"{slug}-line{self.line}"


def snippets() -> list[Snippet]:
    out: list[Snippet] = []
    section = ""
    lines = README.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            section = line.lstrip("#").strip()
        fence = re.fullmatch(r"```(\w+)", line)
        if fence:
            start = i
            i += 1
            body: list[str] = []
            while lines[i] != "```":
                body.append(lines[i])
                i += 1
            marker = NOT_RUN.fullmatch(lines[start - 1]) if start else None
            out.append(Snippet(section, fence.group(1), "\n".join(body) + "\n", start + 1,
                               marker.group(1) if marker else None))
        i += 1
    return out


SNIPPETS = [s for s in snippets() if s.language in RUNNABLE]
TO_RUN = [s for s in SNIPPETS if s.not_run is None]

# Streams a snippet expects to exist already (it connects rather than creates).
PRECONDITIONS: dict[str, list[tuple[str, str]]] = {
    "HTTP, sessions and the environment": [("/v1/stream/orders", "application/octet-stream")],
    "Logging": [("/v1/stream/app-logs", "application/json")],
}


@pytest.fixture
def fresh_server() -> Iterator[ReferenceServer]:
    with ReferenceServer(webhooks=True) as server:
        yield server


def test_readme_opens_with_the_title_one_sentence_and_the_two_commands() -> None:
    text = README.read_text()
    assert text.startswith("# durable_streams\n\n")
    intro = text.split("\n\n")[1]
    assert intro.count(". ") == 0 and intro.rstrip().endswith("."), intro  # one sentence
    first = SNIPPETS[0]
    assert first.language == "bash"
    commands = first.code.splitlines()
    assert len(commands) == 2
    assert commands[0].endswith("python3 -m durable_streams demo")
    assert commands[1].endswith("python3 -m pytest -q")
    assert "pip install" in commands[0] and "'.[test]'" in commands[1]  # each installs


def test_ci_runs_the_readmes_test_command_first() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = SNIPPETS[0].code.splitlines()[1]
    steps = [line.strip() for line in ci.splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    runs = [line for line in steps if "pytest" in line or "matrix" in line]
    assert runs[0] == test_command, runs
    assert any("tests/matrix.py" in line for line in runs[1:]), runs


def test_every_snippet_that_is_not_run_says_why() -> None:
    marked = [s for s in SNIPPETS if s.not_run is not None]
    assert all(len(s.not_run or "") >= 15 for s in marked), marked
    # Only a few may be excused; everything else runs below.
    assert len(marked) <= 8, [s.id for s in marked]
    assert len(TO_RUN) >= 9


@pytest.mark.parametrize("snippet", TO_RUN, ids=[s.id for s in TO_RUN])
def test_snippet_runs(snippet: Snippet, fresh_server: ReferenceServer,
                      tmp_path: Path) -> None:
    base = fresh_server.url
    code = snippet.code.replace(LOCAL, base).replace(PLACEHOLDER, base)
    for path, content_type in PRECONDITIONS.get(snippet.section, []):
        DurableStream.create(base + path, content_type=content_type).close()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("DURABLE_STREAMS_URL", None)
    if snippet.language == "python":
        argv = [sys.executable, "-c", code]
    else:
        prelude = f'durable-streams() {{ "{sys.executable}" -m durable_streams "$@"; }}\n'
        argv = ["bash", "-euo", "pipefail", "-c", prelude + code]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=180, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"README.md line {snippet.line} ({snippet.section}) " \
        f"failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr

def _section_code(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block under {title}"
    return match.group(1)


def test_crash_safe_cron_recipe_runs(server: ReferenceServer, tmp_path: Path) -> None:
    """README "Crash-safe journal": the server is down for the first run (exit 75, rows
    kept), the next run delivers them first, each once."""
    import json

    import pytest
    import requests

    from durable_streams import DurableStream

    code = _section_code("Crash-safe journal")
    code = code.replace('"/var/lib/export/journal"', repr(str(tmp_path / "journal")))
    code = code.replace("timeout=60", "timeout=1")
    url = server.stream_url()
    DurableStream.create(url, content_type="application/json").close()

    def run(rows: list[int]) -> None:
        namespace: dict[str, object] = {"EXPORT_URL": url, "rows": lambda: rows}
        exec(compile(code, "README.md#crash-safe-journal", "exec"), namespace)

    server.inject_fault(url[len(server.url):], status=503, count=100_000, method="POST")
    with pytest.raises(SystemExit) as info:
        run([1, 2, 3])
    assert info.value.code == 75
    server.clear_faults()
    run([4, 5])
    body = requests.get(url, params={"offset": "-1"}, timeout=30).content
    assert json.loads(body) == [1, 2, 3, 4, 5]
