"""The transport through a user's ``requests.Session`` (one of the two behind the seam in
``_transport``): the session is used as given, its auth, adapters, proxies, hooks and
mocks (``responses``, ``requests_mock``) apply.

Bodies are streamed (``stream=True``) and wrapped in the library's
:class:`~durable_streams._response.Response`, so the caller reads them exactly as on the
default path, error bodies capped alike. Redirects are followed here (GET and HEAD only):
one to another origin carries none of the application's headers, nor the session's own
headers, auth or cookies.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import requests.auth
import requests.utils
import urllib3

from ._response import Response
from ._transport import (
    MAX_REDIRECTS,
    REDIRECT_STATUSES,
    cross_origin_headers,
    read_now,
    same_origin,
)

__all__ = ["SessionTransport"]


class _NoAuth(requests.auth.AuthBase):
    """Stands for "no credentials" so that requests does not look for ~/.netrc again."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


class SessionTransport:
    """Sends every request through one ``requests.Session``."""

    #: What a failed exchange raises on this path (turned into TransportError by the caller).
    failures: tuple[type[BaseException], ...] = (
        requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError)

    def __init__(self, session: requests.Session) -> None:
        self._session = session
        self._closed = False
        self._lock = threading.Lock()
        self._env_cache: dict[tuple[str, str], dict[str, Any]] = {}
        self._netrc_cache: dict[tuple[str, str], requests.auth.AuthBase] = {}

    @property
    def session(self) -> requests.Session:
        return self._session

    def interruptible(self, url: str) -> bool:
        return False  # no socket is reachable before the response headers arrive

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._session.close()

    def _netrc_auth(self, url: str) -> Any:
        """``~/.netrc`` credentials for the origin, looked up once (requests would stat the
        file on every request). A no-op auth when there are none or trust_env is off."""
        if not self._session.trust_env:
            return None
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        cached = self._netrc_cache.get(key)
        if cached is None:
            found = requests.utils.get_netrc_auth(url)
            cached = requests.auth.HTTPBasicAuth(*found) if found else _NoAuth()
            self._netrc_cache[key] = cached
        return cached

    def _environment_settings(self, url: str) -> dict[str, Any]:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        cached = self._env_cache.get(key)
        if cached is None:
            cached = dict(self._session.merge_environment_settings(url, {}, True, None, None))
            self._env_cache[key] = cached
        return cached

    def send(self, method: str, url: str, *, headers: Mapping[str, str] | None,
             params: list[tuple[str, str]] | None, data: bytes | Iterable[bytes] | None,
             timeout: tuple[float, float], stream: bool, deadline: float | None,
             on_sent: Callable[..., None] | None = None) -> Response:
        """One exchange; unless ``stream`` the body is read before returning."""
        response = self._exchange(method, url, headers=headers, params=params, data=data,
                                  timeout=timeout)
        if not stream:
            try:
                read_now(response, deadline)
            except BaseException:
                response.close()
                raise
        return response

    def _exchange(self, method: str, url: str, *, headers: Mapping[str, str] | None,
                  params: list[tuple[str, str]] | None, data: Any,
                  timeout: tuple[float, float]) -> Response:
        session = self._session
        if type(session).request is not requests.Session.request:
            # A session subclass that customises request(): go through it.
            r = session.request(
                method, url, headers=dict(headers) if headers else None, params=params,
                data=data, timeout=timeout, stream=True, allow_redirects=False,
            )
        else:
            # What Session.request() does, minus re-reading the environment for proxy
            # and TLS settings on every call (about 0.1 ms each): they are looked up
            # once per origin, which matters on the producer's and reader's hot paths.
            prepared = session.prepare_request(requests.Request(
                method, url, headers=dict(headers) if headers else None, params=params,
                data=data, auth=self._netrc_auth(url) if session.auth is None else None,
            ))
            r = session.send(prepared, timeout=timeout, allow_redirects=False,
                             **self._environment_settings(prepared.url or url))
        current = r.url or url
        kept = dict(headers or {})
        foreign = False
        for _ in range(MAX_REDIRECTS + 1):
            location = r.headers.get("Location") if r.status_code in REDIRECT_STATUSES \
                else None
            if not location or method not in ("GET", "HEAD"):
                if not callable(getattr(r.raw, "read", None)):
                    # An adapter that returns the body already read (raw is None).
                    return Response.from_bytes(r.status_code, r.headers, r.content or b"",
                                               current, reason=r.reason or "",
                                               on_close=r.close)
                return Response(r.raw, current, status=r.status_code, headers=r.headers,
                                reason=r.reason, on_close=r.close)
            r.close()
            target = urljoin(current, location)
            if foreign or not same_origin(current, target):
                # Nothing the application sent goes to another origin: a bare request,
                # without the session's headers, auth or cookies either.
                foreign = True
                kept = cross_origin_headers(kept)
                prepared = requests.Request(method, target, headers=kept).prepare()
            else:
                prepared = session.prepare_request(
                    requests.Request(method, target, headers=kept))
            r = session.send(prepared, timeout=timeout, allow_redirects=False,
                             **self._environment_settings(target))
            current = r.url or target
        r.close()
        raise requests.exceptions.TooManyRedirects(f"more than {MAX_REDIRECTS} redirects")
