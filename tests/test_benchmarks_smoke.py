"""The benchmark entry point still runs and prints its table (so it cannot rot unseen).

Only a tiny, ours-only scenario runs here; the benchmarks themselves are not part of the
suite (``python3 -m benchmarks`` runs them).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(60)
def test_benchmarks_entry_point_prints_table() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--scenario", "caller-cost",
         "--no-official"],
        cwd=ROOT, capture_output=True, text=True, timeout=50, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "| Scenario | What | Result | Target | Met |" in out, out
    row = next(line for line in out.splitlines() if line.startswith("| Caller cost"))
    assert "median" in row and "µs" in row, row
    assert "| Producer" not in out  # the filter ran only the chosen scenario


# -- stored-count verification (benchmarks/_stored.py) -------------------------------------
def _post(url: str, body: bytes, seq: int) -> int:
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST", headers={
        "content-type": "application/json", "producer-id": "bench-smoke",
        "producer-epoch": "0", "producer-seq": str(seq)})
    with urllib.request.urlopen(req) as resp:
        return int(resp.status)


def test_stored_check_catches_the_duplicate_204_artefact(url: str) -> None:
    """PROTOCOL.md §5.2.1: a repeated (producer id, epoch, seq) is answered 204 and not
    stored, so a benchmark that reuses one producer id measures nothing. The read-back
    check must see that the second "successful" append stored nothing."""
    from benchmarks._rounds import Rounds
    from benchmarks._stored import check
    from durable_streams import DurableStream

    DurableStream.create(url, content_type="application/json").close()
    assert _post(url, b'[{"a": 1}, {"a": 2}]', 0) == 200
    assert _post(url, b'[{"a": 1}, {"a": 2}]', 0) == 204  # duplicate: nothing stored
    good = check(url, messages=2)
    assert good["stored_ok"] and good["stored_messages"] == 2, good
    bad = check(url, messages=4)  # what a naive benchmark believes it wrote
    assert not bad["stored_ok"] and "2 of 4 messages" in bad["stored"], bad

    rounds = Rounds()
    rounds.keep("x", {"rate": 1e6, **good})
    rounds.keep("x", {"rate": 9e9, **bad})
    rounds.keep("y", {"rate": 5e5, **good})
    row = rounds.row("S", "subject x", "x", lambda r: f"{r['rate']:,.0f} msg/s")
    assert "INVALID" in row.result and "9,000,000,000" not in row.result, row
    assert "n/a" in rounds.ratio("S", "x ÷ y", "x", "y").result
    assert rounds.ratio("S", "y ÷ y", "y", "y").result.startswith("1.00×")


def test_compare_table_marks_wrong_counts_invalid() -> None:
    """The before/after table never turns a wrong stored count into a ratio."""
    from benchmarks import compare

    ms = [m for m in compare.metrics(quick=True) if m.verified][:1]
    key = compare._task_key(ms[0].task)

    class FakeSide:
        def __init__(self, name: str) -> None:
            self.name, self.label = name, name

    ok = {"rate": 100.0, "stored_ok": True, "stored": "count verified"}
    results = {key: {"before": [ok, ok], "after": [ok, {**ok, "stored_ok": False,
                                                       "stored": "stored 0 of 10 messages"}]}}
    text = compare.table(ms, results, FakeSide("before"), FakeSide("after"))  # type: ignore[arg-type]
    row = text.splitlines()[-1]
    assert "INVALID" in row and "n/a" in row, row
    results[key]["after"] = [{**ok, "rate": 90.0}, {**ok, "rate": 110.0}]
    row = compare.table(ms, results, FakeSide("before"), FakeSide("after")  # type: ignore[arg-type]
                        ).splitlines()[-1]
    assert "1.00× (median of 2 rounds, range 0.90×–1.10×" in row, row


@pytest.mark.timeout(120)
def test_typescript_client_baseline_runs_and_is_verified(server: Any) -> None:
    """The pinned TypeScript client (npm ci on first use) writes to a fresh stream with a
    fresh producer id, and its stored count is checked."""
    import shutil

    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node/npm not on PATH: the TypeScript baseline is skipped there too")
    from benchmarks._ts_baseline import TS_VERSION, TsClient

    for json_mode in (True, False):
        result = TsClient().throughput(server.url, json_mode=json_mode, n=500)
        assert result["version"] == TS_VERSION
        assert result["stored_ok"] and result["stored_messages"] == 500, result
        assert result["rate"] > 0
