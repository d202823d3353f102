"""The package as a user installs it: its distribution name, its version (written once),
the User-Agent it sends, and the dependency floors the matrix tests (README, "Install" and
"Development")."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from faults.harness import FakeServer

import durable_streams
from durable_streams import DurableStream
from durable_streams._version import DISTRIBUTION, USER_AGENT

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_distribution_name_is_not_the_official_clients() -> None:
    # PyPI's "durable-streams" is the official client (same import name, durable_streams).
    project = PYPROJECT["project"]
    assert project["name"] == DISTRIBUTION == "durable-streams-sync"
    assert re.sub(r"[-_.]+", "-", project["name"]).lower() != "durable-streams"
    assert project["scripts"] == {"durable-streams": "durable_streams.cli:main"}


def test_the_version_is_written_once() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "durable_streams._version.__version__"
    assert durable_streams.__version__ == durable_streams._version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", durable_streams.__version__)


def test_version_option_names_the_distribution() -> None:
    out = subprocess.run([sys.executable, "-m", "durable_streams", "--version"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == f"durable-streams {durable_streams.__version__} ({DISTRIBUTION})"


def test_requests_carry_the_user_agent() -> None:
    server = FakeServer(lambda method, path, headers, body: (
        200, {"Stream-Next-Offset": "0000000000000000_0000000000000000",
              "Content-Type": "text/plain"}, b""))
    try:
        with DurableStream(f"{server.url}/s") as handle:
            handle.head()
        assert f"{DISTRIBUTION}/{durable_streams.__version__}" == USER_AGENT
        assert [r.headers.get("User-Agent") for r in server.requests] == [USER_AGENT]
    finally:
        server.close()


@pytest.mark.parametrize("name, floor", [("requests", "2.32.2"), ("urllib3", "2.3")])
def test_dependency_floors_are_the_ones_the_matrix_pins(name: str, floor: str) -> None:
    # tests/matrix.py pins exactly these floors in one of its runs (claimed = tested).
    assert f"{name}>={floor}" in PYPROJECT["project"]["dependencies"]
    import matrix

    assert matrix.pyproject_floors()[name] == floor
