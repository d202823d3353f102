"""Interleaved rounds of throughput subjects, with the stored-count verdict of each row.

Every throughput result carries ``stored_ok``/``stored`` (see :mod:`benchmarks._stored`).
A subject with any round whose stored count was wrong is *invalid*: its row says so instead
of a figure, and ratios that involve it are not computed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks._common import BaselineUnavailable, Row, paired_ratio, progress, ratio_row
from benchmarks._stored import verdict


class Rounds:
    """Results per subject, in round order."""

    def __init__(self) -> None:
        self.results: dict[str, list[dict[str, Any]]] = {}
        self.unavailable: dict[str, str] = {}

    def keep(self, name: str, result: dict[str, Any]) -> dict[str, Any]:
        self.results.setdefault(name, []).append(result)
        return result

    def attempt(self, name: str, run: Callable[[], dict[str, Any]]) -> None:
        """Run an optional baseline; once it is unavailable, later rounds skip it."""
        if name in self.unavailable:
            return
        try:
            self.keep(name, run())
        except BaselineUnavailable as exc:
            self.unavailable[name] = str(exc)
            progress(f"  {name}: unavailable: {exc}")

    def invalid(self, name: str) -> str | None:
        return verdict(self.results.get(name, []))

    def valid(self, name: str) -> bool:
        return bool(self.results.get(name)) and self.invalid(name) is None

    def best(self, name: str) -> dict[str, Any]:
        return max(self.results[name], key=lambda r: float(r["rate"]))

    def rates(self, name: str) -> list[float]:
        return [float(r["rate"]) for r in self.results[name]]

    def best_so_far(self, name: str) -> str:
        if name not in self.results:
            return "n/a"
        return f"{self.best(name)['rate']:,.0f}"

    def row(self, scenario: str, what: str, name: str,
            text: Callable[[dict[str, Any]], str]) -> Row:
        """The subject's best round, or why there is no figure (invalid / unavailable)."""
        if name in self.unavailable:
            return Row(scenario, what, f"unavailable: {self.unavailable[name]}")
        bad = self.invalid(name)
        if bad is not None:
            return Row(scenario, what, f"**INVALID**, not a result: {bad}",
                       data={"invalid": bad})
        best = self.best(name)
        return Row(scenario, what, text(best), data=best)

    def ratio(self, scenario: str, what: str, num: str, den: str, *,
              target: float | None = None) -> Row:
        """Median of per-round ``num ÷ den`` (rounds are interleaved), with the range."""
        for name in (num, den):
            if name in self.unavailable:
                return ratio_row(scenario, what, None, target=target,
                                 reason=f"{name} unavailable")
            if not self.valid(name):
                return ratio_row(scenario, what, None, target=target,
                                 reason=f"{name} invalid or missing")
        value, spread = paired_ratio(self.rates(num), self.rates(den))
        row = ratio_row(scenario, what, value, target=target, spread=spread)
        if len(spread) > 1:  # the figures' own ratio, for comparison with the median
            best = self.best(num)["rate"] / self.best(den)["rate"]
            row.result = row.result[:-1] + f"; best ÷ best {best:.2f}×)"
            row.data["best_ratio"] = best
        return row


def checks_verdict(result: dict[str, Any]) -> str | None:
    """For a baseline task result holding ``checks`` (a list, or lists by pattern)."""
    checks = result.get("checks")
    if checks is None:
        return "stored count not checked"
    flat = [c for group in checks.values() for c in group] if isinstance(checks, dict) \
        else list(checks)
    return verdict(flat)
