"""StopSignal.send: stopping a pending request through its socket (no server, no threads
per request), and HttpClient.interruptible, which chooses it over a helper thread.

A connected socket pair plays the request's connection: the "transport" hands one end to
``on_sent`` and blocks reading it, as urllib3 does while awaiting a long-poll's answer;
``interrupt()`` from another thread must end that wait at once.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import requests

from durable_streams._http import HttpClient
from durable_streams._read_interrupt import OnSent, Stopped, StopSignal
from durable_streams._response import Response

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, server = socket.socketpair()
    ours.settimeout(10)  # a broken interrupt fails the test instead of hanging it
    server.settimeout(10)
    yield ours, server
    ours.close()
    server.close()


class _Raw:
    status, headers, reason = 200, {}, "OK"

    def close(self) -> None:
        pass


class Answer(Response):
    def __init__(self) -> None:
        super().__init__(_Raw(), "http://h/s")
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


def awaiting_answer(
    sock: socket.socket, sent: threading.Event | None = None
) -> Callable[[OnSent], Response]:
    """A transport: write the request, tell ``on_sent``, block until the answer comes."""

    def fn(on_sent: OnSent) -> Response:
        sock.sendall(b"GET")
        on_sent(sock)
        if sent is not None:
            sent.set()
        if not sock.recv(1):  # shut down: the transport fails, as urllib3 does
            raise ConnectionError("connection closed")
        return Answer()

    return fn


def test_interrupt_shuts_the_pending_request_down_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, server = pair
    stop = StopSignal()
    sent = threading.Event()
    threads_before = threading.active_count()

    def close_when_sent() -> None:
        assert sent.wait(10)
        stop.interrupt("closed")

    closer = threading.Thread(target=close_when_sent, daemon=True)
    closer.start()
    started = time.monotonic()
    with pytest.raises(Stopped):
        stop.send(awaiting_answer(ours, sent))
    assert time.monotonic() - started < 5
    closer.join(5)
    assert server.recv(3) == b"GET" and server.recv(1) == b""  # shut down: the peer sees EOF
    assert threading.active_count() == threads_before  # no helper thread was left behind


def test_interrupt_before_the_request_is_written_shuts_it_down_when_sent(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, server = pair
    stop = StopSignal()

    def fn(on_sent: OnSent) -> Response:
        stop.interrupt("closed")  # close() between the check and the request being written
        return awaiting_answer(ours)(on_sent)  # on_sent shuts it down: recv ends at once

    with pytest.raises(Stopped):
        stop.send(fn)
    assert server.recv(3) == b"GET" and server.recv(1) == b""
    called: list[OnSent] = []

    def record(on_sent: OnSent) -> Response:
        called.append(on_sent)
        return Answer()

    with pytest.raises(Stopped):  # never started once stopping
        stop.send(record)
    assert called == []


def test_an_answer_that_arrives_while_stopping_is_closed(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, _server = pair
    stop = StopSignal()
    answer = Answer()

    def fn(on_sent: OnSent) -> Response:
        on_sent(ours)
        stop.interrupt("deadline")  # stopped just as the answer came
        return answer

    with pytest.raises(Stopped):
        stop.send(fn)
    assert answer.closed.is_set()


def test_answers_and_failures_pass_through_when_not_stopping(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, server = pair
    stop = StopSignal()
    server.sendall(b"!")
    answer = stop.send(awaiting_answer(ours))
    assert isinstance(answer, Answer) and not answer.closed.is_set()
    ours.sendall(b"x")  # the connection was left alone (it may go back to a pool)
    assert server.recv(4) == b"GETx"

    def failing(on_sent: OnSent) -> Response:
        on_sent(ours)
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError, match="refused"):
        stop.send(failing)
    stop.interrupt("closed")  # later: the forgotten socket is not touched
    ours.sendall(b"y")
    assert server.recv(1) == b"y"


def test_interruptible_only_where_send_calls_on_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads use StopSignal.send only where the transport hands the socket over; elsewhere
    (a user session, a SOCKS proxy) a helper thread. The choice is made by the client, not
    by probing for mocking libraries: a code that mocks requests passes a session."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    target = "http://127.0.0.1:1/v1/stream/s"
    default = HttpClient()
    assert default.interruptible(target)
    with requests.Session() as session:
        assert not HttpClient(session=session).interruptible(target)
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1")
    assert not default.interruptible(target)
    monkeypatch.delenv("ALL_PROXY")
    assert default.interruptible(target)
    assert not default.interruptible("http://127.0.0.1:99999/s")  # send() reports it
