"""Scenario 6, continued: the producer facing nonsense (issue 16). Storms (every POST
answered 204 with our own epoch/seq, or 403 with a higher epoch) must end at the delivery
timeout with a few requests a second; deep and huge JSON must never be refused for a Python
limit; 410/413/garbage bodies must give clear, escaped errors. Each case bounds its time and
counts requests (see :class:`~.hostile.Case`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from durable_streams import (
    BadRequestError,
    DurableStreamError,
    ProducerError,
)
from durable_streams.testing import ReferenceServer

from .harness import FakeServer
from .hostile import Case, _deliver, _fake, _producer, close_bounded
from .scenarios import new_json_stream


def case_410(server: ReferenceServer) -> Case:
    """410 Gone on a POST: the stream no longer takes appends; everything is reported, the
    error says gone (not "deleted but still has forks", not "offset no longer retained")."""
    case = Case("6y 410 on append", DurableStreamError, bound=5.0)
    with _fake(lambda m, p, h, b: (410, {"Content-Type": "text/plain"}, b"Gone")) as fake:
        _deliver(case, _producer(fake.url + "/s"), [json.dumps(f"m:{i}") for i in range(10)])
        case.detail["posts"] = fake.count("POST")
    text = str(case.raised)
    if "gone (410)" not in text or "forks" in text.split("(410)")[0] or "retained" in text:
        case.raised = AssertionError(f"410 not explained: {text}")
    return case


def case_garbage_words(server: ReferenceServer) -> Case:
    """A 400 whose body is 1 MiB of terminal escapes, NULs and invalid UTF-8: reported with
    the server's words escaped and truncated, never the raw bytes."""
    case = Case("6z garbage error body", BadRequestError, bound=5.0)
    garbage = (b"\x1b[2J\x1b[31m\x00\xff\xfeEvil\r\nX-Injected: 1\x07" * 40000)[:1 << 20]
    with _fake(lambda m, p, h, b: (400, {"Content-Type": "text/plain"}, garbage)) as fake:
        _deliver(case, _producer(fake.url + "/s"), [json.dumps("m")])
    text = str(case.raised)
    if not all(ch.isprintable() for ch in text) or len(text) > 1000:
        case.raised = AssertionError(f"raw bytes in the error ({len(text)} chars): {text!r}")
    return case


# -- storms: every retry loop is bounded by delivery_timeout_ms and backs off --------------
STORM_TIMEOUT_MS = 3000
#: requests a producer may send while facing nonsense for STORM_TIMEOUT_MS: "a few a second"
STORM_MAX_REQUESTS = 30


def _storm(case: Case, fake: FakeServer, **kw: Any) -> None:
    seen: list[DurableStreamError] = []
    producer = _producer(fake.url + "/s", auto_claim=True, on_error=seen.append,
                         delivery_timeout_ms=STORM_TIMEOUT_MS, **kw)
    _deliver(case, producer, [json.dumps(f"m:{i}") for i in range(20)], errors_seen=seen)
    case.detail["requests"] = fake.count()
    case.detail["posts"] = fake.count("POST")
    case.detail["on_error_calls"] = len(seen)
    problems = []
    if fake.count() > STORM_MAX_REQUESTS:
        problems.append(f"{fake.count()} requests in {case.elapsed:.1f}s "
                        f"(at most {STORM_MAX_REQUESTS})")
    if not seen or sum(len(u) for u in case.detail["on_error"]) != case.sent:
        problems.append(f"on_error saw {case.detail['on_error']}, expected all {case.sent}")
    if problems and case.raised is not None and not isinstance(case.raised, AssertionError):
        case.raised = AssertionError("; ".join(problems))


def case_duplicate_storm(server: ReferenceServer) -> Case:
    """Every POST answered 204 with the producer's own epoch and seq (a proxy replaying
    answers, another writer with our id): auto_claim claims a few times, spaced out, and
    at the delivery timeout the messages go to on_error and flush(); a few requests a
    second at most (it was 9,000 POSTs and 9,000 HEADs in 12 s)."""
    case = Case("6s duplicate storm (204 echo)", ProducerError,
                bound=STORM_TIMEOUT_MS / 1000 + 3.0)

    def respond(m: str, p: str, h: Mapping[str, str], b: bytes
                ) -> tuple[int, Mapping[str, str], bytes]:
        return 204, {"Producer-Epoch": h.get("Producer-Epoch", "0"),
                     "Producer-Seq": h.get("Producer-Seq", "0")}, b""

    with _fake(respond) as fake:
        _storm(case, fake)
    return case


def case_fence_storm(server: ReferenceServer) -> Case:
    """Every POST answered 403 naming a higher epoch than the one sent: the claims are
    spaced out and bounded by the delivery timeout (it was 272 claims in 12 s)."""
    case = Case("6t fence storm (403 epoch+1)", ProducerError,
                bound=STORM_TIMEOUT_MS / 1000 + 3.0)

    def respond(m: str, p: str, h: Mapping[str, str], b: bytes
                ) -> tuple[int, Mapping[str, str], bytes]:
        epoch = int(h.get("Producer-Epoch") or 0) + 1
        return 403, {"Producer-Epoch": str(epoch), "Content-Type": "text/plain"}, b"fenced"

    with _fake(respond) as fake:
        _storm(case, fake)
    return case


def case_fence_storm_close_stream(server: ReferenceServer) -> Case:
    """close_stream() against a server fencing every POST: bounded like a batch."""
    case = Case("6u fence storm: close_stream", DurableStreamError,
                bound=STORM_TIMEOUT_MS / 1000 + 3.0)

    def respond(m: str, p: str, h: Mapping[str, str], b: bytes
                ) -> tuple[int, Mapping[str, str], bytes]:
        epoch = int(h.get("Producer-Epoch") or 0) + 1
        return 403, {"Producer-Epoch": str(epoch)}, b""

    with _fake(respond) as fake:
        producer = _producer(fake.url + "/s", auto_claim=True,
                             delivery_timeout_ms=STORM_TIMEOUT_MS)
        start = time.monotonic()
        try:
            producer.close_stream(timeout=case.bound)
        except DurableStreamError as exc:
            case.raised = exc
        finally:
            close_bounded(producer, 2)
        case.elapsed = time.monotonic() - start
        case.detail["requests"] = fake.count()
        if fake.count() > STORM_MAX_REQUESTS:
            case.raised = AssertionError(f"{fake.count()} requests for one close_stream")
    return case


# -- deep and huge JSON: valid messages are never refused because of a Python limit -------
DEEP = "[" * 3000 + "]" * 3000


def case_deep_json(server: ReferenceServer) -> Case:
    """A valid, deeply nested JSON message (3000 levels: Python's json raises
    RecursionError) is sent like any other; its neighbours land; the producer goes on."""
    case = Case("6v deep JSON (3000 levels)", None, bound=10.0)
    url = new_json_stream(server.url, "deep")
    messages: list[str | bytes] = [json.dumps("before"), DEEP, json.dumps("after")]
    producer = _producer(url)
    start = time.monotonic()
    _deliver(case, producer, messages)
    # later appends work on a fresh producer (the first one is closed by _deliver)
    items = _raw_items(url)
    case.found = len(items)
    case.detail["items"] = [i[:20] for i in items]
    if items != [b'"before"', DEEP.encode(), b'"after"']:
        case.raised = AssertionError(f"stream holds {case.detail['items']}")
    case.elapsed = time.monotonic() - start
    return case


def case_deep_json_with_invalid(server: ReferenceServer) -> Case:
    """Deep JSON next to an invalid message (the batch's fast check fails, each message
    is checked alone): only the invalid one is reported."""
    case = Case("6w deep + invalid JSON", BadRequestError, bound=10.0)
    url = new_json_stream(server.url, "deepbad")
    deep_invalid = "[" * 3000 + "]" * 2999
    # 5000 digits: over Python's int conversion limit, valid JSON all the same
    messages: list[str | bytes] = [json.dumps("a"), DEEP, deep_invalid, "1" * 5000,
                                   json.dumps("b")]
    producer = _producer(url, linger_ms=100)
    _deliver(case, producer, messages)
    items = _raw_items(url)
    case.found = len(items)
    # (the server parses 5000 digits as a float: it stores null, its own business)
    if len(items) != 4 or items[:2] != [b'"a"', DEEP.encode()] or items[3] != b'"b"' or (
            case.detail.get("undelivered") != [deep_invalid.encode()]):
        case.raised = AssertionError(
            f"stream {[i[:20] for i in items]}, reported "
            f"{[u[:20] for u in case.detail.get('undelivered', [])]}")
    case.detail.pop("undelivered", None)
    return case


def case_huge_json(server: ReferenceServer) -> Case:
    """A 4 MiB JSON message (max_batch_bytes raised for it) is checked and sent in time."""
    case = Case("6x huge JSON (4 MiB)", None, bound=20.0)
    url = new_json_stream(server.url, "huge")
    big = json.dumps({"blob": "x" * (4 * 1024 * 1024), "list": list(range(1000))},
                     separators=(",", ":"))
    producer = _producer(url, max_batch_bytes=8 * 1024 * 1024, delivery_timeout_ms=15_000,
                         request_timeout=(2.0, 10.0))
    _deliver(case, producer, [json.dumps("small"), big])
    items = _raw_items(url)
    case.found = len(items)
    if [len(i) for i in items] != [len('"small"'), len(big)]:
        case.raised = AssertionError(f"stream holds {[len(i) for i in items]} bytes")
    return case


def _raw_items(url: str) -> list[bytes]:
    """The JSON stream's messages as raw text, split without Python's recursion limit."""
    import requests

    response = requests.get(url, params={"offset": "-1"}, timeout=10)
    response.raise_for_status()
    return split_top_level(response.content)


def split_top_level(data: bytes) -> list[bytes]:
    """The elements of a JSON array (the body of a JSON-mode read), as bytes."""
    text = data.strip()
    assert text[:1] == b"[" and text[-1:] == b"]", text[:40]
    items: list[bytes] = []
    depth, start, in_str, esc = 0, 1, False, False
    for i in range(1, len(text) - 1):
        c = text[i]
        if in_str:
            if esc:
                esc = False
            elif c == 0x5C:
                esc = True
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in b"[{":
            depth += 1
        elif c in b"]}":
            depth -= 1
        elif c == 0x2C and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    last = text[start:-1].strip()
    if last:
        items.append(last)
    return items


CASES: dict[str, Callable[[ReferenceServer], Case]] = {
    "410": case_410,
    "garbage_words": case_garbage_words,
    "duplicate_storm": case_duplicate_storm,
    "fence_storm": case_fence_storm,
    "fence_storm_close_stream": case_fence_storm_close_stream,
    "deep_json": case_deep_json,
    "deep_json_with_invalid": case_deep_json_with_invalid,
    "huge_json": case_huge_json,
}
