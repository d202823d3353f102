"""Receive webhook wakes (PROTOCOL §6.5, §7.1): verify the signature, then read and ack.

A webhook subscription makes the server ``POST`` a JSON *wake* to your URL when a linked
stream has data. :class:`WebhookVerifier` checks the ``Webhook-Signature`` header (Ed25519
over ``"<t>.<raw body>"``, key chosen by ``kid`` from the server's JWKS) and the timestamp,
and returns a :class:`Wake`; :meth:`Wake.read` reads a stream's pending data and
:meth:`Wake.callback` acks it later (or answer :data:`Wake.DONE_BODY` at once).

Ed25519 comes from ``cryptography``, an optional extra: ``pip install
'durable-streams-sync[webhooks]'``. Importing this module works without it; constructing a
verifier does not.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
import warnings
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import requests

from . import _wake, errors
from ._http import NO_RETRY, HeadersLike, HttpClient, RetryPolicy, TimeoutLike
from ._redact import redact_url
from ._wake import AckResult, LinkedStream
from .reading import StreamResponse, stream

__all__ = [
    "JWKS_PATH",
    "SIGNATURE_HEADER",
    "AckResult",
    "Wake",
    "WebhookVerifier",
    "jwks_url_for",
]

log = logging.getLogger("durable_streams.webhooks")

#: Where a server publishes its webhook signing keys, relative to the stream root (§6.5).
JWKS_PATH = "/__ds/jwks.json"
#: The request header that carries the signature (§7.1).
SIGNATURE_HEADER = "Webhook-Signature"

# WebhookSignatureError.reason values.
MISSING_HEADER = "missing_header"
MALFORMED_HEADER = "malformed_header"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
STALE_TIMESTAMP = "stale_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
UNEXPECTED_SUBSCRIPTION = "unexpected_subscription"

_INSTALL_HINT = "pip install 'durable-streams-sync[webhooks]'"
_CALLBACK_RE = re.compile(r"^(?P<root>.+)/__ds/subscriptions/[^/]+/callback$")
_MAX_AGE_RE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
# Cache lifetime when the JWKS response says nothing (the reference server sends 300 s).
_DEFAULT_MAX_AGE_S = 300.0
# An unknown kid that a refetch did not find is not refetched for again for this long.
_MISSING_KID_TTL_S = 60.0


def __getattr__(name: str) -> Any:
    if name == "CallbackResult":  # renamed: Claim.ack() and Wake.callback() share it
        warnings.warn("durable_streams.webhooks.CallbackResult is deprecated: it is "
                      "durable_streams.AckResult now (Claim.ack() returns it too)",
                      DeprecationWarning, stacklevel=2)
        return AckResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def jwks_url_for(stream_root: str) -> str:
    """The JWKS URL of the server whose stream root is ``stream_root`` (§6.5).

    >>> jwks_url_for("https://streams.example/v1/stream/")
    'https://streams.example/v1/stream/__ds/jwks.json'
    """
    return stream_root.rstrip("/") + JWKS_PATH


def _root_from_jwks_url(url: str) -> str | None:
    return url[: -len(JWKS_PATH)] if url.endswith(JWKS_PATH) else None


def _root_from_callback_url(url: str) -> str | None:
    match = _CALLBACK_RE.match(url)
    return match.group("root") if match else None


def _b64url_decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _load_ed25519() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError as exc:
        raise ImportError(
            "verifying webhook signatures needs the 'cryptography' package, which the "
            f"webhooks extra installs: {_INSTALL_HINT}"
        ) from exc
    return ed25519


def _sig_error(message: str, reason: str) -> errors.WebhookSignatureError:
    return errors.WebhookSignatureError(message, reason=reason, status=None)


@dataclass(frozen=True)
class _Signature:
    timestamp: int
    kid: str
    signatures: tuple[bytes, ...]
    timestamp_text: str  # as sent: the signed bytes start with exactly this


def parse_signature_header(header: str | None) -> _Signature:
    """Split ``t=<unix s>,kid=<kid>,ed25519=<base64url>`` (§7.1); raise on anything else.

    Several ``ed25519=`` entries are accepted (any one may match)."""
    if header is None or not str(header).strip():
        raise _sig_error(f"the {SIGNATURE_HEADER} header is missing", MISSING_HEADER)
    timestamp: int | None = None
    timestamp_text = ""
    kid: str | None = None
    sigs: list[bytes] = []
    for part in str(header).split(","):
        name, sep, value = part.strip().partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep or not value:
            continue
        if name == "t" and value.isdigit() and len(value) <= 12:
            timestamp, timestamp_text = int(value), value
        elif name == "kid":
            kid = value
        elif name == "ed25519":
            try:
                raw = _b64url_decode(value)
            except (ValueError, binascii.Error):
                continue
            if len(raw) == 64:
                sigs.append(raw)
    missing = [n for n, v in (("t", timestamp), ("kid", kid), ("ed25519", sigs)) if not v]
    if missing or timestamp is None or kid is None:
        raise _sig_error(
            f"the {SIGNATURE_HEADER} header is malformed: no valid "
            f"{', '.join(missing)} (expected t=<unix seconds>,kid=<key id>,"
            "ed25519=<base64url signature>)",
            MALFORMED_HEADER,
        )
    return _Signature(timestamp, kid, tuple(sigs), timestamp_text)


@dataclass(frozen=True)
class Wake:
    """One webhook delivery (§7.1): which streams have pending data, and how to ack them.

    ``streams`` is the snapshot: each :class:`~durable_streams._wake.LinkedStream` has the
    ``path`` (relative to the stream root), the ``acked_offset`` (``"-1"``: nothing acked)
    and the ``tail_offset``. Finish either by answering the delivery with
    :attr:`DONE_BODY` (the server then acks every ``tail_offset``) or, later, with
    :meth:`callback`. The ``callback_token`` is a credential: it is left out of ``repr``.
    """

    #: The body of the synchronous reply that acks the snapshot's tails (§7.1).
    DONE_BODY: ClassVar[bytes] = b'{"done":true}'
    #: Its content type.
    DONE_CONTENT_TYPE: ClassVar[str] = "application/json"

    subscription_id: str
    wake_id: str
    generation: int
    streams: tuple[LinkedStream, ...]
    callback_url: str
    callback_token: str = field(repr=False)
    #: The stream root (``{root}/{path}`` is a stream's URL); ``None`` if unknown.
    stream_root: str | None = None
    #: The signature's ``t`` (Unix seconds) when the wake came through a verifier.
    timestamp: int | None = None
    session: requests.Session | None = field(default=None, repr=False, compare=False)
    timeout: TimeoutLike = field(default=None, repr=False, compare=False)

    # -- parsing ---------------------------------------------------------------------------
    @classmethod
    def parse(cls, body: bytes | str, *, stream_root: str | None = None,
              session: requests.Session | None = None, timeout: TimeoutLike = None,
              timestamp: int | None = None) -> Wake:
        """Parse a wake body WITHOUT verifying it (for tests and trusted paths).

        Receivers must use :meth:`WebhookVerifier.verify` instead. Raises
        :class:`~durable_streams.ParseError` for a body that is not a wake.
        """
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.ParseError(f"a webhook wake body is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise errors.ParseError("a webhook wake body must be a JSON object")
        missing = [k for k in ("subscription_id", "wake_id", "generation", "callback_url",
                               "callback_token") if doc.get(k) in (None, "")]
        generation = doc.get("generation")
        if missing or isinstance(generation, bool) or not isinstance(generation, int):
            what = ", ".join(missing) if missing else "an integer generation"
            raise errors.ParseError(f"a webhook wake body lacks {what}")
        callback_url = str(doc["callback_url"])
        root = stream_root or _root_from_callback_url(callback_url)
        return cls(
            subscription_id=str(doc["subscription_id"]),
            wake_id=str(doc["wake_id"]),
            generation=generation,
            streams=_wake.parse_streams(doc.get("streams")),
            callback_url=callback_url,
            callback_token=str(doc["callback_token"]),
            stream_root=root.rstrip("/") if root else None,
            timestamp=timestamp,
            session=session,
            timeout=timeout,
        )

    # -- the snapshot ----------------------------------------------------------------------
    def stream(self, path: str) -> LinkedStream:
        """The snapshot entry of ``path``; ``KeyError`` if the wake does not name it."""
        for linked in self.streams:
            if linked.path == path:
                return linked
        names = ", ".join(s.path for s in self.streams) or "none"
        raise KeyError(f"this wake has no stream {path!r} (it has: {names})")

    @property
    def pending(self) -> tuple[LinkedStream, ...]:
        """The streams with data past their acked offset."""
        return tuple(s for s in self.streams if s.has_pending)

    def tails(self) -> dict[str, str]:
        """``{path: tail_offset}`` of the pending streams: the acks that finish this wake."""
        return {s.path: s.tail_offset for s in self.pending if s.tail_offset != "-1"}

    def stream_url(self, path: str) -> str:
        if not self.stream_root:
            raise ValueError(
                "this wake does not know the stream root: pass stream_root= to Wake.parse "
                "(the callback_url did not have the form {root}/__ds/subscriptions/{id}/"
                "callback)"
            )
        return f"{self.stream_root}/{path.lstrip('/')}"

    # -- reading and acking ----------------------------------------------------------------
    def read(self, path: str, *, offset: str | None = None, headers: HeadersLike = None,
             timeout: TimeoutLike = None, retry: RetryPolicy | None = None) -> StreamResponse:
        """Read ``path``'s pending data: from the snapshot's acked offset (``"-1"``: the
        beginning), or from ``offset`` (to resume after a partial :meth:`callback`), until
        the reader is up to date. The server may have more than ``tail_offset`` by now, so
        the response can run past the snapshot; ``response.offset`` is where it ended, and
        acking that (with :meth:`callback`) covers exactly what was read."""
        start = self.stream(path).acked_offset if offset is None else offset
        return stream(
            self.stream_url(path), offset=start, live=False, headers=headers,
            session=self.session, timeout=timeout if timeout is not None else self.timeout,
            retry=retry, stop_at_up_to_date=True,
        )

    def callback(self, acks: Mapping[str, str] | Sequence[tuple[str, str]] | None = None, *,
                 done: bool = True, headers: HeadersLike = None,
                 timeout: TimeoutLike = None) -> AckResult:
        """Ack through the callback URL with this wake's bearer token (§7.1).

        ``acks`` maps stream path to the last processed offset (inclusive); ``None`` acks
        every pending stream's ``tail_offset``. ``done=True`` also ends the wake (releases
        the lease); ``done=False`` only records progress and extends the lease. Raises
        :class:`~durable_streams.FencedError` (409 ``FENCED``) when this wake is no longer
        current: it was finished already, or the lease expired and a newer wake exists.
        """
        body = _wake.ack_body(self.wake_id, self.generation,
                              self.tails() if acks is None else acks, done=done)
        client = HttpClient(self.session, timeout=timeout if timeout is not None
                            else self.timeout)
        try:
            response = client.request(
                "POST", self.callback_url, operation="webhook callback", headers=headers,
                extra_headers={"Content-Type": "application/json",
                               "Authorization": f"Bearer {self.callback_token}"},
                data=body, idempotent=not done, ok=lambda r: r.status_code < 500,
            )
        finally:
            client.close()
        if response.status_code >= 300:
            raise _wake.subscription_error(
                response.status_code, response.headers, response.text,
                url=redact_url(self.callback_url), operation="webhook callback",
                hint="this wake is finished or superseded; stop and do not ack again"
                if response.status_code == 409 else "",
            )
        return AckResult.from_body(response.content)

    def reply_done(self) -> bytes:
        """The synchronous reply body ``{"done":true}``: the server acks every tail of this
        wake's snapshot and releases the lease. Send it with a 2xx status."""
        return self.DONE_BODY


class WebhookVerifier:
    """Verifies webhook deliveries against the server's published keys (§6.5, §7.1).

    Create one per server and share it (it is thread-safe). The JWKS at ``jwks_url`` is
    fetched on first use and cached as long as its ``Cache-Control: max-age`` allows; a
    ``kid`` it does not know causes one refetch (the server rotated its key or restarted),
    at most once per ``min_refresh_interval_s`` and never twice for the same unknown kid
    within a minute, so forged headers cannot make it hammer the server. When a refetch
    fails but keys are cached, the cached keys keep being used (and the failure logged).

    Args:
        jwks_url: the ``http://`` or ``https://`` URL of the server's JWKS, normally
            ``jwks_url_for(stream_root)`` (``{root}/__ds/jwks.json``, §6.5) or the
            ``webhook.signing.jwks_url`` of the subscription; :meth:`for_stream_root`
            builds it. Fetched on the first :meth:`verify`, not at construction.
        tolerance_s: seconds, both ways, between the signature's timestamp ``t`` and the
            receiving clock (``now=`` of :meth:`verify`, default ``time.time()``): older is
            ``stale_timestamp`` (a replay), newer ``future_timestamp`` (clock skew). A
            positive number; default 300 (five minutes, as §7.1 suggests).
        session: a ``requests.Session`` for the JWKS fetch, used as given and never closed
            by the library; it is also given to every :class:`Wake` this verifier returns,
            for :meth:`Wake.read` and :meth:`Wake.callback`. Default: the library's shared
            connection pool.
        timeout: seconds, one number or ``(connect, read)``, for the JWKS fetch and the
            wakes' reads and callbacks. Default ``(10, 60)``.
        headers: extra request headers for the JWKS fetch only (values or zero-argument
            callables); a wake's reads and callbacks take ``headers=`` themselves.
            Default: none.
        subscription_ids: if given, a verified wake of any other subscription is refused
            with reason ``unexpected_subscription`` (§12.10: for endpoints shared by several
            subscriptions or servers). Default ``None``: any subscription.
        min_refresh_interval_s: seconds, the least time between two JWKS fetches caused by
            an unknown ``kid`` or an expired cache (``>= 0``; default 1.0). An unknown kid
            that a refetch did not find is not refetched for again within 60 s either.
            Within the interval an unknown kid is ``unknown_key`` at once.
        stream_root: the stream root for :meth:`Wake.read` (``{root}/{path}`` is a
            stream's URL); default: derived from ``jwks_url`` (``{root}/__ds/jwks.json``),
            else from each wake's callback URL.

    ``ImportError`` naming ``pip install 'durable-streams-sync[webhooks]'`` when
    ``cryptography`` is missing; ``ValueError`` for a bad ``jwks_url``, ``tolerance_s`` or
    ``min_refresh_interval_s``.
    """

    def __init__(
        self,
        jwks_url: str,
        *,
        tolerance_s: float = 300,
        session: requests.Session | None = None,
        timeout: TimeoutLike = None,
        headers: HeadersLike = None,
        subscription_ids: Collection[str] | None = None,
        min_refresh_interval_s: float = 1.0,
        stream_root: str | None = None,
    ) -> None:
        self._ed25519 = _load_ed25519()
        if not isinstance(jwks_url, str) or not jwks_url.startswith(("http://", "https://")):
            raise ValueError(f"jwks_url must be an http:// or https:// URL, got {jwks_url!r}")
        if isinstance(tolerance_s, bool) or not isinstance(tolerance_s, (int, float)) \
                or not tolerance_s > 0:
            raise ValueError(f"tolerance_s must be a positive number of seconds, "
                             f"got {tolerance_s!r}")
        if isinstance(min_refresh_interval_s, bool) or not isinstance(
                min_refresh_interval_s, (int, float)) or min_refresh_interval_s < 0:
            raise ValueError("min_refresh_interval_s must be a number >= 0, "
                             f"got {min_refresh_interval_s!r}")
        self.jwks_url = jwks_url
        self.tolerance_s = float(tolerance_s)
        self.min_refresh_interval_s = float(min_refresh_interval_s)
        self.subscription_ids = frozenset(subscription_ids) if subscription_ids else None
        root = stream_root or _root_from_jwks_url(jwks_url)
        self.stream_root = root.rstrip("/") if root else None
        self._session = session
        self._timeout = timeout
        self._headers = headers
        self._client = HttpClient(session, timeout=timeout)
        # _lock guards everything below; fetches happen while holding it, so concurrent
        # requests that miss the same kid wait for one fetch instead of making their own.
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}
        self._expires_at = 0.0          # monotonic; keys are stale after it
        self._last_fetch = float("-inf")  # monotonic time of the last fetch attempt
        self._fetch_generation = 0
        self._missing: dict[str, float] = {}  # unknown kid -> when a refetch missed it

    # -- public ----------------------------------------------------------------------------
    @classmethod
    def for_stream_root(cls, stream_root: str, **kwargs: Any) -> WebhookVerifier:
        """A verifier for the server whose stream root is ``stream_root``: its JWKS is
        ``{stream_root}/__ds/jwks.json``; ``kwargs`` are the other constructor arguments."""
        return cls(jwks_url_for(stream_root), stream_root=stream_root, **kwargs)

    def verify(self, body: bytes, signature_header: str | None, *,
               now: float | None = None) -> Wake:
        """Check a delivery and return its :class:`Wake`.

        ``body`` must be the raw request bytes, exactly as received (verify before parsing:
        re-serialised JSON does not match). Raises
        :class:`~durable_streams.WebhookSignatureError` whose ``reason`` is one of
        ``missing_header``, ``malformed_header``, ``stale_timestamp``, ``future_timestamp``,
        ``unknown_key``, ``bad_signature``, ``unexpected_subscription``. A JWKS that cannot
        be fetched at all raises the HTTP error (answer 5xx: the server will retry).
        """
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise TypeError("body must be the raw request bytes (request.get_data() in Flask,"
                            f" request.body in Django), got {type(body).__name__}")
        raw = bytes(body)
        sig = parse_signature_header(signature_header)
        current = time.time() if now is None else float(now)
        age = current - sig.timestamp
        if age > self.tolerance_s:
            raise _sig_error(f"the signature timestamp is {age:.0f}s old, more than the "
                             f"{self.tolerance_s:.0f}s tolerance (a replay?)", STALE_TIMESTAMP)
        if -age > self.tolerance_s:
            raise _sig_error(f"the signature timestamp is {-age:.0f}s in the future, more than"
                             f" the {self.tolerance_s:.0f}s tolerance (check the clocks)",
                             FUTURE_TIMESTAMP)
        key = self._key(sig.kid)
        signed = sig.timestamp_text.encode() + b"." + raw
        if not any(self._valid(key, s, signed) for s in sig.signatures):
            raise _sig_error("the webhook signature does not match the body", BAD_SIGNATURE)
        wake = Wake.parse(raw, stream_root=self.stream_root, session=self._session,
                          timeout=self._timeout, timestamp=sig.timestamp)
        if self.subscription_ids is not None and wake.subscription_id not in \
                self.subscription_ids:
            raise _sig_error(f"the wake is for subscription {wake.subscription_id!r}, "
                             "which this verifier does not accept", UNEXPECTED_SUBSCRIPTION)
        return wake

    def refresh(self) -> None:
        """Fetch the JWKS now (normally not needed: it is fetched when due)."""
        with self._lock:
            self._fetch_locked(time.monotonic())

    @property
    def key_ids(self) -> frozenset[str]:
        """The ``kid`` values currently cached."""
        with self._lock:
            return frozenset(self._keys)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> WebhookVerifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"WebhookVerifier({redact_url(self.jwks_url)!r}, tolerance_s={self.tolerance_s})"

    # -- keys ------------------------------------------------------------------------------
    def _valid(self, key: Any, signature: bytes, signed: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        try:
            key.verify(signature, signed)
        except InvalidSignature:
            return False
        return True

    def _key(self, kid: str) -> Any:
        seen_generation = self._fetch_generation
        with self._lock:
            now = time.monotonic()
            if now >= self._expires_at:
                self._refresh_due_locked(now)
            key = self._keys.get(kid)
            if key is not None:
                return key
            if self._fetch_generation != seen_generation:
                # Another thread fetched while this one waited for the lock: no new fetch.
                raise self._unknown(kid)
            missed = self._missing.get(kid)
            if missed is not None and now - missed < _MISSING_KID_TTL_S:
                raise self._unknown(kid)
            if now - self._last_fetch < self.min_refresh_interval_s:
                log.debug("unknown webhook kid %r; JWKS refetched %.2fs ago, not again yet",
                          kid[:80], now - self._last_fetch)
                raise self._unknown(kid)
            log.info("unknown webhook kid %r: refetching the JWKS once (key rotation?)", kid[:80])
            self._fetch_locked(now)
            key = self._keys.get(kid)
            if key is None:
                self._missing[kid] = now
                if len(self._missing) > 1000:
                    self._missing.clear()
                raise self._unknown(kid)
            return key

    def _unknown(self, kid: str) -> errors.WebhookSignatureError:
        return _sig_error(f"no key with kid {kid[:80]!r} in the JWKS at "
                          f"{redact_url(self.jwks_url)}", UNKNOWN_KEY)

    def _refresh_due_locked(self, now: float) -> None:
        """The cache expired: refetch; on failure keep stale keys if there are any."""
        if self._keys and now - self._last_fetch < self.min_refresh_interval_s:
            return
        try:
            self._fetch_locked(now)
        except errors.DurableStreamError as exc:
            if not self._keys:
                raise
            log.warning("could not refresh the webhook JWKS from %s (%s); using the cached "
                        "keys", redact_url(self.jwks_url), type(exc).__name__)
            self._expires_at = now + max(self.min_refresh_interval_s, 1.0)

    def _fetch_locked(self, now: float) -> None:
        self._last_fetch = now
        self._fetch_generation += 1
        response = self._client.request(
            "GET", self.jwks_url, operation="fetch webhook JWKS", headers=self._headers,
            extra_headers={"Accept": "application/jwk-set+json, application/json"},
            retry=NO_RETRY,
        )
        keys = self._parse_jwks(response.text)
        self._keys = keys
        self._missing.clear()
        self._expires_at = now + self._max_age(response.headers.get("Cache-Control"))
        log.debug("fetched %d webhook key(s) from %s", len(keys), redact_url(self.jwks_url))

    def _max_age(self, cache_control: str | None) -> float:
        if not cache_control:
            return _DEFAULT_MAX_AGE_S
        lowered = cache_control.lower()
        if "no-store" in lowered or "no-cache" in lowered:
            return 0.0
        match = _MAX_AGE_RE.search(cache_control)
        return float(match.group(1)) if match else _DEFAULT_MAX_AGE_S

    def _parse_jwks(self, text: str) -> dict[str, Any]:
        where = f"the JWKS at {redact_url(self.jwks_url)}"
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise errors.ParseError(f"{where} is not JSON: {exc}", url=self.jwks_url) from exc
        entries = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(entries, list):
            raise errors.ParseError(f"{where} has no \"keys\" array", url=self.jwks_url)
        keys: dict[str, Any] = {}
        for jwk in entries:
            if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" \
                    or jwk.get("crv") != "Ed25519" or not isinstance(jwk.get("kid"), str):
                continue  # another algorithm, or no kid to select it by: not ours to use
            try:
                raw = _b64url_decode(str(jwk.get("x", "")))
                keys[jwk["kid"]] = self._ed25519.Ed25519PublicKey.from_public_bytes(raw)
            except (ValueError, binascii.Error):
                log.warning("skipping a malformed Ed25519 key %r in %s", jwk["kid"], where)
        return keys
