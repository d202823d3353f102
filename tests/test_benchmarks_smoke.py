"""The benchmark entry point still runs and prints its table (so it cannot rot unseen).

Only a tiny, ours-only scenario runs here; the benchmarks themselves are not part of the
suite (``python3 -m benchmarks`` runs them).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    assert "Producer" not in out  # the filter ran only the chosen scenario
