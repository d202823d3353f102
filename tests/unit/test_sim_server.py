"""The simulated server answers as PROTOCOL §5.2.1 and the reference server do
(as the integration tests observe it), and its answers classify as the transport's would."""

from __future__ import annotations

import pytest

from durable_streams import _protocol as P
from durable_streams import errors
from durable_streams._producer.outcome import Kind

from .sim_server import Fault, OtherWriter, SimServer, offset_str, outcome_of, post_with


def test_accepted_append_echoes_producer_headers() -> None:
    s = SimServer()
    r = s.post("p", 0, 0, b"abc")
    assert r.status_code == 200
    assert r.headers[P.STREAM_NEXT_OFFSET] == offset_str(3)
    assert r.headers[P.PRODUCER_EPOCH] == "0" and r.headers[P.PRODUCER_SEQ] == "0"
    o = outcome_of(r, 0)
    assert o.kind is Kind.OK and o.offset == offset_str(3)


def test_duplicate_is_204_with_last_seq_and_no_offset() -> None:
    s = SimServer()
    s.post("p", 0, 0, b"a")
    s.post("p", 0, 1, b"b")
    r = s.post("p", 0, 0, b"a")
    assert r.status_code == 204
    assert r.headers[P.PRODUCER_SEQ] == "1" and r.headers[P.PRODUCER_EPOCH] == "0"
    assert P.STREAM_NEXT_OFFSET not in r.headers
    assert s.messages == [b"a", b"b"]
    o = outcome_of(r, 0)
    assert o.kind is Kind.DUPLICATE and o.server_seq == 1 and o.offset == ""


def test_stale_epoch_is_403_with_the_current_epoch() -> None:
    s = SimServer()
    s.post("p", 3, 0, b"a")
    r = s.post("p", 2, 7, b"b")
    assert r.status_code == 403 and r.headers[P.PRODUCER_EPOCH] == "3"
    o = outcome_of(r, 7)
    assert o.kind is Kind.FENCED and o.epoch == 3
    assert isinstance(o.error, errors.DurableStreamError) and o.error.status == 403


def test_gap_is_409_with_expected_and_received() -> None:
    s = SimServer()
    s.post("p", 0, 0, b"a")
    r = s.post("p", 0, 5, b"b")
    assert r.status_code == 409
    assert r.headers[P.PRODUCER_EXPECTED_SEQ] == "1"
    assert r.headers[P.PRODUCER_RECEIVED_SEQ] == "5"
    o = outcome_of(r, 5)
    assert o.kind is Kind.SEQ_GAP and o.expected_seq == 1 and o.server_seq == 5
    assert s.messages == [b"a"]


def test_unknown_producer_must_start_at_zero() -> None:
    r = SimServer().post("p", 0, 2, b"a")
    assert r.status_code == 409 and r.headers[P.PRODUCER_EXPECTED_SEQ] == "0"


def test_epoch_bump_needs_seq_zero() -> None:
    s = SimServer()
    s.post("p", 0, 0, b"a")
    r = s.post("p", 1, 1, b"b")
    assert r.status_code == 400 and b"sequence 0" in r.content
    assert outcome_of(r, 1).kind is Kind.BAD_REQUEST
    assert s.post("p", 1, 0, b"b").status_code == 200
    assert s.producers["p"].epoch == 1 and s.producers["p"].last_seq == 0


def test_json_mode_flattens_and_rejects_without_consuming_the_seq() -> None:
    s = SimServer(json_mode=True)
    assert s.post("p", 0, 0, b'[1,{"a":2}]').status_code == 200
    assert s.messages == [b"1", b'{"a":2}']
    assert s.post("p", 0, 1, b"[1,").status_code == 400
    assert s.post("p", 0, 1, b"[]").status_code == 400
    assert s.producers["p"].last_seq == 0  # a rejected append does not advance it
    assert s.post("p", 0, 1, b"[3]").status_code == 200
    assert s.read_from(offset_str(1)) == b'[{"a":2},3]'


def test_byte_reads_from_an_offset() -> None:
    s = SimServer()
    s.post("p", 0, 0, b"abc")
    s.post("p", 0, 1, b"de")
    assert s.tail() == offset_str(5)
    assert s.read_from(offset_str(2)) == b"cde"
    assert s.read_from("-1") == b"abcde"


@pytest.mark.parametrize(("fault", "kind", "stored", "maybe_stored"), [
    (Fault.NONE, Kind.OK, True, False),
    (Fault.DROP, Kind.TRANSPORT, False, True),
    (Fault.LOSE, Kind.TRANSPORT, True, True),
    (Fault.ZOMBIE, Kind.TRANSPORT, False, True),
    (Fault.UNAVAILABLE, Kind.RETRYABLE, False, True),
    (Fault.RATE_LIMITED, Kind.RETRYABLE, False, False),
    (Fault.PROXY_502, Kind.RETRYABLE, True, True),
])
def test_faults(fault: Fault, kind: Kind, stored: bool, maybe_stored: bool) -> None:
    s = SimServer()
    o = post_with(s, fault, "p", 0, 0, b"x")
    assert o.kind is kind
    assert (s.messages == [b"x"]) is stored
    assert o.maybe_stored is maybe_stored
    if fault is Fault.RATE_LIMITED:
        assert o.retry_after == 1.0


def test_second_writer_claims_above_the_server_epoch_and_gets_fenced() -> None:
    s = SimServer()
    s.post("p", 4, 0, b"<0.0>")
    other = OtherWriter(s, "p")
    assert other.claim() == 200 and other.epoch == 5
    assert other.write() == 200
    assert s.post("p", 4, 1, b"<0.1>").status_code == 403
    s.post("p", 6, 0, b"<0.1>")
    assert other.write() == 403 and other.fenced


def test_close_only_is_204_and_a_retry_of_it_too() -> None:
    s = SimServer()
    s.post("p", 0, 0, b"abc")
    r = s.close("p", 0, 1)
    assert r.status_code == 204 and r.headers[P.STREAM_CLOSED] == "true"
    assert r.headers[P.STREAM_NEXT_OFFSET] == offset_str(3)
    assert s.closed_by == ("p", 0, 1)
    again = s.close("p", 0, 1)  # the same tuple: deduplicated success
    assert again.status_code == 204 and again.headers[P.STREAM_CLOSED] == "true"
    other = s.post("p", 0, 2, b"x")  # anything else: 409 Stream-Closed
    assert other.status_code == 409 and other.headers[P.STREAM_CLOSED] == "true"
    assert outcome_of(other, 2).kind is Kind.STREAM_CLOSED


def test_close_with_a_duplicate_tuple_does_not_close_but_says_closed() -> None:
    """As the reference server 0.3.7: a close-only POST whose tuple is a duplicate is
    answered 204 + Stream-Closed: true + the offset, and the stream stays open."""
    s = SimServer()
    s.post("p", 0, 0, b"abc")
    s.post("p", 0, 1, b"de")
    r = s.close("p", 0, 0)
    assert r.status_code == 204 and r.headers[P.STREAM_CLOSED] == "true"
    assert r.headers[P.PRODUCER_SEQ] == "1"  # the server's last seq, not ours
    assert s.closed_by is None
    assert s.post("p", 0, 2, b"f").status_code == 200  # still open
