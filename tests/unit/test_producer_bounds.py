"""Server-free checks of the producer's bounds (issue 16): claim loops end at the delivery
deadline and back off, errors tell the true time and attempt count, the server's words are
escaped and truncated, 410/413 say what they mean, exceptions of the application's code
fail one batch with an honest ``maybe_stored``, and the JSON check has no Python limit."""

from __future__ import annotations

import json

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from durable_streams import _protocol as P
from durable_streams import errors
from durable_streams._json import check_json_text, scan
from durable_streams._producer.outcome import Kind, client_failure
from durable_streams._producer.sender import build
from durable_streams._producer.sequencer import Act, Phase, Work
from durable_streams._producer.transport import Transport, server_words

from .test_sequencer import RETRY, answer, make, sent

URL = "http://host/s"


# -- claim storms ----------------------------------------------------------------------------
def test_repeated_claims_back_off_and_the_first_does_not() -> None:
    seq, _ = make(auto_claim=True)
    delays = []
    for n in range(1, 8):
        seq.claims_in_row = n
        delays.append(seq.claim_backoff())
    assert delays[0] == 0.0  # a restarted writer claims once, at once
    assert all(d >= 0.125 for d in delays[1:])  # at least 0.25 s with jitter down to 50 %
    assert max(delays) <= max(5.0, RETRY.max_delay_ms / 1000)
    assert delays[-1] >= delays[1]


def test_fence_storm_ends_at_the_delivery_deadline() -> None:
    """A 403 naming a higher epoch on every send: claims until the batch's deadline, then
    the batch fails (reported) and the producer is not stopped."""
    seq, sink = make(auto_claim=True)
    b = sent(seq)  # sealed at 90, deadline 100 (a 10 s delivery timeout)
    now = 90.0
    claims = 0
    for _ in range(100):
        d = seq.on_outcome(b, answer(403, {P.PRODUCER_EPOCH: str(seq.epoch + 1)}), now)
        assert d.act is Act.DONE
        if b.final:
            break
        claims += 1
        seq.finish_work()
        assert seq.phase is Phase.UNCONFIRMED and list(seq.resend) == [b]
        task = seq.next_work(False, 0.0, now)
        while task.work is Work.WAIT:  # the claim's backoff
            assert task.timeout is not None and task.timeout > 0
            now += task.timeout
            task = seq.next_work(False, 0.0, now)
        assert task.work is Work.RESEND
        seq.probe_done(b.gen, "0_0", early=False)
        assert seq.check(b)
        seq.start_attempt(b)
        seq.written(b.gen, b.seq)
    assert b.final and sink.fails and seq.fatal is None
    assert 2 <= claims <= 12  # bounded by the 10 s deadline and spaced out
    err = sink.fails[-1][1]
    assert err.code == "FENCED_REPEATEDLY" and "timed out" in str(err)
    assert f"{b.attempts} attempt(s)" in str(err)
    assert now <= 100.0 + 0.01  # no wait past the batch's deadline


def test_duplicate_storm_with_auto_claim_ends_at_the_deadline() -> None:
    seq, sink = make(auto_claim=True)
    b = sent(seq)
    now = 90.0
    for _ in range(100):
        echo = answer(204, {P.PRODUCER_EPOCH: str(b.epoch), P.PRODUCER_SEQ: str(b.seq)},
                      seq=b.seq)
        seq.on_outcome(b, echo, now)
        if b.final:
            break
        seq.finish_work()
        task = seq.next_work(False, 0.0, now)
        while task.work is Work.WAIT:
            assert task.timeout is not None
            now += task.timeout
            task = seq.next_work(False, 0.0, now)
        seq.probe_done(b.gen, "0_0", early=False)
        seq.start_attempt(b)
        seq.written(b.gen, b.seq)
    assert b.final and sink.fails[-1][1].code == "DUPLICATE_STORM"
    assert seq.fatal is None and seq.counters.claims <= 12


def test_close_claims_are_bounded_and_spaced() -> None:
    seq, _ = make(auto_claim=True, epoch=2)
    now, acts = 0.0, []
    for _ in range(100):
        e, n = seq.close_attempt()
        d = seq.on_close_outcome(answer(403, {P.PRODUCER_EPOCH: str(e + 1)}), e, n, now,
                                 10.0, 0)
        acts.append(d.act)
        if d.act is Act.RAISE:
            break
        now += d.delay
    assert acts[-1] is Act.RAISE and len(acts) <= 14
    assert acts[0] is Act.SEND and Act.RETRY in acts
    assert now <= 10.0 + 1e-9


# -- true counts and times --------------------------------------------------------------------
def test_giving_up_says_the_real_time_and_attempts() -> None:
    """It said "timed out after 120s and 0 attempt(s)" 3 s after the start."""
    seq, sink = make()
    b = sent(seq)  # deadline 100 with a 10 s delivery timeout: sealed at 90
    assert seq.on_outcome(b, answer(503), 93.0).act is Act.RETRY
    seq.start_attempt(b)
    seq.close_requested()
    seq.stop(errors.ProducerClosedError("closed before acknowledged", url=URL))
    seq.on_outcome(b, answer(503), 93.5)
    err = sink.fails[-1][1]
    assert "abandoned" in str(err) and "after 3.5s, 2 attempt(s)" in str(err)
    assert "timed out" not in str(err)


def test_timed_out_before_any_send_says_so() -> None:
    seq, sink = make()
    assert seq.next_work(True, 0.0, 0.0).work is Work.SEAL
    from .test_sequencer import new_batch

    b = new_batch()
    seq.admit(b)
    exc = errors.TransportError("HEAD failed: connection refused", url=URL)
    seq.transient(b, exc, None, 100.5)
    err = sink.fails[-1][1]
    assert "before it could be sent" in str(err) and "0 attempt" not in str(err)
    assert "delivery_timeout_ms=10000" in str(err) and "after 10.5s" in str(err)


# -- the server's words -----------------------------------------------------------------------
def _response(status: int, body: bytes, headers: dict[str, str] | None = None
              ) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = body
    r.headers.update(headers or {})
    r.url = URL
    return r


def _transport() -> Transport:
    return Transport(URL, producer_id="p", stream_headers=None, headers=None, params=None,
                     content_type="application/json", session=None, retry=RETRY,
                     timeout=None, pool_size=1, max_batch_bytes=1024)


def test_server_words_are_escaped_and_truncated() -> None:
    words = server_words(_response(400, b"\x00\xff\x1b[31mred\r\nX-Evil: 1\t" + b"A" * 10**6))
    assert len(words) <= 4 * 200 + 3 and words.endswith("...")  # 200 characters, escaped
    assert all(ch.isprintable() for ch in words)
    assert "\\x00" in words and "\\x1b" in words and "\\xff" in words
    err = _transport()._error(_response(400, b"\x1b[2Jbad\x00" + b"B" * 5000), "append", 10)
    assert isinstance(err, errors.BadRequestError)
    assert all(ch.isprintable() for ch in str(err)) and len(str(err)) < 700


def test_413_says_lower_max_batch_bytes() -> None:
    err = _transport()._error(_response(413, b"Request Entity Too Large"), "append", 900)
    assert "payload too large" in str(err) and "lower max_batch_bytes (now 1024)" in str(err)
    assert "900-byte batch" in str(err) and err.code == "PAYLOAD_TOO_LARGE"
    assert "unexpected" not in str(err)


def test_410_is_gone_not_always_forks() -> None:
    err = _transport()._error(_response(410, b"gone"), "append", 10)
    assert isinstance(err, errors.RetentionGoneError) and err.code == "GONE"
    assert "is gone (410)" in str(err) and "still has forks" not in str(err)


# -- exceptions of the application's code ---------------------------------------------------
def test_exception_after_the_body_was_written_is_maybe_stored() -> None:
    o = client_failure(RuntimeError("hook\nfailed"), where=URL, url=URL, sent=True)
    assert o.kind is Kind.CLIENT and o.maybe_stored
    assert o.error is not None and "\n" not in str(o.error)
    seq, sink = make()
    b = sent(seq)
    assert seq.on_outcome(b, o, 1.0).act is Act.DONE
    err = sink.fails[-1][1]
    assert err.maybe_stored is True and "may have been stored" in str(err)
    assert seq.fatal is None  # the producer goes on


def test_exception_before_the_body_was_written_is_not_stored() -> None:
    seq, sink = make()
    b = sent(seq)
    seq.on_outcome(b, client_failure(ValueError("x"), where=URL, url=URL, sent=False), 1.0)
    assert sink.fails[-1][1].maybe_stored is False and seq.fatal is None


# -- JSON without Python limits ---------------------------------------------------------------
def test_build_keeps_deep_and_long_json_and_drops_only_the_invalid() -> None:
    deep = b"[" * 5000 + b"]" * 5000
    digits = b"9" * 6000
    bad = b"[" * 5000 + b"]" * 4999
    good, invalid, body = build([b'"a"', deep, digits, bad, b'"b"'], True, True)
    assert good == [b'"a"', deep, digits, b'"b"']
    assert [m for m, _ in invalid] == [bad]
    assert body == b"[" + b",".join(good) + b"]"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                          allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20)


@given(json_values)
def test_scanner_accepts_what_json_dumps_writes(value: object) -> None:
    text = json.dumps(value)
    scan(text)
    scan(json.dumps(value, indent=2))


@given(st.text(alphabet='[]{}:,"\\ 0123456789-+.eEtruefalsnx\t\n\x01', max_size=16))
def test_scanner_agrees_with_json_loads(text: str) -> None:
    try:
        json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        expected = True
    except ValueError:
        expected = False
    try:
        scan(text)
        got = True
    except ValueError:
        got = False
    assert got == expected, text


@pytest.mark.parametrize("data", [b"\xef\xbb\xbf1", b"NaN", b"[1,]", b'{"a":1,}', b"",
                                  b"1 2", b"\xff", b'"\x01"', b"01", b"-", b"[" * 10**5])
def test_invalid_json_is_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(ValueError) as info:
        check_json_text(data)
    assert str(info.value)
