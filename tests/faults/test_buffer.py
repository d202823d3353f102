"""Scenario 3: the server is down for longer than the buffer lasts.

While it is down, appends fill ``max_buffer_bytes``; the next ``append`` blocks
``max_block_ms`` and raises :class:`BufferFullError` (and so does every further attempt);
memory stays bounded (RSS from /proc/self/statm); when the server is back, everything that
``append`` accepted is delivered exactly once and nothing it refused is in the stream.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from .scenarios import run_buffer_full

MiB = 1 << 20


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_buffer_full_blocks_raises_bounded_then_delivers(tmp_path: Path) -> None:
    result = run_buffer_full(tmp_path, max_buffer_bytes=8 * MiB, max_block_ms=300)
    d = result.details
    assert d["first_full_at"] is not None, "the buffer never filled"
    assert len(d["blocked"]) == 1 + 5, "some append after the buffer filled did not raise"
    for waited in d["blocked"]:
        assert 0.3 * 0.95 <= waited <= 0.3 + 2.0, d["blocked"]  # loaded 2-core machine
    assert d["max_pending"] <= d["max_buffer_bytes"]
    # ~1,000 messages of 8 KiB were held; the producer keeps each message once in its
    # buffer and once more in the joined body of the few batches in flight.
    assert d["rss_growth"] <= 3 * d["max_buffer_bytes"], (
        f"RSS grew {d['rss_growth'] / MiB:.1f} MiB for an 8 MiB buffer")
    assert result.sent == d["first_full_at"]
    assert result.found == result.sent and result.lost == 0, result.explain()
    assert result.duplicates == 0 and result.foreign == 0, result.explain()
    assert result.acked == result.sent
