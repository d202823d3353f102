"""Batch bodies without a server: JSON-mode framing and validation at seal time, and the
check that finds an in-doubt batch in data read back from the stream (PROTOCOL §5.2)."""

from __future__ import annotations

from durable_streams._producer.sender import build, split_json
from durable_streams._producer.transport import contains_batch


def test_byte_mode_concatenates() -> None:
    assert build([b"ab", b"c"], False, True) == ([b"ab", b"c"], [], b"abc")


def test_json_mode_frames_an_array_and_keeps_valid_messages() -> None:
    good, bad, body = build([b"1", b'{"a":2}'], True, True)
    assert (good, bad, body) == ([b"1", b'{"a":2}'], [], b'[1,{"a":2}]')


def test_json_mode_splits_out_invalid_messages_at_seal_time() -> None:
    good, bad, body = build([b"1", b"{oops", b"2", b"3 4"], True, True)
    assert good == [b"1", b"2"] and body == b"[1,2]"
    assert [m for m, _ in bad] == [b"{oops", b"3 4"]
    assert all(why.startswith(repr(m[:60])) for m, why in bad)


def test_validation_can_be_turned_off() -> None:
    assert build([b"{oops"], True, False) == ([b"{oops"], [], b"[{oops]")


def test_split_json_keeps_order() -> None:
    good, bad = split_json([b"1", b"x", b"[2]"])
    assert good == [b"1", b"[2]"] and [m for m, _ in bad] == [b"x"]


def test_contains_batch_in_byte_mode() -> None:
    assert contains_batch(b"xxabcyy", b"abc", [b"a", b"bc"], False) is True
    assert contains_batch(b"xxabyy", b"abc", [b"a", b"bc"], False) is False


def test_contains_batch_in_json_mode_compares_values_in_sequence() -> None:
    stored = b'[0, {"k": 1}, 2, 3]'
    assert contains_batch(stored, b"", [b'{"k":1}', b"2"], True) is True
    assert contains_batch(stored, b"", [b"2", b'{"k":1}'], True) is False
    assert contains_batch(b"", b"", [b"1"], True) is False
    assert contains_batch(b"{not json", b"", [b"1"], True) is None
    assert contains_batch(b'{"k": 1}', b"", [b"1"], True) is None  # not an array
