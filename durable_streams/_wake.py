"""What pull-wake claims (PROTOCOL §7.2) and webhook wakes (§7.1) have in common: the
snapshot of linked streams, the ack body, and the mapping of the subscription APIs' JSON
errors (``{"error": {"code": ..., "message": ...}}``) to exceptions. Pure code, no HTTP."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import errors


@dataclass(frozen=True)
class LinkedStream:
    """One stream of a subscription as a wake or claim saw it.

    ``path`` is relative to the stream root (``orders/a``); ``acked_offset`` is where the
    subscription's cursor stands (``"-1"``: nothing acked yet, read from the beginning);
    ``tail_offset`` is the stream's tail when the snapshot was taken.
    """

    path: str
    link_type: str
    acked_offset: str
    tail_offset: str
    has_pending: bool

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> LinkedStream:
        return cls(
            path=str(raw["path"]),
            link_type=str(raw.get("link_type", "")),
            acked_offset=str(raw.get("acked_offset", "-1")),
            tail_offset=str(raw.get("tail_offset", raw.get("acked_offset", "-1"))),
            has_pending=bool(raw.get("has_pending", False)),
        )


@dataclass(frozen=True)
class AckResult:
    """The server's answer to an ack: :meth:`Claim.ack` (PROTOCOL §7.2) and
    :meth:`Wake.callback` (§7.1) both return one.

    ``ok``: the server accepted the ack (a refused ack raises instead, so this is true
    unless the server said otherwise in a 2xx body). ``next_wake``: more data arrived after
    the claim's or wake's snapshot, so the server will wake a worker (or deliver a webhook)
    again; meaningful after a ``done`` ack.
    """

    ok: bool
    next_wake: bool

    def __bool__(self) -> bool:
        # Claim.ack() returned the bool next_wake before 0.1.0's naming pass: keep
        # `if claim.ack(...):` working for a while, loudly.
        warnings.warn(
            "the truth value of an AckResult is deprecated (Claim.ack() used to return "
            "next_wake as a bool): use result.next_wake",
            DeprecationWarning, stacklevel=2,
        )
        return self.next_wake

    @classmethod
    def from_body(cls, content: bytes) -> AckResult:
        """From an ack's 2xx body (``{"ok": true, "next_wake": false}``); lenient: an empty
        or malformed body is an accepted ack with no next wake."""
        try:
            doc = json.loads(content) if content else {}
        except ValueError:
            doc = {}
        if not isinstance(doc, dict):
            doc = {}
        return cls(ok=bool(doc.get("ok", True)), next_wake=bool(doc.get("next_wake", False)))


def parse_streams(raw: Any) -> tuple[LinkedStream, ...]:
    """The ``streams`` array of a claim, wake or subscription document."""
    if not isinstance(raw, list):
        return ()
    return tuple(LinkedStream.from_json(item) for item in raw if isinstance(item, Mapping))


def ack_body(wake_id: str, generation: int, acks: Mapping[str, str] | Sequence[tuple[str, str]],
             *, done: bool) -> bytes:
    """The JSON body of an ack (§7.2) or a webhook callback (§7.1)."""
    pairs = acks.items() if isinstance(acks, Mapping) else acks
    doc: dict[str, Any] = {
        "wake_id": wake_id,
        "generation": generation,
        "acks": [{"stream": str(path), "offset": str(offset)} for path, offset in pairs],
    }
    if done:
        doc["done"] = True
    return json.dumps(doc, separators=(",", ":")).encode()


def error_code(body: str) -> tuple[str | None, dict[str, Any]]:
    """``(code, error object)`` from a subscription API error body, or ``(None, {})``."""
    try:
        doc = json.loads(body) if body else None
    except ValueError:
        return None, {}
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return None, {}
    code = err.get("code")
    return (str(code) if code is not None else None), err


def subscription_error(status: int, headers: Mapping[str, str], body: str, *, url: str,
                       operation: str, hint: str = "") -> errors.DurableStreamError:
    """The exception for a failed subscription API call; ``hint`` is appended (what to do)."""
    code, err = error_code(body)
    cls = errors.CODE_CLASSES.get(code or "")
    if cls is None:
        cls = {400: errors.BadRequestError, 401: errors.UnauthorizedError,
               404: errors.SubscriptionNotFoundError, 409: errors.ConflictError}.get(
                   status, errors.SubscriptionError)
    message = str(err.get("message") or "").strip()[:300]
    text = f"{operation} failed: {code or f'HTTP {status}'} for {url}"
    if message:
        text += f": {message}"
    if hint:
        text += f". {hint}"
    exc = cls(text, status=status, url=url, headers=headers, body=body[:4000])
    if code:
        exc.code = code
    return exc
