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
