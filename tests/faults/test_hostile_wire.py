"""Hostile servers against the HTTP, reading and SSE layer (servers in hostile_wire.py).

Every case asserts a time bound, and the memory cases a peak-memory bound measured in a
separate client process (``ru_maxrss``): the client's memory follows its own limits, never
the server's whims (README "Reliability"; PROTOCOL.md §5 for the statuses). Cases that need
more than a few seconds run only with ``DS_FULL_FAULTS=1``.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from durable_streams import (
    DurableStream,
    ResponseTooLargeError,
    RetryPolicy,
    ServerError,
    TransportError,
    stream,
)

from .hostile_wire import MIB, Handler, RawServer, drip, endless, read_request, run_client

pytestmark = pytest.mark.timeout(120)
FULL = os.environ.get("DS_FULL_FAULTS") == "1"
full_only = pytest.mark.skipif(not FULL, reason="long case: set DS_FULL_FAULTS=1")
NO_RETRY_FAST = "RetryPolicy(max_retries=0)"


def _no_retry() -> RetryPolicy:
    return RetryPolicy(max_retries=0)


def _head(status: str, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- huge and endless bodies ----------------------------------------------------------------


@pytest.mark.parametrize("size_mib", [200])
def test_a_huge_error_body_costs_the_client_only_its_cap(size_mib: int) -> None:
    """A 400 with a 200 MiB body: the error arrives at once, the body read up to 64 KiB."""
    stop = threading.Event()
    head = _head("400 Bad Request", {"Content-Type": "text/plain",
                                     "Content-Length": str(size_mib * MIB)})
    with RawServer(endless(head, b"e" * 65536, stop, first=b"bad offset: ",
                           total=size_mib * MIB)) as server:
        result = run_client(f"""
            h = DurableStream(URL + "/s", content_type="text/plain", retry={NO_RETRY_FAST})
            try:
                h.append("x")
            except BadRequestError as exc:
                return {{"error": type(exc).__name__, "body": len(exc.body or ""),
                         "message": str(exc)}}
            return "no error"
        """, server.url)
        stop.set()
    assert result.value["error"] == "BadRequestError", result.value
    assert result.value["body"] <= 64 * 1024
    assert "bad offset" in result.value["message"] and len(result.value["message"]) < 1000
    assert result.seconds < 10
    assert result.grew < 40 * MIB, f"client grew {result.grew / MIB:.0f} MiB"


@pytest.mark.parametrize("size_mib", [pytest.param(300, marks=full_only), 64])
def test_iter_bytes_holds_a_huge_response_in_pieces(size_mib: int) -> None:
    """A catch-up response of hundreds of MiB is iterated in pieces, never held whole."""
    stop = threading.Event()
    head = _head("200 OK", {"Content-Type": "application/octet-stream",
                            "Content-Length": str(size_mib * MIB), "Stream-Next-Offset": "0_1",
                            "Stream-Up-To-Date": "true", "Stream-Closed": "true"})
    with RawServer(endless(head, b"z" * MIB, stop, total=size_mib * MIB)) as server:
        result = run_client("""
            total = biggest = 0
            with stream(URL + "/s") as res:
                for piece in res.iter_bytes():
                    total += len(piece)
                    biggest = max(biggest, len(piece))
                return {"total": total, "biggest": biggest, "offset": res.offset}
        """, server.url, timeout=300)
        stop.set()
    assert result.value == {"total": size_mib * MIB, "biggest": result.value["biggest"],
                            "offset": "0_1"}, result.value
    assert result.value["biggest"] <= MIB
    assert result.grew < 40 * MIB, f"client grew {result.grew / MIB:.0f} MiB"


@pytest.mark.parametrize(("limit", "bound_mib"), [("1024 * 1024", 30),
                                                  pytest.param("None", 200, marks=full_only)])
def test_an_endless_sse_line_stops_at_the_cap(limit: str, bound_mib: int) -> None:
    """An SSE line that never ends raises ResponseTooLargeError at max_sse_bytes (1 MiB here,
    64 MiB by default), in linear time, with memory bounded by the cap."""
    stop = threading.Event()
    head = _head("200 OK", {"Content-Type": "text/event-stream", "Connection": "close"})
    with RawServer(endless(head, b"x" * 65536, stop, first=b"event: data\ndata:")) as server:
        result = run_client(f"""
            limit = {limit}
            kw = {{}} if limit is None else {{"max_sse_bytes": limit}}
            try:
                with stream(URL + "/s", live="sse", content_type="text/plain",
                            retry=RetryPolicy(max_retries=0), **kw) as res:
                    for _ in res.iter_bytes():
                        pass
            except ResponseTooLargeError as exc:
                return {{"error": type(exc).__name__, "message": str(exc)}}
            return "no error"
        """, server.url)
        stop.set()
    assert result.value["error"] == "ResponseTooLargeError", result.value
    assert "max_sse_bytes" in result.value["message"]
    assert result.seconds < 20
    assert result.grew < bound_mib * MIB, f"client grew {result.grew / MIB:.0f} MiB"


def test_endless_sse_data_events_without_a_control_event_stop_at_the_cap() -> None:
    stop = threading.Event()
    head = _head("200 OK", {"Content-Type": "text/event-stream", "Connection": "close"})
    event = b"event: data\ndata:" + b"y" * 4000 + b"\n\n"
    with RawServer(endless(head, event * 16, stop)) as server, pytest.raises(
            ResponseTooLargeError, match="control event"), stream(
                f"{server.url}/s", live="sse", content_type="text/plain", max_sse_bytes=MIB,
                retry=_no_retry()) as res:
        for _ in res.iter_bytes():
            pass
    stop.set()


# -- silent servers, slow drips, long Retry-After ---------------------------------------------


def _silent(stop: threading.Event) -> Handler:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        stop.wait(120)

    return handle


def test_a_silent_server_is_bounded_by_total_timeout() -> None:
    """A server that accepts and never answers: head() gives up at total_timeout, retries
    included (default 60 s; 363 s before there was a total deadline)."""
    stop = threading.Event()
    with RawServer(_silent(stop)) as server:
        handle = DurableStream(f"{server.url}/s", total_timeout=2.0)
        started = time.monotonic()
        with pytest.raises(TransportError) as info:
            handle.head()
        elapsed = time.monotonic() - started
        stop.set()
    assert elapsed < 5, elapsed
    assert info.value.timeout and "total_timeout" in str(info.value)


@full_only
def test_a_silent_server_is_bounded_by_the_default_total_timeout() -> None:
    stop = threading.Event()
    with RawServer(_silent(stop)) as server:
        started = time.monotonic()
        with pytest.raises(TransportError):
            DurableStream(f"{server.url}/s").head()
        elapsed = time.monotonic() - started
        stop.set()
    assert elapsed < 70, elapsed


def test_a_body_dripped_a_byte_at_a_time_is_bounded_by_total_timeout() -> None:
    """Each read succeeds within the read timeout, the body never completes: the call still
    ends at total_timeout."""
    stop = threading.Event()
    head = _head("200 OK", {"Content-Type": "text/plain", "Content-Length": "100000",
                            "Stream-Next-Offset": "0_1"})
    with RawServer(drip(head, stop, every=0.1)) as server:
        started = time.monotonic()
        with pytest.raises(TransportError):
            DurableStream.create(f"{server.url}/s", total_timeout=2.0, retry=_no_retry())
        elapsed = time.monotonic() - started
        stop.set()
    assert elapsed < 5, elapsed


def test_retry_after_far_beyond_the_policy_is_not_slept_through() -> None:
    """append() answered 503 Retry-After: 999999 raises at once with the server's hint
    (it slept 300 s and more before)."""
    head = _head("503 Service Unavailable", {"Retry-After": "999999", "Content-Length": "4"})

    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(head + b"busy")

    with RawServer(handle) as server:
        started = time.monotonic()
        with pytest.raises(ServerError) as info:
            DurableStream(f"{server.url}/s", content_type="text/plain").append("x")
        elapsed = time.monotonic() - started
    assert elapsed < 3, elapsed
    assert info.value.retry_after is not None and info.value.retry_after >= 3600
    assert "retry after" in str(info.value)


# -- garbage status lines ---------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [b"GARBAGE\x00\xff\x1b[31m\r\n\r\n",
                                     b"HTTP/1.1 abc Weird\r\n\r\n",
                                     b"\xde\xad\xbe\xef" * 64])
def test_garbage_instead_of_a_status_line_is_a_clear_transport_error(garbage: bytes) -> None:
    def handle(conn: socket.socket) -> None:
        read_request(conn)
        conn.sendall(garbage)

    with RawServer(handle) as server:
        started = time.monotonic()
        with pytest.raises(TransportError) as info:
            DurableStream(f"{server.url}/s", retry=_no_retry()).head()
        elapsed = time.monotonic() - started
    text = str(info.value)
    assert elapsed < 5
    assert "not HTTP" in text or "broke" in text, text
    assert all(ch.isprintable() for ch in text), repr(text)  # nothing raw pasted in
    assert "\ufffd" not in text and "\xff" not in text


# -- redirects --------------------------------------------------------------------------------


def test_cross_origin_redirect_carries_no_application_header() -> None:
    """A read redirected to another origin arrives there with none of the application's
    headers (X-Api-Key, Authorization, Cookie...); the first origin saw them."""
    seen: list[dict[str, str]] = []
    body = b"moved"

    def target(conn: socket.socket) -> None:
        _, headers = read_request(conn)
        seen.append(headers)
        conn.sendall(_head("200 OK", {"Content-Type": "text/plain", "Content-Length": "5",
                                      "Stream-Next-Offset": "0_5",
                                      "Stream-Up-To-Date": "true"}) + body)

    with RawServer(target) as far:
        def front(conn: socket.socket) -> None:
            _, headers = read_request(conn)
            seen.append(headers)
            conn.sendall(_head("307 Temporary Redirect",
                               {"Location": f"{far.url}/elsewhere", "Content-Length": "0"}))

        with RawServer(front) as near:
            res = stream(f"{near.url}/s", headers={"X-Api-Key": "k", "Authorization": "t",
                                                   "Cookie": "c=1"}, retry=_no_retry())
            assert res.read_bytes() == body
    assert seen[0].get("x-api-key") == "k"
    assert {"x-api-key", "authorization", "cookie"} & set(seen[1]) == set(), seen[1]


def test_a_redirect_loop_ends_quickly() -> None:
    def loop(conn: socket.socket) -> None:
        while True:
            read_request(conn)
            conn.sendall(_head("302 Found", {"Location": "/again", "Content-Length": "0"}))

    with RawServer(loop) as server:
        started = time.monotonic()
        with pytest.raises(TransportError, match="redirect"):
            DurableStream(f"{server.url}/s", retry=_no_retry()).head()
    assert time.monotonic() - started < 5
