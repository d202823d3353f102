"""The README's quickstart runs as written (against the reference server), so it cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

from durable_streams.testing import ReferenceServer

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_code(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    match = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert match, f"no python block under {title}"
    return match.group(1)


def test_readme_starts_with_the_two_commands() -> None:
    """DEVELOPERS.md: the README's first lines are the demo command and the test command."""
    lines = README.read_text().splitlines()
    assert lines[0] == "```bash"
    assert "python3 -m durable_streams demo" in lines[1]
    assert "python3 -m pytest" in lines[2]


def test_quickstart_runs(server: ReferenceServer) -> None:
    code = _section_code("Quickstart")
    url = server.stream_url()
    code = code.replace('"http://127.0.0.1:4437/v1/stream/orders"', repr(url))
    assert repr(url) in code
    namespace: dict[str, object] = {"print": lambda *args, **kwargs: None}
    exec(compile(code, "README.md#quickstart", "exec"), namespace)
    assert namespace["items"] and len(namespace["items"]) == 1002  # type: ignore[arg-type]
