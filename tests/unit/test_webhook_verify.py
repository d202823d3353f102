"""WebhookVerifier without the reference server (PROTOCOL §6.5, §7.1, §12.10).

Keys are made here with ``cryptography``; the JWKS is served by a stdlib HTTP server on
loopback that counts its fetches, so the caching rules are checked on the wire."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

ed25519 = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.ed25519")

from durable_streams import Wake, WebhookSignatureError, WebhookVerifier  # noqa: E402
from durable_streams.webhooks import jwks_url_for, parse_signature_header  # noqa: E402


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Key:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        self.private = ed25519.Ed25519PrivateKey.generate()

    def jwk(self) -> dict[str, str]:
        from cryptography.hazmat.primitives import serialization
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "kid": self.kid, "use": "sig", "alg": "EdDSA",
                "x": b64url(raw)}

    def header(self, body: bytes, t: int | None = None, kid: str | None = None) -> str:
        t = int(time.time()) if t is None else t
        sig = self.private.sign(f"{t}.".encode() + body)
        return f"t={t},kid={kid or self.kid},ed25519={b64url(sig)}"


class JwksServer:
    """Serves ``{"keys": [...]}`` at /v1/stream/__ds/jwks.json and counts the requests."""

    def __init__(self) -> None:
        self.keys: list[Key] = []
        self.cache_control: str | None = "public, max-age=300"
        self.status = 200
        self.fetches = 0
        self.delay = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                outer.fetches += 1
                if outer.delay:
                    time.sleep(outer.delay)
                body = json.dumps({"keys": [k.jwk() for k in outer.keys]}).encode()
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/jwk-set+json")
                if outer.cache_control is not None:
                    self.send_header("Cache-Control", outer.cache_control)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.httpd.server_port}/v1/stream"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def jwks() -> Iterator[JwksServer]:
    server = JwksServer()
    server.keys.append(Key("ds_one"))
    yield server
    server.close()


def wake_body(root: str, sub: str = "sub-1") -> bytes:
    return json.dumps({
        "subscription_id": sub, "wake_id": "w_1", "generation": 3,
        "streams": [{"path": "orders/a", "link_type": "explicit", "acked_offset": "-1",
                     "tail_offset": "0000000000000000_0000000000000010", "has_pending": True},
                    {"path": "orders/b", "link_type": "glob",
                     "acked_offset": "0000000000000000_0000000000000004",
                     "tail_offset": "0000000000000000_0000000000000004",
                     "has_pending": False}],
        "callback_url": f"{root}/__ds/subscriptions/{sub}/callback",
        "callback_token": "secret-token-value",
    }, separators=(",", ":")).encode()


def verifier(jwks: JwksServer, **kw: Any) -> WebhookVerifier:
    return WebhookVerifier(jwks_url_for(jwks.root), **kw)


def reason(exc: pytest.ExceptionInfo[WebhookSignatureError]) -> str:
    return exc.value.reason


def test_valid_delivery_gives_the_wake(jwks: JwksServer) -> None:
    body = wake_body(jwks.root)
    wake = verifier(jwks).verify(body, jwks.keys[0].header(body))
    assert (wake.subscription_id, wake.wake_id, wake.generation) == ("sub-1", "w_1", 3)
    assert [s.path for s in wake.pending] == ["orders/a"]
    assert wake.tails() == {"orders/a": "0000000000000000_0000000000000010"}
    assert wake.stream_root == jwks.root
    assert wake.stream_url("orders/a") == jwks.root + "/orders/a"
    assert "secret-token-value" not in repr(wake) and "secret-token-value" not in str(wake)
    assert wake.callback_token == "secret-token-value"
    assert wake.reply_done() == Wake.DONE_BODY and json.loads(Wake.DONE_BODY) == {"done": True}


@pytest.mark.parametrize("mutate", [
    lambda b: b.replace(b'"generation":3', b'"generation":4'),
    lambda b: b + b" ",
    lambda b: b[:-1],
])
def test_tampered_body_is_refused(jwks: JwksServer, mutate: Any) -> None:
    body = wake_body(jwks.root)
    header = jwks.keys[0].header(body)
    with pytest.raises(WebhookSignatureError) as exc:
        verifier(jwks).verify(mutate(body), header)
    assert reason(exc) == "bad_signature"


def test_signature_from_another_key_with_the_same_kid_is_refused(jwks: JwksServer) -> None:
    body = wake_body(jwks.root)
    forger = Key("ds_one")  # claims the published kid, but its own private key
    with pytest.raises(WebhookSignatureError) as exc:
        verifier(jwks).verify(body, forger.header(body))
    assert reason(exc) == "bad_signature"


def test_unknown_kid_is_refused_after_one_refetch(jwks: JwksServer) -> None:
    body = wake_body(jwks.root)
    v = verifier(jwks, min_refresh_interval_s=0)
    v.verify(body, jwks.keys[0].header(body))
    assert jwks.fetches == 1
    stranger = Key("ds_stranger")
    for _ in range(5):
        with pytest.raises(WebhookSignatureError) as exc:
            v.verify(body, stranger.header(body))
        assert reason(exc) == "unknown_key"
    # One refetch for the new kid, none for its repeats (remembered as missing).
    assert jwks.fetches == 2


def test_random_kids_cannot_cause_a_refetch_storm(jwks: JwksServer) -> None:
    body = wake_body(jwks.root)
    v = verifier(jwks, min_refresh_interval_s=30)
    v.verify(body, jwks.keys[0].header(body))
    for i in range(50):
        with pytest.raises(WebhookSignatureError):
            v.verify(body, Key(f"ds_forged_{i}").header(body))
    assert jwks.fetches == 1  # the first fetch was < 30 s ago: no refetch at all


def test_rotation_is_picked_up_by_one_refetch(jwks: JwksServer) -> None:
    body = wake_body(jwks.root)
    v = verifier(jwks, min_refresh_interval_s=0)
    v.verify(body, jwks.keys[0].header(body))
    jwks.keys[:] = [Key("ds_two")]  # the server restarted with a new key
    for _ in range(10):
        v.verify(body, jwks.keys[0].header(body))
    assert jwks.fetches == 2
    assert v.key_ids == {"ds_two"}


def test_concurrent_requests_with_a_new_kid_share_one_refetch(jwks: JwksServer) -> None:
    body = wake_body(jwks.root)
    v = verifier(jwks, min_refresh_interval_s=0)
    v.verify(body, jwks.keys[0].header(body))
    jwks.keys[:] = [Key("ds_two")]
    jwks.delay = 0.2  # keep the refetch in flight while the others arrive
    header = jwks.keys[0].header(body)
    results: list[str] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        results.append(v.verify(body, header).wake_id)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == ["w_1"] * 8
    assert jwks.fetches == 2


def test_keys_are_cached_for_max_age_and_refetched_after(jwks: JwksServer,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    jwks.cache_control = "public, max-age=60"
    body = wake_body(jwks.root)
    v = verifier(jwks)
    for _ in range(20):
        v.verify(body, jwks.keys[0].header(body))
    assert jwks.fetches == 1  # never per request
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + 61)
    v.verify(body, jwks.keys[0].header(body))
    assert jwks.fetches == 2


def test_stale_keys_are_used_when_a_refresh_fails(jwks: JwksServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    jwks.cache_control = "max-age=1"
    body = wake_body(jwks.root)
    v = verifier(jwks)
    v.verify(body, jwks.keys[0].header(body))
    jwks.status = 503
    real = time.monotonic
    monkeypatch.setattr(time, "monotonic", lambda: real() + 5)
    assert v.verify(body, jwks.keys[0].header(body)).wake_id == "w_1"
    assert jwks.fetches == 2


def test_unreachable_jwks_raises_the_http_error(jwks: JwksServer) -> None:
    from durable_streams import DurableStreamError
    jwks.status = 503
    body = wake_body(jwks.root)
    with pytest.raises(DurableStreamError) as exc:
        verifier(jwks).verify(body, jwks.keys[0].header(body))
    assert not isinstance(exc.value, WebhookSignatureError)


@pytest.mark.parametrize(("offset", "expected"), [
    (-301, "stale_timestamp"), (-3600, "stale_timestamp"),
    (301, "future_timestamp"), (86400, "future_timestamp"),
])
def test_timestamps_outside_the_tolerance_are_refused(jwks: JwksServer, offset: int,
                                                      expected: str) -> None:
    body = wake_body(jwks.root)
    now = 1_800_000_000
    header = jwks.keys[0].header(body, t=now + offset)
    with pytest.raises(WebhookSignatureError) as exc:
        verifier(jwks).verify(body, header, now=now)
    assert reason(exc) == expected
    assert jwks.fetches == 0  # refused before any key lookup


def test_timestamps_inside_the_tolerance_are_accepted(jwks: JwksServer) -> None:
    body = wake_body(jwks.root)
    now = 1_800_000_000
    v = verifier(jwks, tolerance_s=60)
    for offset in (-60, -1, 0, 59):
        assert v.verify(body, jwks.keys[0].header(body, t=now + offset), now=now).timestamp \
            == now + offset
    with pytest.raises(WebhookSignatureError):
        v.verify(body, jwks.keys[0].header(body, t=now - 61), now=now)


@pytest.mark.parametrize(("header", "expected"), [
    (None, "missing_header"),
    ("", "missing_header"),
    ("   ", "missing_header"),
    ("garbage", "malformed_header"),
    ("t=abc,kid=ds_one,ed25519=AAAA", "malformed_header"),
    ("kid=ds_one,ed25519=" + "A" * 86, "malformed_header"),
    ("t=1800000000,ed25519=" + "A" * 86, "malformed_header"),
    ("t=1800000000,kid=ds_one", "malformed_header"),
    ("t=1800000000,kid=ds_one,ed25519=short", "malformed_header"),
    ("t=1800000000,kid=ds_one,ed25519=" + "!" * 86, "malformed_header"),
])
def test_missing_or_malformed_header(jwks: JwksServer, header: str | None,
                                     expected: str) -> None:
    with pytest.raises(WebhookSignatureError) as exc:
        verifier(jwks).verify(wake_body(jwks.root), header, now=1_800_000_000)
    assert reason(exc) == expected
    assert exc.value.code == "BAD_SIGNATURE"


def test_header_parsing_is_order_and_space_tolerant() -> None:
    sig = b64url(b"\x01" * 64)
    parsed = parse_signature_header(f" kid=ds_k , ed25519={sig} ,t=17 ")
    assert (parsed.timestamp, parsed.kid, parsed.signatures) == (17, "ds_k", (b"\x01" * 64,))
    assert parsed.timestamp_text == "17"


def test_subscription_allow_list(jwks: JwksServer) -> None:
    body = wake_body(jwks.root, sub="other")
    with pytest.raises(WebhookSignatureError) as exc:
        verifier(jwks, subscription_ids={"sub-1"}).verify(body, jwks.keys[0].header(body))
    assert reason(exc) == "unexpected_subscription"


def test_body_must_be_raw_bytes(jwks: JwksServer) -> None:
    with pytest.raises(TypeError, match="raw request bytes"):
        verifier(jwks).verify(json.loads(wake_body(jwks.root)), "t=1")  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="jwks_url"):
        WebhookVerifier("ftp://x/__ds/jwks.json")
    with pytest.raises(ValueError, match="tolerance_s"):
        WebhookVerifier("http://x/__ds/jwks.json", tolerance_s=0)


def test_wake_parse_root_and_errors() -> None:
    wake = Wake.parse(wake_body("https://h.example/streams"))
    assert wake.stream_root == "https://h.example/streams"
    odd = json.loads(wake_body("x"))
    odd["callback_url"] = "https://h.example/elsewhere"
    wake = Wake.parse(json.dumps(odd))
    with pytest.raises(ValueError, match="stream root"):
        wake.stream_url("orders/a")
    with pytest.raises(KeyError, match="orders/a, orders/b"):
        Wake.parse(wake_body("x")).stream("nope")
    from durable_streams import ParseError
    for bad in (b"not json", b"[]", b'{"wake_id": "w"}'):
        with pytest.raises(ParseError):
            Wake.parse(bad)


def test_verifier_without_cryptography_names_the_extra() -> None:
    code = (
        "import sys\n"
        "sys.modules['cryptography'] = None\n"
        "import durable_streams\n"  # the core imports without it
        "from durable_streams import WebhookVerifier\n"
        "try:\n"
        "    WebhookVerifier('http://127.0.0.1:1/v1/stream/__ds/jwks.json')\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'durable-streams-sync[webhooks]'" in out.stdout
