"""The transport seam, and the default transport: urllib3 directly, with the environment
handling of ``requests``.

:class:`Transport` is the whole interface between the library and HTTP: send one request,
get one :class:`~durable_streams._response.Response`. Two implementations: the default
:class:`DefaultTransport` (below) and ``_session_transport.SessionTransport`` for a user's
``requests.Session``; ``HttpClient`` picks one when it is made, never per request.

Used when the caller passes no ``requests.Session``. Every request goes straight to a
kept-alive urllib3 connection pool shared by the whole process (handles, producers and
readers to the same origin reuse connections), so a blocking call costs about what a bare
urllib3 request costs. What ``requests`` would take from the environment is taken here too,
looked up once per origin and looked up again when the relevant variables change:

- ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``ALL_PROXY`` / ``NO_PROXY`` (any case), with the same
  rules as ``requests`` (its own functions decide); a SOCKS proxy is handed to ``requests``;
- ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` for TLS verification (certifi otherwise);
- ``~/.netrc`` (or ``$NETRC``) credentials, and ``user:password@`` in the URL, sent as Basic
  auth unless the request carries its own ``Authorization`` header.

Responses are :class:`~durable_streams._response.Response` objects, as on the other path.
"""

from __future__ import annotations

import os
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit

import requests
import requests.utils
import urllib3
import urllib3.connection
from urllib3.exceptions import ClosedPoolError
from urllib3.util import make_headers
from urllib3.util.ssl_ import create_urllib3_context

from ._response import ERROR_BODY_LIMIT, Response
from ._version import USER_AGENT

# http.client adds "Accept-Encoding: identity" itself (stream bodies are compact; compression
# would cost more than it saves on fast links) and urllib3 adds no Accept.
_DEFAULT_HEADERS = {"User-Agent": USER_AGENT}
_DEFAULT_LOWER = {k.lower(): k for k in _DEFAULT_HEADERS}
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 30  # as requests
_ENV_NAMES = tuple(
    name
    for base in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    for name in (base, base.upper())
) + ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NETRC", "HOME")
DEFAULT_POOL_SIZE = 16
_NO_RETRIES = urllib3.Retry(total=False, redirect=False)  # the retry loop is HttpClient's
#: The only headers a redirect to another origin keeps: the library's own, which say nothing
#: about the application (every header it supplied, credentials included, is dropped).
CROSS_ORIGIN_KEPT = frozenset({"accept", "user-agent"})


def basic_auth(user: str | None, password: str | None) -> str:
    """An ``Authorization`` value for HTTP Basic credentials (urllib3's public helper)."""
    return make_headers(basic_auth=f"{user or ''}:{password or ''}")["authorization"]


def same_origin(a: str, b: str) -> bool:
    old, new = urlsplit(a), urlsplit(b)
    return (old.scheme, old.hostname, old.port) == (new.scheme, new.hostname, new.port)


def cross_origin_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """What a request redirected to another origin may still carry (see CROSS_ORIGIN_KEPT)."""
    return {k: v for k, v in headers.items() if k.lower() in CROSS_ORIGIN_KEPT}


def read_now(response: Response, deadline: float | None = None) -> None:
    """Read a non-streamed body at once: all of a success, at most ERROR_BODY_LIMIT bytes
    of an error (the server's explanation; the rest is never read), by ``deadline``."""
    response.load(None if response.status_code < 400 else ERROR_BODY_LIMIT, deadline)


#: ``fn`` (a callable taking the socket), set by the caller for the duration of one request.
SENT_HOOK = threading.local()


def _after_send(sock: object) -> None:
    hook = getattr(SENT_HOOK, "fn", None)
    if hook is not None and sock is not None:
        hook(sock)


class _Connection(urllib3.connection.HTTPConnection):
    """Tells :data:`SENT_HOOK` the socket once the request is written, before the response
    is awaited: another thread can then shut it down to end a long wait (a long-poll)."""

    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        _after_send(self.sock)


class _TlsConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)
        _after_send(self.sock)


class _Pool(urllib3.HTTPConnectionPool):
    ConnectionCls = _Connection


class _TlsPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _TlsConnection


_POOL_CLASSES = {"http": _Pool, "https": _TlsPool}


class DefaultSession(requests.Session):
    """What :attr:`HttpClient.session` returns on the default path.

    A working ``requests.Session`` (trust_env, identity encoding) for code that wants one;
    an ``HttpClient`` given this object keeps using the shared urllib3 transport.
    """

    def __init__(self) -> None:
        super().__init__()
        self.headers["Accept-Encoding"] = "identity"


@dataclass
class Route:
    """How to reach one origin under the current environment."""

    pool: Any  # urllib3 connection pool (direct) or ProxyManager (proxied)
    proxied: bool
    auth: str | None  # Authorization value from ~/.netrc or URL user-info
    fallback: bool = False  # a SOCKS proxy: let requests do it


def _tls_context(verify: object) -> ssl.SSLContext:
    ctx = create_urllib3_context()
    if verify is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    where = verify if isinstance(verify, str) else requests.utils.DEFAULT_CA_BUNDLE_PATH
    if os.path.isdir(where):
        ctx.load_verify_locations(capath=where)
    else:
        ctx.load_verify_locations(cafile=where)
    return ctx


_netrc_seen: tuple[str, float, object] = ("", 0.0, None)
_NETRC_RECHECK = 1.0  # seconds between looks at the netrc file's size and mtime


def _env_key() -> tuple[object, ...]:
    """What the per-origin settings depend on: the relevant variables, and the netrc file
    (looked at again at most once a second; a changed path is looked at at once)."""
    global _netrc_seen
    environ = os.environ
    values: list[object] = [environ.get(name) for name in _ENV_NAMES]
    path = environ.get("NETRC") or os.path.join(environ.get("HOME") or "~", ".netrc")
    seen_path, checked, stamp = _netrc_seen
    now = time.monotonic()
    if path != seen_path or now - checked > _NETRC_RECHECK:
        try:
            st = os.stat(os.path.expanduser(path))
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        _netrc_seen = (path, now, stamp)
    values.append(stamp)
    return tuple(values)


class DirectTransport:
    """A process-wide set of urllib3 pools plus per-origin environment settings."""

    def __init__(self, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.pool_size = max(pool_size, 1)
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._env_session = requests.Session()  # only its environment logic is used
        self._direct = urllib3.PoolManager(num_pools=64, maxsize=self.pool_size, block=False,
                                           retries=False)
        self._direct.pool_classes_by_scheme = _POOL_CLASSES
        self._proxies: dict[str, urllib3.ProxyManager] = {}
        self._tls: dict[object, ssl.SSLContext] = {}
        self._routes: dict[tuple[str, str, tuple[object, ...]], Route] = {}
        self._timeouts: dict[tuple[float, float], urllib3.Timeout] = {}

    # -- configuration ------------------------------------------------------------------
    def ensure_pool_size(self, size: int) -> None:
        """Keep up to ``size`` idle connections per origin from now on."""
        if size <= self.pool_size:
            return
        with self._lock:
            if size <= self.pool_size:
                return
            self.pool_size = size
            for manager in (self._direct, *self._proxies.values()):
                manager.connection_pool_kw["maxsize"] = size
            self._routes.clear()  # new pools (with the new size) on next use

    def close(self) -> None:
        with self._lock:
            self._routes.clear()
            self._direct.clear()
            for manager in self._proxies.values():
                manager.clear()
            self._env_session.close()

    def _route(self, scheme: str, netloc: str, url: str, key: tuple[object, ...]) -> Route:
        settings = self._env_session.merge_environment_settings(url, {}, False, None, None)
        proxy = requests.utils.select_proxy(url, settings.get("proxies") or {})
        auth = None
        found = requests.utils.get_netrc_auth(url)
        if found:
            auth = basic_auth(*found)
        elif "@" in netloc:
            user, password = requests.utils.get_auth_from_url(url)
            if user or password:
                auth = basic_auth(user, password)
        pool_kw: dict[str, Any] = {}
        if scheme == "https":
            verify = settings.get("verify", True)
            with self._lock:
                ctx = self._tls.get(verify)
                if ctx is None:
                    ctx = self._tls[verify] = _tls_context(verify)
            pool_kw = {"ssl_context": ctx,
                       "cert_reqs": "CERT_NONE" if verify is False else "CERT_REQUIRED"}
        if proxy:
            if proxy.lower().startswith("socks"):
                return Route(None, False, auth, fallback=True)
            with self._lock:
                manager = self._proxies.get(proxy)
                if manager is None:
                    headers: dict[str, str] = {}
                    p_user, p_password = requests.utils.get_auth_from_url(proxy)
                    if p_user:
                        headers["Proxy-Authorization"] = basic_auth(p_user, p_password)
                    manager = urllib3.ProxyManager(
                        requests.utils.prepend_scheme_if_needed(  # type: ignore[no-untyped-call]
                            proxy, "http"),
                        proxy_headers=headers, num_pools=16, maxsize=self.pool_size,
                        block=False, retries=False,
                    )
                    manager.pool_classes_by_scheme = _POOL_CLASSES
                    self._proxies[proxy] = manager
            if pool_kw:
                manager.connection_pool_kw.update(pool_kw)
            route = Route(manager, True, auth)
        else:
            parts = urlsplit(url)
            host = parts.hostname or ""
            port = parts.port
            pool = self._direct.connection_from_host(host, port, scheme, pool_kwargs=pool_kw)
            route = Route(pool, False, auth)
        self._routes[(scheme, netloc, key)] = route
        return route

    def _timeout(self, timeout: tuple[float, float]) -> urllib3.Timeout:
        t = self._timeouts.get(timeout)
        if t is None:
            if len(self._timeouts) > 256:
                self._timeouts.clear()
            t = self._timeouts[timeout] = urllib3.Timeout(connect=timeout[0], read=timeout[1])
        return t

    # -- requests -----------------------------------------------------------------------
    def route_for(self, url: str) -> Route:
        if self._pid != os.getpid():
            # A forked child must not share the parent's connections (or a lock the parent
            # held at fork time): start over with new pools; the old ones are dropped.
            self._start()
        parts = urlsplit(url)
        key = _env_key()
        route = self._routes.get((parts.scheme, parts.netloc, key))
        if route is None:
            if len(self._routes) > 256:  # the environment keeps changing: forget old routes
                self._routes.clear()
            route = self._route(parts.scheme, parts.netloc, url, key)
        return route

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None,
        params: Sequence[tuple[str, str]] | None,
        data: bytes | Iterable[bytes] | None,
        timeout: tuple[float, float],
        stream: bool,
        route: Route,
        deadline: float | None = None,
    ) -> Response:
        """One exchange, following redirects for GET/HEAD (to another origin with none of
        the application's headers: :data:`CROSS_ORIGIN_KEPT`). urllib3's exceptions
        propagate; the caller turns them into TransportError. Unless ``stream``, the body
        is read before returning (:func:`read_now`)."""
        full = url
        if "@" in url:  # user-info travels as Authorization, never in the request target
            parts = urlsplit(url)
            if "@" in parts.netloc:
                full = urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path,
                                   parts.query, ""))
        if params:
            full += ("&" if "?" in full else "?") + urlencode(params)
        if not full.isascii() or " " in full:
            full = requests.utils.requote_uri(full)
        out = dict(_DEFAULT_HEADERS)
        has_auth = False
        if headers:
            for name, value in headers.items():
                lower = name.lower()
                default = _DEFAULT_LOWER.get(lower)
                if default is not None and default != name:
                    del out[default]
                if lower == "authorization":
                    has_auth = True
                out[name] = value
        if route.auth is not None and not has_auth:
            out["Authorization"] = route.auth
        chunked = False
        if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
            if hasattr(data, "__len__"):  # a sized iterable: Content-Length, as requests does
                out["Content-Length"] = str(len(data))  # type: ignore[arg-type]
            else:
                chunked = True
        t = self._timeout(timeout)
        for _ in range(MAX_REDIRECTS + 1):
            response = self._urlopen(route, method, full, out, data, t, chunked)
            result = Response(response, full)
            location = response.headers.get("Location") \
                if response.status in REDIRECT_STATUSES else None
            if not location or method not in ("GET", "HEAD"):
                if not stream:
                    read_now(result, deadline)
                return result
            result.close()
            nxt = urljoin(full, location)
            if not same_origin(full, nxt):
                # Nothing the application sent goes to another origin.
                out = cross_origin_headers(out)
                has_auth = False
                route = self.route_for(nxt)
                if route.fallback:
                    raise urllib3.exceptions.ProxySchemeUnknown(
                        "redirect to an origin behind a SOCKS proxy")
                if route.auth is not None and not has_auth:
                    out["Authorization"] = route.auth
            full = nxt
        raise requests.exceptions.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")

    def _urlopen(self, route: Route, method: str, url: str, headers: dict[str, str],
                 data: Any, timeout: urllib3.Timeout, chunked: bool
                 ) -> urllib3.BaseHTTPResponse:
        kw: dict[str, Any] = {
            "body": data, "headers": headers, "retries": _NO_RETRIES, "redirect": False,
            "preload_content": False, "decode_content": True, "timeout": timeout,
            "chunked": chunked,
        }
        if route.proxied:
            response: urllib3.BaseHTTPResponse = route.pool.urlopen(method, url, **kw)
            return response
        parts = urlsplit(url)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        try:
            response = route.pool.urlopen(method, target, assert_same_host=False, **kw)
        except ClosedPoolError:  # evicted from the manager: the request was never sent
            self._routes.clear()
            route = self.route_for(url)
            response = route.pool.urlopen(method, target, assert_same_host=False, **kw)
        return response


class Transport(Protocol):
    """Send one request, get one response (the seam every request goes through)."""

    #: The exceptions a failed exchange raises (the caller makes a TransportError of them).
    failures: tuple[type[BaseException], ...]

    @property
    def session(self) -> requests.Session: ...

    def send(self, method: str, url: str, *, headers: Mapping[str, str] | None,
             params: list[tuple[str, str]] | None, data: bytes | Iterable[bytes] | None,
             timeout: tuple[float, float], stream: bool, deadline: float | None,
             on_sent: Callable[[Any], None] | None = None) -> Response:
        """One exchange (redirects followed for GET/HEAD); unless ``stream`` the body is
        read before returning (:func:`read_now`). ``on_sent`` receives the socket once the
        request is written, where :meth:`interruptible` says so."""

    def interruptible(self, url: str) -> bool:
        """True when :meth:`send` to ``url`` calls ``on_sent``."""

    def close(self) -> None:
        """Release what the transport holds."""


class DefaultTransport:
    """The shared urllib3 pools (:func:`default_transport`) for one client. An origin behind
    a SOCKS proxy goes through ``requests`` (which supports it) instead."""

    failures: tuple[type[BaseException], ...] = (Exception,)

    def __init__(self, pool_size: int, session: requests.Session | None = None) -> None:
        self._direct = default_transport()
        self._direct.ensure_pool_size(pool_size)
        self._session = session
        self._fallback: Any = None  # a SessionTransport, made for a SOCKS route
        self._lock = threading.Lock()

    @property
    def session(self) -> requests.Session:
        """A working ``requests.Session`` (a :class:`DefaultSession`, made on first use)."""
        with self._lock:
            if self._session is None:
                self._session = DefaultSession()
            return self._session

    def _session_transport(self) -> Any:
        from ._session_transport import SessionTransport

        with self._lock:
            if self._fallback is None:
                if self._session is None:
                    self._session = DefaultSession()
                self._fallback = SessionTransport(self._session)
            return self._fallback

    def interruptible(self, url: str) -> bool:
        try:
            return not self._direct.route_for(url).fallback
        except ValueError:  # send() reports the bad URL
            return False

    def send(self, method: str, url: str, *, headers: Mapping[str, str] | None,
             params: list[tuple[str, str]] | None, data: bytes | Iterable[bytes] | None,
             timeout: tuple[float, float], stream: bool, deadline: float | None,
             on_sent: Callable[[Any], None] | None = None) -> Response:
        route = self._direct.route_for(url)  # ValueError for a URL HTTP cannot carry
        if route.fallback:
            response: Response = self._session_transport().send(
                method, url, headers=headers, params=params, data=data, timeout=timeout,
                stream=stream, deadline=deadline)
            return response
        SENT_HOOK.fn = on_sent
        try:
            return self._direct.send(method, url, headers=headers, params=params, data=data,
                                     timeout=timeout, stream=stream, route=route,
                                     deadline=deadline)
        finally:
            SENT_HOOK.fn = None

    def close(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()


_default: DirectTransport | None = None
_default_lock = threading.Lock()


def default_transport() -> DirectTransport:
    """The process-wide transport (made on first use, made again in a forked child)."""
    global _default
    transport = _default
    if transport is None:
        with _default_lock:
            if _default is None:
                _default = DirectTransport()
            transport = _default
    return transport


def _after_fork_in_child() -> None:
    # The transport notices the new process itself (route_for compares the pid) and starts
    # over with new pools; only this module's lock may have been held by a parent thread.
    global _default_lock
    _default_lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
