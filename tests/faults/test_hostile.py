"""Scenario 6: bad input and hostile servers (cases in hostile.py).

Each case must end in the expected exception within its time bound, with every message
either delivered or reported to the application (never a hang, never a silent drop).
Cases listed in BUGS are marked xfail (strict: once fixed they fail as XPASS, so remove them
then); the reason names the code path and the fix.
"""

from __future__ import annotations

import pytest

from durable_streams.testing import ReferenceServer

from .hostile import CASES

#: Cases failing because of a library bug: name -> reason (code path and fix). Empty now:
#: the bugs this suite found (BOM/UTF-16 JSON, bare 200 taken as an ack, epoch overflow
#: hang, probe HEAD without timeouts) were fixed in 0c50838; keep the mechanism for the next.
BUGS: dict[str, str] = {}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=BUGS[name]))
    if name in BUGS else name
    for name in CASES])
def test_hostile_case(server: ReferenceServer, name: str) -> None:
    case = CASES[name](server)
    detail = {k: v for k, v in case.detail.items() if k not in ("items",)}
    if case.expected is None:
        assert case.raised is None, (case.raised, detail)
    else:
        assert isinstance(case.raised, case.expected), (
            f"{name}: expected {case.expected.__name__}, got {case.raised!r}; {detail}")
    assert case.elapsed <= case.bound, f"{name}: took {case.elapsed:.2f}s > {case.bound}s"
    assert not case.detail.get("close_hung"), f"{name}: close() hung"
    assert case.silent_drops == 0, (
        f"{name}: {case.silent_drops} messages neither acknowledged nor reported; {detail}")
    if case.found is not None:
        assert case.found == case.acked, (case.found, case.acked, detail)
