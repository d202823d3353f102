"""Subscriptions (PROTOCOL §6) and pull-wake workers (§7.2, §7.3).

A subscription is a durable cursor over many streams (a glob ``pattern`` and/or explicit
``streams``) kept by the server. With pull-wake delivery the server appends a wake event to
a wake stream whenever a linked stream has data past its acked offset; workers follow the
wake stream, race to claim the lease, read what is pending, ack, and are fenced by
generation when their lease runs out. Delivery is at-least-once: make effects idempotent.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import requests

from . import _protocol as P
from . import errors
from ._claim import Claim
from ._http import DEFAULT_RETRY, HeadersLike, HttpClient, ParamsLike, RetryPolicy, TimeoutLike
from ._redact import redact_url
from ._response import Response
from ._wake import LinkedStream, parse_streams, subscription_error

if TYPE_CHECKING:
    from .reading import StreamResponse

__all__ = ["Claim", "ClaimLoop", "Subscription", "SubscriptionInfo"]

log = logging.getLogger("durable_streams.subscriptions")

CONTROL_PREFIX = "__ds/subscriptions"
_WEBHOOK_HINT = (
    "The server accepts https:// webhook URLs, and http:// only for localhost and 127.x.x.x "
    "(development); private (RFC 1918), link-local and other local-network hosts are refused"
)
_CLAIM_REFUSALS = frozenset({"ALREADY_CLAIMED", "NO_PENDING_WORK"})


def _accept(response: Response) -> bool:
    """Let the subscription code map 4xx JSON errors itself; 429/5xx go to the retry loop."""
    return response.status_code < 500 and response.status_code != 429


def _json(response: Response) -> Any:
    try:
        return json.loads(response.content) if response.content else None
    except ValueError as exc:
        raise errors.ParseError(
            f"the subscription API answered {response.status_code} with a body that is not "
            f"JSON: {exc}", status=response.status_code,
        ) from exc


def _check_path(path: Any, what: str = "stream path") -> str:
    if not isinstance(path, str) or not path.strip("/"):
        raise ValueError(f"{what} must be a non-empty stream-root-relative path such as "
                         f"'orders/a', got {path!r}")
    if "://" in path:
        raise ValueError(f"{what} must be relative to the stream root ('orders/a'), not a "
                         f"URL: {redact_url(path)}")
    return path.strip("/")


@dataclass(frozen=True)
class SubscriptionInfo:
    """What ``GET`` says about a subscription (PROTOCOL §6.3).

    ``streams`` holds each linked stream's path, link type (``glob``/``explicit``) and acked
    offset (``tail_offset`` mirrors it: the server does not report tails here).
    """

    id: str
    type: str
    pattern: str | None
    streams: tuple[LinkedStream, ...]
    wake_stream: str | None
    webhook_url: str | None
    lease_ttl_ms: int
    status: str
    created_at: str | None
    description: str | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> SubscriptionInfo:
        webhook = doc.get("webhook")
        return cls(
            id=str(doc.get("subscription_id") or doc.get("id") or ""),
            type=str(doc.get("type") or ""),
            pattern=doc.get("pattern"),
            streams=parse_streams(doc.get("streams")),
            wake_stream=doc.get("wake_stream"),
            webhook_url=webhook.get("url") if isinstance(webhook, Mapping) else None,
            lease_ttl_ms=int(doc.get("lease_ttl_ms") or 30_000),
            status=str(doc.get("status") or ""),
            created_at=doc.get("created_at"),
            description=doc.get("description"),
            raw=dict(doc),
        )

    def acked_offsets(self) -> dict[str, str]:
        """``{path: acked_offset}`` for every linked stream."""
        return {s.path: s.acked_offset for s in self.streams}


class Subscription:
    """A handle on subscription ``subscription_id`` under the stream root ``root_url``.

    Creating a handle makes no request (:meth:`create` makes the subscription). The handle
    is thread-safe; :meth:`close` (or leaving ``with sub:``) stops its claim loops and
    releases the HTTP session it made.

    Args:
        root_url: the ``http://`` or ``https://`` URL that stream paths are relative to
            (on the reference server ``http://host:port/v1/stream``); the control API is
            at ``{root_url}/__ds/subscriptions/{id}`` (PROTOCOL §6). A trailing ``/`` is
            ignored. ``ValueError`` for anything else.
        subscription_id: the subscription's name, any non-empty string (URL-quoted in
            requests).
        headers: extra request headers for every control call, claim, ack and read of
            this handle: values or zero-argument callables evaluated on each request
            (token refresh). Default: none.
        params: extra query parameters, values or callables, as ``headers``. Default: none.
        session: a ``requests.Session`` used as given (auth, proxies, TLS) and never
            closed by the library; default: the library's shared connection pool.
        timeout: seconds, one number or ``(connect, read)``, per request. Default
            ``(10, 60)``. Live reads of the wake stream (:meth:`claims`) use a longer read
            timeout of their own.
        retry: the :class:`~durable_streams.RetryPolicy` for requests that are safe to
            repeat (create, info, add/remove streams, delete, heartbeats, reads). A claim,
            a ``done`` ack and a release are never repeated after an ambiguous failure.
            Default ``RetryPolicy()`` (5 retries, 100 ms doubling to 10 s).
    """

    def __init__(
        self,
        root_url: str,
        subscription_id: str,
        *,
        headers: HeadersLike = None,
        params: ParamsLike = None,
        session: requests.Session | None = None,
        timeout: TimeoutLike = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not isinstance(root_url, str) or not root_url.startswith(("http://", "https://")):
            raise ValueError(f"root_url must be an http:// or https:// URL, got {root_url!r}")
        if not isinstance(subscription_id, str) or not subscription_id.strip():
            raise ValueError(f"subscription_id must be a non-empty string, got "
                             f"{subscription_id!r}")
        self.root_url = root_url.rstrip("/")
        self.subscription_id = subscription_id
        self.url = f"{self.root_url}/{CONTROL_PREFIX}/{quote(subscription_id, safe='')}"
        self.headers = headers
        self.params = params
        self.retry = retry if retry is not None else DEFAULT_RETRY
        self._client = HttpClient(session, timeout=timeout)
        self._wake_stream: str | None = None
        self._loops: weakref.WeakSet[ClaimLoop] = weakref.WeakSet()
        #: True when :meth:`create` made it, False when it re-confirmed an identical one.
        self.created: bool | None = None

    @property
    def safe_url(self) -> str:
        """:attr:`url` with credentials and query values masked (for messages)."""
        return redact_url(self.url)

    def stream_url(self, path: str) -> str:
        """The full URL of the stream at root-relative ``path``."""
        return f"{self.root_url}/{_check_path(path)}"

    # -- control API (§6) -----------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root_url: str,
        subscription_id: str,
        *,
        pattern: str | None = None,
        streams: Iterable[str] | None = None,
        wake_stream: str | None = None,
        webhook_url: str | None = None,
        lease_ttl_ms: int | None = None,
        description: str | None = None,
        **options: Any,
    ) -> Subscription:
        """Create the subscription (PUT, §6.2), or re-confirm an identical one; return its
        handle, with ``.created`` True (201) or False (an identical one existed, 200).

        Args:
            root_url, subscription_id: as for :class:`Subscription`.
            pattern: a glob over stream paths relative to the root: ``*`` matches one path
                segment, ``**`` any number (``"orders/*"``). Streams created later that
                match are linked too. Give ``pattern``, ``streams`` or both.
            streams: explicit stream paths (``["orders/a"]``; one ``str`` is one path),
                linked at their current tail. Default: none.
            wake_stream: pull-wake delivery (§7.2): the path of an existing JSON-mode
                stream that the server appends wake events to; workers follow it with
                :meth:`claims`. Exactly one of ``wake_stream`` and ``webhook_url``.
            webhook_url: webhook delivery (§7.1): the URL the server ``POST``s signed wakes
                to (``https://``; ``http://`` only for localhost and 127.x.x.x; private
                network hosts are refused with :class:`WebhookURLRejectedError`). The server
                must run with webhooks on (``durable-streams serve --webhooks``).
            lease_ttl_ms: milliseconds a claim or webhook wake holds the lease without an
                ack, 1000 to 600000 (1 s to 10 min). Default: the server's, 30000. A
                :class:`Claim`'s heartbeat extends it four times per lease.
            description: free text stored with the subscription. Default: none.
            **options: ``headers``, ``params``, ``session``, ``timeout``, ``retry`` of the
                returned handle (see :class:`Subscription`).

        ``ValueError`` / ``TypeError`` for bad arguments, before any request. Raises
        :class:`SubscriptionExistsError` (409) if the id is taken with another
        configuration, :class:`WebhookURLRejectedError` for a refused webhook URL,
        :class:`BadRequestError` when the server refuses the configuration (a webhook
        subscription on a server without webhooks).
        """
        doc: dict[str, Any] = {}
        if (wake_stream is None) == (webhook_url is None):
            raise ValueError("give exactly one of wake_stream= (pull-wake workers) or "
                             "webhook_url= (webhook delivery)")
        if wake_stream is not None:
            doc["type"] = "pull-wake"
        else:
            doc["type"] = "webhook"
        path_list = None if streams is None else [_check_path(p) for p in (
            [streams] if isinstance(streams, str) else streams)]
        if pattern is None and not path_list:
            raise ValueError("give pattern= (a glob such as 'orders/*') and/or streams= "
                             "(explicit stream paths)")
        if pattern is not None:
            doc["pattern"] = _check_path(pattern, "pattern")
        if path_list:
            doc["streams"] = path_list
        if wake_stream is not None:
            doc["wake_stream"] = _check_path(wake_stream, "wake_stream")
        else:
            if not isinstance(webhook_url, str) or "://" not in webhook_url:
                raise ValueError(f"webhook_url must be an https:// URL, got {webhook_url!r}")
            doc["webhook"] = {"url": webhook_url}
        if lease_ttl_ms is not None:
            if isinstance(lease_ttl_ms, bool) or not isinstance(lease_ttl_ms, int):
                raise TypeError(f"lease_ttl_ms must be an int, got {lease_ttl_ms!r}")
            if not 1000 <= lease_ttl_ms <= 600_000:
                raise ValueError(f"lease_ttl_ms must be from 1000 to 600000 (1 s to 10 min, "
                                 f"PROTOCOL §6.2), got {lease_ttl_ms}")
            doc["lease_ttl_ms"] = lease_ttl_ms
        if description is not None:
            doc["description"] = str(description)
        sub = cls(root_url, subscription_id, **options)
        try:
            response = sub._call(
                "PUT", "", operation="create subscription",
                data=json.dumps(doc, separators=(",", ":")).encode(),
            )
        except errors.WebhookURLRejectedError as exc:
            sub.close()
            exc.message = f"{exc.message}. {_WEBHOOK_HINT}"
            exc.args = (exc.message,)
            raise
        except BaseException:
            sub.close()
            raise
        sub.created = response.status_code == 201
        sub._wake_stream = doc.get("wake_stream")
        return sub

    def info(self) -> SubscriptionInfo:
        """The subscription's configuration, status and linked streams (GET, §6.3)."""
        doc = _json(self._call("GET", "", operation="subscription info"))
        if not isinstance(doc, Mapping):
            raise errors.ParseError(f"subscription info for {self.safe_url} is not an object")
        info = SubscriptionInfo.from_json(doc)
        self._wake_stream = info.wake_stream
        return info

    def add_streams(self, paths: Iterable[str]) -> None:
        """Link streams explicitly (§6.4), at their current tail; idempotent."""
        items = [_check_path(p) for p in ([paths] if isinstance(paths, str) else paths)]
        if not items:
            return
        body = json.dumps({"streams": items}, separators=(",", ":")).encode()
        self._call("POST", "/streams", operation="add streams", data=body)

    def remove_stream(self, path: str) -> None:
        """Remove an explicit link (§6.4); a glob link that still matches stays."""
        self._call("DELETE", "/streams/" + quote(_check_path(path), safe=""),
                   operation="remove stream")

    def delete(self) -> None:
        """Delete the subscription (§6.3); deleting a missing one succeeds too."""
        self._call("DELETE", "", operation="delete subscription")

    # -- pull-wake (§7.2) -----------------------------------------------------------------
    def claim(self, worker: str, *, heartbeat: bool = True) -> Claim | None:
        """Try once to take the lease (POST ``/claim``, §7.2): a :class:`Claim`, or ``None``
        if another worker holds it (``ALREADY_CLAIMED``) or nothing is pending
        (``NO_PENDING_WORK``).

        Args:
            worker: this worker's name, a non-empty string reported by the server (use
                something unique per process, such as ``f"{hostname}-{pid}"``).
            heartbeat: ``True`` (default) starts a thread that extends the lease four times
                per ``lease_ttl_ms`` until the claim ends, so long jobs keep it; ``False``
                leaves extending to you (:meth:`Claim.heartbeat` or ``ack()``), and the
                lease expires after ``lease_ttl_ms`` without one.

        A claim is not retried after an ambiguous failure (it could have been won): a
        transport error raises :class:`TransportError`, and the lease, if it was taken,
        expires by itself.
        """
        if not isinstance(worker, str) or not worker.strip():
            raise ValueError(f"worker must be a non-empty name, e.g. f'{{hostname}}-{{pid}}', "
                             f"got {worker!r}")
        body = json.dumps({"worker": worker}).encode()
        try:
            response = self._call("POST", "/claim", operation="claim", data=body,
                                  idempotent=False)
        except errors.DurableStreamError as exc:
            if exc.code in _CLAIM_REFUSALS:
                log.debug("claim by %r on %r: %s", worker, self.subscription_id, exc.code)
                return None
            raise
        doc = _json(response)
        if not isinstance(doc, Mapping) or "token" not in doc:
            raise errors.ParseError(f"claim on {self.safe_url}: the answer has no token")
        return Claim(self, worker, doc, heartbeat=heartbeat)

    def claims(self, worker: str, *, stop_after: float | None = None,
               heartbeat: bool = True) -> ClaimLoop:
        """Claims as wakes arrive, following the wake stream live: a :class:`ClaimLoop` to
        iterate (``for claim in sub.claims("w1"): with claim: ...``).

        It claims once at the start (work pending before it started is not missed), then
        follows the wake stream from its tail with long-poll reads and claims on each wake
        of this subscription; wakes another worker won are skipped.

        Args:
            worker: this worker's name, as for :meth:`claim`.
            stop_after: seconds after which the loop ends by itself (a positive number);
                default ``None``: it runs until :meth:`ClaimLoop.stop` or :meth:`stop` is
                called from any thread, or the wake stream is closed. A claim being
                processed is finished first, never interrupted.
            heartbeat: whether each claim gets a heartbeat thread, as for :meth:`claim`.

        Needs a pull-wake subscription (``ValueError`` for a webhook one); the wake stream
        must exist and be a JSON stream (:class:`StreamNotFoundError` / ``ValueError`` at
        the first ``next()``).
        """
        loop = ClaimLoop(self, worker, stop_after=stop_after, heartbeat=heartbeat)
        self._loops.add(loop)
        return loop

    def stop(self) -> None:
        """Stop every :meth:`claims` loop of this handle (from any thread)."""
        for loop in list(self._loops):
            loop.stop()

    def wake_stream(self) -> str:
        """The wake stream's path (from create(), or one GET)."""
        if self._wake_stream is None:
            self.info()
        if not self._wake_stream:
            raise ValueError(f"subscription {self.subscription_id!r} has no wake stream "
                             "(a webhook subscription): claims() needs pull-wake")
        return self._wake_stream

    # -- plumbing -------------------------------------------------------------------------
    def _call(self, method: str, suffix: str, *, operation: str, data: bytes | None = None,
              token: str | None = None, idempotent: bool = True, hint: str = ""
              ) -> Response:
        url = self.url + suffix
        extra: dict[str, str] = {}
        if data is not None:
            extra[P.CONTENT_TYPE] = "application/json"
        if token is not None:
            extra["Authorization"] = f"Bearer {token}"
        response = self._client.request(
            method, url, operation=operation, headers=self.headers, extra_headers=extra,
            params=self.params, data=data, retry=self.retry, idempotent=idempotent,
            ok=_accept,
        )
        status = response.status_code
        if status >= 300:
            raise subscription_error(status, response.headers, response.text,
                                     url=redact_url(url), operation=operation, hint=hint)
        return response

    def _read(self, path: str, offset: str, **options: Any) -> StreamResponse:
        from .reading import stream

        options.setdefault("headers", self.headers)
        options.setdefault("params", self.params)
        options.setdefault("retry", self.retry)
        options.setdefault("session", self._client.session)
        options.setdefault("timeout", self._client.timeout)
        return stream(self.stream_url(path), offset=offset, **options)

    def close(self) -> None:
        """Stop the claim loops and release the HTTP session this handle owns."""
        self.stop()
        self._client.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Subscription({redact_url(self.root_url)!r}, {self.subscription_id!r})"


class ClaimLoop:
    """An iterator of :class:`Claim` objects for one worker, from :meth:`Subscription.claims`.

    It tries a claim at once (work pending before it started is not missed), then follows
    the wake stream live from its tail, keeps this subscription's wakes, claims, and skips
    wakes another worker won. After a claim that ended with more work pending it claims
    again at once. Each claim is yielded open: use it as a context manager; a claim still
    open when the next one is asked for is ended like a normal ``with`` exit.

    It ends after ``stop_after`` seconds, when the wake stream is closed, or when
    :meth:`stop` (or :meth:`Subscription.stop`) is called from any thread; a claim being
    processed is not interrupted.
    """

    def __init__(self, subscription: Subscription, worker: str, *,
                 stop_after: float | None, heartbeat: bool) -> None:
        if stop_after is not None and (isinstance(stop_after, bool) or not stop_after > 0):
            raise ValueError(f"stop_after must be a positive number of seconds, got "
                             f"{stop_after!r}")
        if not isinstance(worker, str) or not worker.strip():
            raise ValueError(f"worker must be a non-empty name, got {worker!r}")
        self.subscription = subscription
        self.worker = worker
        self.heartbeat = heartbeat
        self._deadline = None if stop_after is None else time.monotonic() + stop_after
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._reader: Any = None
        self._gen = self._run()
        #: How many claims were yielded, and how many wakes were skipped (lost races).
        self.claimed = 0
        self.skipped = 0

    def stop(self) -> None:
        """End the iteration (from any thread); an open claim is left to its owner."""
        self._stopped.set()
        with self._lock:
            reader = self._reader
        if reader is not None:
            reader.close()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set() or (
            self._deadline is not None and time.monotonic() >= self._deadline)

    def __iter__(self) -> ClaimLoop:
        return self

    def __next__(self) -> Claim:
        return next(self._gen)

    def close(self) -> None:
        self.stop()
        self._gen.close()

    def __enter__(self) -> ClaimLoop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _claim_all(self) -> Iterator[Claim]:
        """Claim until nothing is left for this worker (lost race or no pending work)."""
        while not self.stopped:
            claim = self.subscription.claim(self.worker, heartbeat=self.heartbeat)
            if claim is None:
                return
            self.claimed += 1
            try:
                yield claim
            finally:
                if not claim.finished:
                    try:
                        claim.close()
                    except errors.FencedError as exc:
                        log.warning("%s", exc)
            if not claim.next_wake:
                return

    def _run(self) -> Generator[Claim, None, None]:
        from .reading import stream

        sub = self.subscription
        wake_url = sub.stream_url(sub.wake_stream())
        # Note the wake stream's tail before the first claim: a wake written meanwhile is
        # then seen by the follower below, never lost between the two.
        try:
            head = sub._client.request(
                "HEAD", wake_url, operation="head wake stream", headers=sub.headers,
                params=sub.params, retry=sub.retry,
            )
        except errors.StreamNotFoundError as exc:
            raise errors.StreamNotFoundError(
                f"the wake stream {redact_url(wake_url)} does not exist: create it (in JSON "
                "mode) before the workers start; wakes written meanwhile were lost, but "
                "claims() tries a claim first", status=404, url=redact_url(wake_url),
            ) from exc
        offset = head.headers.get(P.STREAM_NEXT_OFFSET) or P.OFFSET_BEGINNING
        if not P.is_json(head.headers.get(P.CONTENT_TYPE)):
            raise ValueError(f"the wake stream {redact_url(wake_url)} is not a JSON stream; "
                             "create it with content_type='application/json'")
        yield from self._claim_all()
        while not self.stopped:
            remaining = None if self._deadline is None else self._deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return
            reader = stream(wake_url, offset=offset, live="long-poll", stop_after=remaining,
                            headers=sub.headers, params=sub.params, retry=sub.retry,
                            session=sub._client.session, content_type="application/json")
            with self._lock:
                self._reader = reader
            if self._stopped.is_set():
                reader.close()
                return
            try:
                for batch in reader.iter_json_batches():
                    offset = batch.offset
                    if not any(isinstance(ev, Mapping) and ev.get("type") == "wake"
                               and ev.get("subscription_id") == sub.subscription_id
                               for ev in batch.items):
                        continue
                    before = self.claimed
                    yield from self._claim_all()
                    if self.claimed == before:
                        self.skipped += 1
                    if self.stopped:
                        return
                if reader.closed:
                    return  # the wake stream was closed: no more wakes can come
                offset = reader.offset or offset
            finally:
                with self._lock:
                    self._reader = None
                reader.close()
