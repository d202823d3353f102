"""The two HTTP paths against the real reference server (issue 11 §1).

- The default path (no session): the shared urllib3 transport still honours the environment
  as ``requests`` does: ``HTTP_PROXY`` (seen by a recording loopback proxy), ``NO_PROXY``,
  and ``~/.netrc`` found through ``HOME``.
- A ``requests.Session`` the user passes is used exactly as given: its auth, its proxies, an
  adapter mounted on it, and a subclass that overrides ``request()``.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import requests.adapters
import urllib3

from durable_streams import DurableStream, IdempotentProducer, stream
from durable_streams._response import Response
from durable_streams._session_transport import SessionTransport
from durable_streams._transport import DefaultTransport
from durable_streams.testing import ReferenceServer

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection",
        "proxy-authorization"}


@dataclass
class Seen:
    method: str
    target: str  # absolute-form request target, as a proxy receives it
    headers: dict[str, str] = field(default_factory=dict)


class RecordingProxy:
    """A loopback HTTP forward proxy that records every request it relays."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        upstream = urllib3.PoolManager(retries=False)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                proxy.seen.append(Seen(self.command, self.path, dict(self.headers.items())))
                r = upstream.urlopen(self.command, self.path, body=body, headers=headers,
                                     redirect=False)
                self.send_response(r.status)
                for k, v in r.headers.items():
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                data = r.data if self.command != "HEAD" else b""
                self.send_header("Content-Length", str(len(data)) if self.command != "HEAD"
                                 else r.headers.get("Content-Length", "0"))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _relay

            def do_CONNECT(self) -> None:  # noqa: N802 - a tunnel for https:// targets
                proxy.seen.append(Seen("CONNECT", self.path, dict(self.headers.items())))
                host, _, port = self.path.rpartition(":")
                upstream_sock = socket.create_connection((host, int(port)), timeout=10)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                pair = (self.connection, upstream_sock)

                def pump(src: socket.socket, dst: socket.socket) -> None:
                    with contextlib.suppress(OSError):
                        while data := src.recv(65536):
                            dst.sendall(data)
                    with contextlib.suppress(OSError):
                        dst.shutdown(socket.SHUT_WR)

                back = threading.Thread(target=pump, args=pair[::-1], daemon=True)
                back.start()
                pump(*pair)
                back.join(10)
                upstream_sock.close()
                self.close_connection = True

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def for_path(self, path: str) -> list[Seen]:
        return [s for s in self.seen if urlsplit(s.target).path == path]


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    p = RecordingProxy()
    yield p
    p.close()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No proxy or CA-bundle variables, and a HOME without a .netrc."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "netrc",
                 "requests_ca_bundle", "curl_ca_bundle"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- the default path ---------------------------------------------------------------------


def test_default_path_is_urllib3_and_shared(clean_env: Path, url: str) -> None:
    with DurableStream.create(url, content_type="text/plain") as handle:
        assert isinstance(handle._client.transport, DefaultTransport)
        response = handle._client.request("HEAD", url, operation="head")
        assert isinstance(response, Response)
        assert response.headers.get("stream-next-offset") == response.headers[
            "Stream-Next-Offset"]
        with IdempotentProducer(handle, "p") as producer:  # the handle's transport
            assert isinstance(producer._transport.client.transport, DefaultTransport)
            producer.append("a")
        assert stream(url).read_text() == "a"


def test_proxy_variable_is_honoured(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                    proxy: RecordingProxy, url: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    path = urlsplit(url).path
    with DurableStream.create(url, content_type="text/plain") as handle:
        handle.append("via the proxy")
        assert handle.head().offset
        with IdempotentProducer(handle, "p") as producer:
            producer.append(" and the producer")
    assert stream(url).read_text() == "via the proxy and the producer"
    methods = [s.method for s in proxy.for_path(path)]
    assert methods[:3] == ["PUT", "POST", "HEAD"] and "GET" in methods
    assert all(s.target.startswith("http://127.0.0.1:") for s in proxy.for_path(path))


def test_no_proxy_bypasses_the_proxy(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                     proxy: RecordingProxy, url: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    with DurableStream.create(url, content_type="text/plain") as handle:
        handle.append("direct")
    assert stream(url).read_text() == "direct"
    assert proxy.seen == []
    # and when NO_PROXY goes away, the same origin is looked up again
    monkeypatch.delenv("NO_PROXY")
    assert stream(url).read_text() == "direct"
    assert [s.method for s in proxy.seen] == ["GET"]


def test_netrc_from_home_is_sent(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                 proxy: RecordingProxy, url: str) -> None:
    netrc = clean_env / ".netrc"
    netrc.write_text("machine 127.0.0.1 login alice password s3cret\n")
    os.chmod(netrc, 0o600)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)  # to see the headers that were sent
    path = urlsplit(url).path
    with DurableStream.create(url, content_type="text/plain") as handle:
        handle.head()
    with DurableStream(url, headers={"Authorization": "Bearer mine"}) as handle:
        handle.head()  # an explicit Authorization header wins over ~/.netrc
    netrc.unlink()
    with DurableStream(url) as handle:  # the file is gone: nothing is sent (after recheck)
        from durable_streams import _transport

        monkeypatch.setattr(_transport, "_NETRC_RECHECK", 0.0)
        handle.head()
    sent = [s.headers.get("Authorization") for s in proxy.for_path(path)]
    assert sent == [basic("alice", "s3cret"), basic("alice", "s3cret"), "Bearer mine", None]


def test_url_user_info_becomes_basic_auth(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                          proxy: RecordingProxy, url: str) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    parts = urlsplit(url)
    with DurableStream.create(f"http://bob:p%40ss@{parts.netloc}{parts.path}",
                              content_type="text/plain"):
        pass
    seen = proxy.for_path(parts.path)
    assert [s.headers.get("Authorization") for s in seen] == [basic("bob", "p@ss")]
    assert "@" not in seen[0].target  # the credentials are not in the request target


# -- a user's session ---------------------------------------------------------------------


def test_user_session_auth_and_proxies(clean_env: Path, proxy: RecordingProxy,
                                       url: str) -> None:
    session = requests.Session()
    session.auth = ("carol", "pw")
    session.proxies = {"http": proxy.url}
    path = urlsplit(url).path
    with DurableStream.create(url, content_type="text/plain", session=session) as handle:
        assert handle._client.session is session
        assert isinstance(handle._client.transport, SessionTransport)
        handle.append("x")
        with IdempotentProducer(handle, "p") as producer:
            assert producer._transport.client.session is session
            producer.append("y")
        assert handle.stream().read_text() == "xy"
    seen = proxy.for_path(path)
    assert len(seen) >= 5
    assert {s.headers.get("Authorization") for s in seen} == {basic("carol", "pw")}
    session.close()


def test_user_session_mounted_adapter(clean_env: Path, server: ReferenceServer,
                                      url: str) -> None:
    calls: list[str] = []

    class Counting(requests.adapters.HTTPAdapter):
        def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
                 ) -> requests.Response:
            calls.append(str(request.method))
            return super().send(request, *args, **kwargs)

    session = requests.Session()
    session.mount(server.url, Counting())
    with DurableStream.create(url, content_type="text/plain", session=session) as handle:
        handle.append("x")
        assert handle.stream().read_text() == "x"
    assert calls == ["PUT", "POST", "GET"]
    session.close()


def test_user_session_subclass_overriding_request(clean_env: Path, proxy: RecordingProxy,
                                                  url: str) -> None:
    class Tagging(requests.Session):
        def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
                    ) -> requests.Response:
            headers = dict(kwargs.pop("headers", None) or {})
            headers["X-Tag"] = "mine"
            return super().request(method, url, *args, headers=headers, **kwargs)

    session = Tagging()
    session.proxies = {"http": proxy.url}
    path = urlsplit(url).path
    with DurableStream.create(url, content_type="text/plain", session=session) as handle:
        handle.append("x")
        handle.head()
    seen = proxy.for_path(path)
    assert [s.method for s in seen] == ["PUT", "POST", "HEAD"]
    assert all(s.headers.get("X-Tag") == "mine" for s in seen)
    session.close()


# -- TLS: REQUESTS_CA_BUNDLE on the default path --------------------------------------------


class TlsFront:
    """HTTPS on loopback in front of the reference server (a self-signed certificate)."""

    def __init__(self, upstream: str, directory: Path) -> None:
        import ssl
        import subprocess

        self.cert = directory / "cert.pem"
        key = directory / "key.pem"
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
             "-keyout", str(key), "-out", str(self.cert)],
            check=True, capture_output=True, timeout=60)
        pool = urllib3.PoolManager(retries=False)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _relay(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                r = pool.urlopen(self.command, upstream + self.path, body=body,
                                 headers=headers, redirect=False)
                self.send_response(r.status)
                for k, v in r.headers.items():
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                data = r.data if self.command != "HEAD" else b""
                self.send_header("Content-Length", str(len(data)) if self.command != "HEAD"
                                 else r.headers.get("Content-Length", "0"))
                self.end_headers()
                if data:
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_HEAD = do_DELETE = _relay

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(self.cert), str(key))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def tls(server: ReferenceServer, tmp_path: Path) -> Iterator[TlsFront]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a certificate")
    front = TlsFront(server.url, tmp_path)
    yield front
    front.close()


def test_tls_ca_bundle_variable(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                tls: TlsFront) -> None:
    from durable_streams import RetryPolicy, TransportError

    url = f"{tls.url}/tls-{os.getpid()}-{threading.get_ident()}"
    with pytest.raises(TransportError, match="TLS with 127.0.0.1"):  # not in certifi
        DurableStream.create(url, content_type="text/plain",
                             retry=RetryPolicy(max_retries=0))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.cert))
    with DurableStream.create(url, content_type="text/plain") as handle:
        handle.append("over TLS")
        assert handle.stream().read_text() == "over TLS"
    with requests.Session() as session:  # a user session: requests' own handling
        monkeypatch.delenv("REQUESTS_CA_BUNDLE")
        session.verify = str(tls.cert)
        with DurableStream(url, session=session) as handle:
            assert handle.head().offset


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_its_own_connections(url: str) -> None:
    """A handle made before fork() works in the child on new connections, and the parent's
    kept-alive connection is not disturbed."""
    with DurableStream.create(url, content_type="text/plain") as handle:
        handle.append("a")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                handle.append("b")
                code = 0 if handle.stream().read_text() == "ab" else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        handle.append("c")
        assert handle.stream().read_text() == "abc"


@pytest.mark.parametrize("transport", ["default", "user session"])
def test_redirects_followed_for_reads_without_any_application_header_across_origins(
        clean_env: Path, monkeypatch: pytest.MonkeyPatch, proxy: RecordingProxy,
        server: ReferenceServer, url: str, transport: str) -> None:
    """GET/HEAD follow redirects; to another origin nothing the application sent goes along
    (Authorization, X-Api-Key, any header given to the handle or set on the session)."""
    target = urlsplit(url)

    class Redirect(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def _go(self) -> None:
            self.send_response(307)
            self.send_header("Location", f"{server.url}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = _go

    redirector = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=redirector.serve_forever, daemon=True).start()
    try:
        with DurableStream.create(url, content_type="text/plain") as handle:
            handle.append("moved")
        monkeypatch.setenv("HTTP_PROXY", proxy.url)  # to see both hops
        front = f"http://127.0.0.1:{redirector.server_address[1]}{target.path}"
        session = None
        if transport == "user session":
            session = requests.Session()
            session.headers["X-Session-Secret"] = "s"
        with DurableStream(front, headers={"Authorization": "Bearer t", "X-Api-Key": "k"},
                           session=session) as moved:
            assert moved.head().content_type == "text/plain"
            assert moved.stream().read_text() == "moved"
    finally:
        redirector.shutdown()
        redirector.server_close()
    names = ("Authorization", "X-Api-Key", "X-Session-Secret")
    hops = [(urlsplit(s.target).port, tuple(s.headers.get(n) for n in names))
            for s in proxy.seen]
    first, second = redirector.server_address[1], target.port
    mine = ("Bearer t", "k", "s" if session is not None else None)
    assert hops == [(first, mine), (second, (None, None, None))] * 2


def test_on_sent_socket_ends_a_pending_long_poll(url: str) -> None:
    """On the default path a waiting live request can be ended from another thread through
    the socket handed to ``on_sent`` (no helper thread per request)."""
    import socket as socket_module
    import time

    from durable_streams import TransportError
    from durable_streams._http import HttpClient

    with DurableStream.create(url, content_type="text/plain") as handle:
        tail = handle.head().offset
    client = HttpClient()
    assert client.interruptible(url)
    sent: list[socket_module.socket] = []
    registered = threading.Event()
    outcome: list[BaseException | int] = []

    def on_sent(sock: socket_module.socket) -> None:
        sent.append(sock)
        registered.set()

    def wait() -> None:
        try:
            response = client.send("GET", url, operation="read", stream=True,
                                   params=[("live", "long-poll"), ("offset", tail)],
                                   timeout=(5.0, 60.0), on_sent=on_sent)
            outcome.append(response.status_code)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    waiter = threading.Thread(target=wait)
    started = time.monotonic()
    waiter.start()
    assert registered.wait(10)
    time.sleep(0.1)  # the request is now held by the server (long-poll)
    assert not outcome
    sent[0].shutdown(socket_module.SHUT_RDWR)
    waiter.join(10)
    assert isinstance(outcome[0], TransportError)
    assert time.monotonic() - started < 5  # not the server's long-poll hold
    with DurableStream(url) as again:  # the pool recovers
        assert again.head().offset == tail


def test_requests_mocks_see_the_requests_of_a_given_session() -> None:
    """Applications that mock ``requests`` (``responses``, ``requests_mock``) in their tests
    pass a ``requests.Session``: every request then goes through it (README)."""
    import responses

    with responses.RequestsMock() as mock:
        mock.add(responses.HEAD, "http://mocked.test/s", status=200,
                 headers={"Stream-Next-Offset": "0_7", "Content-Type": "text/plain"})
        with DurableStream("http://mocked.test/s", session=requests.Session()) as handle:
            assert handle.head().offset == "0_7"
        assert len(mock.calls) == 1


def test_https_through_a_proxy_tunnel(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                      tls: TlsFront, proxy: RecordingProxy) -> None:
    """HTTPS_PROXY: an https:// stream is reached through a CONNECT tunnel, verified with
    REQUESTS_CA_BUNDLE."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tls.cert))
    url = f"{tls.url}/tunnel-{os.getpid()}"
    with DurableStream.create(url, content_type="text/plain") as handle:
        handle.append("tunnelled")
        assert handle.stream().read_text() == "tunnelled"
    tunnels = [s for s in proxy.seen if s.method == "CONNECT"]
    assert tunnels and all(s.target == urlsplit(tls.url).netloc for s in tunnels)
    assert not [s for s in proxy.seen if s.method != "CONNECT"]  # nothing in the clear
