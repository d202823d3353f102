"""Properties of the encoding rules (PROTOCOL.md §9.1 JSON mode, §5.2 byte mode) and of the
small parsing helpers (Retry-After, header merging, query building).

Round trips go through the real reference server; reads use plain ``requests.get`` with
``?offset=`` (§5.6) so this file does not depend on the reading module. Example counts come
from the conftest profile (50): the machine is shared.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
from typing import Any

import requests
from hypothesis import assume, given
from hypothesis import strategies as st

from durable_streams import DurableStream
from durable_streams import _protocol as P
from durable_streams._http import build_query, merge_headers, resolve
from durable_streams.testing import ReferenceServer

# The server is JavaScript: numbers are IEEE doubles, so integers beyond 2**53 do not survive
# a round trip (it re-serialises what it stores). NaN/Infinity are not JSON (§9.1.4).
SAFE_INT = 2**53 - 1
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-SAFE_INT, max_value=SAFE_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)


def as_doubles(value: Any) -> Any:
    """The value as the JavaScript server sees it: every number an IEEE double.

    JSON.stringify writes an integral double below 1e21 without an exponent, so
    3.017629512881487e16 comes back as the integer 30176295128814870: the same double.
    """
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return [as_doubles(v) for v in value]
    return {k: as_doubles(v) for k, v in value.items()}


def _read_after(url: str, offset: str) -> requests.Response:
    response = requests.get(url, params={"offset": offset}, timeout=10)
    response.raise_for_status()
    return response


# -- JSON mode (§9.1) --------------------------------------------------------------------------


@given(value=json_values)
def test_json_value_round_trips_as_one_message(
    durable_streams_server: ReferenceServer, value: Any
) -> None:
    """§9.1.1/§9.1.2: any JSON value (lists included) appended is one message equal to itself;
    its JSON text (str) stores the same message. (A top-level Python str *is* JSON text by
    design, so a string value is appended as json.dumps(value).)"""
    url = durable_streams_server.stream_url()
    as_object = json.dumps(value) if isinstance(value, str) else value
    with DurableStream.create(url, content_type="application/json") as handle:
        start = handle.head().offset
        middle = handle.append(as_object)
        end = handle.append(json.dumps(value))
        assert start < middle < end
    assert as_doubles(_read_after(url, start).json()) == as_doubles([value, value])
    assert as_doubles(_read_after(url, middle).json()) == as_doubles([value])


@given(values=st.lists(json_values, min_size=1, max_size=5))
def test_json_initial_body_list_is_flattened(
    durable_streams_server: ReferenceServer, values: list[Any]
) -> None:
    """§5.1 + §9.1.2: a list given as the initial body becomes one message per element."""
    url = durable_streams_server.stream_url()
    DurableStream.create(url, content_type="application/json", body=values).close()
    assert as_doubles(_read_after(url, "-1").json()) == as_doubles(values)


@given(text=st.text(min_size=1))
def test_json_text_that_is_not_one_value_is_refused(text: str) -> None:
    """One append, one message: text that is not exactly one JSON value raises ValueError
    before any request (the URL points nowhere: a request would be a TransportError)."""
    try:
        P.load_json(text)
    except ValueError:
        valid = False
    else:
        valid = True
    assume(not valid and text.strip())
    handle = DurableStream("http://127.0.0.1:9/nowhere", content_type="application/json")
    try:
        handle.append(text)
    except ValueError:
        pass
    else:  # pragma: no cover - the assertion below reports it
        raise AssertionError(f"{text!r} was accepted")
    finally:
        handle.close()


@given(first=json_values, second=json_values)
def test_comma_joined_json_text_is_refused(first: Any, second: Any) -> None:
    """'<a>,<b>' is the shape that wrapping turns into two messages: always refused."""
    text = json.dumps(first) + "," + json.dumps(second)
    handle = DurableStream("http://127.0.0.1:9/nowhere", content_type="application/json")
    try:
        try:
            handle.append(text)
        except ValueError:
            return
        raise AssertionError(f"{text!r} was accepted")
    finally:
        handle.close()


def test_encode_json_value_is_compact_and_strict() -> None:
    assert P.encode_json_value({"a": [1, "é"]}) == '{"a":[1,"é"]}'.encode()
    for bad in (float("nan"), float("inf"), {1, 2}, object(), b"bytes"):
        try:
            P.encode_json_value(bad)
        except TypeError as exc:
            assert "JSON" in str(exc)
        else:  # pragma: no cover
            raise AssertionError(f"{bad!r} was encoded")


# -- byte mode (§5.2) --------------------------------------------------------------------------


@given(data=st.binary(min_size=1, max_size=2048), kind=st.sampled_from(["bytes", "bytearray",
                                                                        "memoryview"]))
def test_bytes_round_trip(durable_streams_server: ReferenceServer, data: bytes,
                          kind: str) -> None:
    """§5.2: in byte mode any non-empty byte string is stored exactly."""
    url = durable_streams_server.stream_url()
    payload: Any = {"bytes": data, "bytearray": bytearray(data),
                    "memoryview": memoryview(data)}[kind]
    with DurableStream.create(url, content_type="application/octet-stream") as handle:
        handle.append(b"<")
        middle = handle.head().offset
        end = handle.append(payload)
        assert end > middle
    assert _read_after(url, middle).content == data
    assert _read_after(url, "-1").content == b"<" + data


@given(text=st.text(min_size=1, max_size=500))
def test_text_round_trip_as_utf8(durable_streams_server: ReferenceServer, text: str) -> None:
    url = durable_streams_server.stream_url()
    with DurableStream.create(url, content_type="text/plain") as handle:
        handle.append(text)
    assert _read_after(url, "-1").content == text.encode("utf-8")


# -- Retry-After (RFC 9110 §10.2.3) ------------------------------------------------------------


@given(seconds=st.integers(min_value=0, max_value=10**9))
def test_retry_after_delta_seconds(seconds: int) -> None:
    assert P.parse_retry_after(str(seconds)) == min(seconds, 3600)
    assert P.parse_retry_after(f"  {seconds} ") == min(seconds, 3600)


@given(value=st.text())
def test_retry_after_never_negative_nan_or_unbounded(value: str) -> None:
    result = P.parse_retry_after(value)
    assert result is None or (not math.isnan(result) and 0.0 <= result <= 3600.0)


@given(offset=st.integers(min_value=-86_400, max_value=86_400))
def test_retry_after_http_date(offset: int) -> None:
    now = 1_800_000_000.0
    when = dt.datetime.fromtimestamp(now + offset, tz=dt.timezone.utc)
    for text in (email.utils.format_datetime(when, usegmt=True),  # "GMT"
                 email.utils.formatdate(now + offset),  # "-0000"
                 email.utils.format_datetime(when.astimezone(dt.timezone(dt.timedelta(hours=-5))))):
        assert P.parse_retry_after(text, now=now) == max(0, min(offset, 3600))


def test_retry_after_absent_or_blank() -> None:
    assert P.parse_retry_after(None) is None
    assert P.parse_retry_after("") is None
    assert P.parse_retry_after("   ") is None


# -- headers and query -------------------------------------------------------------------------

header_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
header_values = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789 ", max_size=12)


@given(layers=st.lists(st.dictionaries(header_names, header_values, max_size=6),
                       min_size=1, max_size=4),
       data=st.data())
def test_merge_headers_is_case_insensitive_last_wins(layers: list[dict[str, str]],
                                                     data: st.DataObject) -> None:
    # Re-case every key at random: the merge must not care.
    recased = [
        {"".join(c.upper() if data.draw(st.booleans()) else c for c in k): v
         for k, v in layer.items()}
        for layer in layers
    ]
    merged = merge_headers(*recased)
    lowered = [k.lower() for k in merged]
    assert len(lowered) == len(set(lowered))
    expected: dict[str, str] = {}
    for layer in recased:
        for key, value in layer.items():
            expected[key.lower()] = value
    assert {k.lower(): v for k, v in merged.items()} == expected
    # The spelling kept is the winning layer's.
    for key in merged:
        last = [layer for layer in recased if key in layer]
        assert last and merged[key] == last[-1][key]


@given(user=st.dictionaries(header_names, header_values, max_size=8),
       protocol=st.dictionaries(header_names, header_values, max_size=4))
def test_build_query_sorted_protocol_wins(user: dict[str, str],
                                          protocol: dict[str, str]) -> None:
    """§10.1: parameters are sent sorted by key so caches see one URL; ours win."""
    query = build_query(user, protocol)
    keys = [k for k, _ in query]
    assert keys == sorted(keys)
    assert len(keys) == len(set(keys))
    assert dict(query) == {**user, **protocol}


@given(values=st.dictionaries(header_names, st.one_of(header_values, st.none()), max_size=6))
def test_resolve_calls_callables_and_drops_none(values: dict[str, str | None]) -> None:
    as_callables = {k: (lambda v=v: v) for k, v in values.items()}
    expected = {k: v for k, v in values.items() if v is not None}
    assert resolve(values) == expected
    assert resolve(as_callables) == expected
    assert resolve(lambda: as_callables) == expected


# -- int headers -------------------------------------------------------------------------------


@given(value=st.text(max_size=12))
def test_parse_int_header_never_raises(value: str) -> None:
    result = P.parse_int_header({"Stream-TTL": value}, "Stream-TTL")
    stripped = value.strip()
    if stripped and stripped.isascii() and stripped.isdigit():
        assert result == int(stripped)
    else:
        assert result is None
