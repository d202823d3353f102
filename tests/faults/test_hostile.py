"""Scenario 6: bad input and hostile servers (cases in hostile.py).

Each case must end in the expected exception within its time bound, with every message
either delivered or reported to the application (never a hang, never a silent drop).
Cases marked xfail are library bugs found by this suite; the reason names the code path and
the fix. They are strict: once fixed they fail as XPASS, so remove the mark then.
"""

from __future__ import annotations

import pytest

from durable_streams.testing import ReferenceServer

from .hostile import CASES

BUGS = {
    "json_with_bom": (
        "BUG (_protocol.check_json_text/load_json, used by producer._build): json.loads(bytes) "
        "auto-detects UTF-16/32 and strips a UTF-8 BOM, so such a message passes client-side "
        "validation; the server (TextDecoder + JSON.parse) rejects the batch with 400 and the "
        "good messages of that batch are reported undelivered with it. Decode strictly as "
        "UTF-8 (`data.decode('utf-8')`) and parse the str: json.loads then rejects the BOM."),
    "bare_200_producer": (
        "DESIGN GAP (producer.py _deliver_loop, `status == 200` -> _acked): a 200 with neither "
        "Stream-Next-Offset nor the Producer-Epoch/-Seq echo is taken as an acknowledgement, so "
        "a captive portal or misrouted proxy answering 200 silently drops every message. "
        "Require the offset or a matching echo; otherwise treat it as transient (same tuple is "
        "safe to retry) and report at delivery_timeout_ms."),
    "403_epoch_overflow": (
        "BUG (producer.py _on_403 -> _begin_claim_locked overflow branch): the fatal error is "
        "recorded, then _on_403 parks the batch anyway; _fatal_locked already failed the parked "
        "list, so this batch is never resolved: flush() never returns and close(timeout) takes "
        "timeout + 5 x 30 s of thread joins (senders never stop while _parked is non-empty). "
        "Fail the batch instead of parking it when the claim did not start (also in _on_204)."),
    "silent_server": (
        "REGRESSION in 184fb83 (producer.py _take_probe, also _resolved_content_type): the "
        "tail-probe HEAD before a generation's first send is made by a DurableStream built "
        "without timeout=self._request_timeout, so it uses the default (10 s, 60 s) timeouts "
        "and the retry policy's max_retries, outside delivery_timeout_ms: against a server "
        "that never answers, nothing is sent or reported for up to 4 x 60 s. Pass the "
        "producer's request_timeout and bound the probe by the batch deadline (or give up the "
        "probe quickly: it only settles an ambiguous 204)."),
}


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
