"""DurableStream.close_stream(final_message=...) is the spelling shared with
IdempotentProducer.close_stream; the old ``body=`` is refused when given with it (README,
"Changes of names"). The deprecated spelling's effect is tested against the server in
tests/test_stream.py."""

from __future__ import annotations

import inspect
import warnings

import pytest

from durable_streams import DurableStream, IdempotentProducer
from durable_streams._renamed import _MISSING, renamed

URL = "http://127.0.0.1:9/v1/stream/renamed"  # never contacted


def test_both_spellings_are_a_type_error_before_any_request() -> None:
    handle = DurableStream(URL, content_type="application/json")
    with pytest.raises(TypeError, match="final_message"):
        handle.close_stream(final_message={"a": 1}, body={"a": 1})


def test_stream_and_producer_share_the_name() -> None:
    for method in (DurableStream.close_stream, IdempotentProducer.close_stream):
        assert "final_message" in inspect.signature(method).parameters
        assert method.__doc__ and "final_message" in method.__doc__


def _public(**kw: object) -> object:
    return renamed("f()", "new", kw.get("new", _MISSING), "old", kw.get("old", _MISSING))


def test_renamed_warns_at_the_public_functions_caller() -> None:
    with pytest.warns(DeprecationWarning, match=r"old= is deprecated, use new= instead") as rec:
        assert _public(old=3) == 3
    assert [w.filename for w in rec] == [__file__]


def test_renamed_new_spelling_is_silent_and_neither_is_missing() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _public(new=4) == 4
        assert _public() is _MISSING


def test_renamed_both_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="give new= only"):
        _public(new=1, old=2)
