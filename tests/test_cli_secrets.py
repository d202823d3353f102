"""The command line prints no secret on any path, success included (issue 16, item 10).

Every command runs with a URL that carries a password (user-info) and a token (query), and
an ``Authorization`` header; its stdout and stderr, on success and on failure, must contain
none of them. Notes (shown only on a terminal) are switched on so that they are checked too.
Names are joined to ``$DURABLE_STREAMS_URL``'s path, keeping its query. Against the real
reference server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from durable_streams import DurableStream, Subscription, stream
from durable_streams.cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE, URL_ENV, _common, main
from durable_streams.testing import ReferenceServer

PASSWORD = "pw-Cli-S3cret-4q"
TOKEN = "tok-Cli-T0ken-8z"
BEARER = "bearer-Cli-hidden-2k"
SECRETS = (PASSWORD, TOKEN, BEARER)
HEADER = ["-H", f"Authorization: Bearer {BEARER}"]
JSON = "application/json"


def secret_url(url: str) -> str:
    """``url`` with a password and a ``?token=`` (the server ignores both)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"alice:{PASSWORD}@{parts.netloc}", parts.path,
                       f"token={TOKEN}", ""))


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text
    assert "Traceback" not in text, text


class Cli:
    """Runs ``main()`` in this process with stderr taken for a terminal (notes shown)."""

    def __init__(self, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
                 ) -> None:
        self.capfd = capfd
        self.monkeypatch = monkeypatch
        monkeypatch.setattr(_common, "stderr_is_tty", lambda: True)
        monkeypatch.delenv(URL_ENV, raising=False)

    def __call__(self, *args: str, env_base: str | None = None) -> tuple[int, str, str]:
        if env_base is not None:
            self.monkeypatch.setenv(URL_ENV, env_base)
        else:
            self.monkeypatch.delenv(URL_ENV, raising=False)
        self.capfd.readouterr()
        code = main(list(args))
        out, err = self.capfd.readouterr()
        assert_clean(out + err)
        return code, out, err


@pytest.fixture
def cli(capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    sigint = signal.getsignal(signal.SIGINT)  # `read` resets SIGINT when it ends
    yield Cli(capfd, monkeypatch)
    signal.signal(signal.SIGINT, sigint)


def test_every_command_succeeds_without_printing_a_secret(server: ReferenceServer,
                                                          cli: Cli) -> None:
    plain = server.stream_url()
    url = secret_url(plain)
    code, _, err = cli("create", url, "-t", JSON, *HEADER)
    assert code == EXIT_OK and "created http://***@" in err and "token=***" in err
    code, _, err = cli("create", url, "-t", JSON, *HEADER)  # already exists
    assert code == EXIT_OK and "already exists" in err

    code, out, _ = cli("head", url, *HEADER)
    assert code == EXIT_OK
    assert "url:" in out and f"{urlsplit(plain).path}?token=***" in out
    code, out, _ = cli("head", url, "--json", *HEADER)
    assert code == EXIT_OK
    assert json.loads(out)["url"].endswith(f"{urlsplit(plain).path}?token=***")

    code, out, err = cli("append", url, '{"n": 1}', '{"n": 2}', *HEADER)
    assert code == EXIT_OK and out == ""
    code, out, err = cli("read", url, *HEADER)
    assert code == EXIT_OK and out.splitlines() == ['{"n":1}', '{"n":2}']
    assert err.startswith("offset: ")

    fork = secret_url(server.stream_url())
    code, _, err = cli("fork", url, fork, *HEADER)
    assert code == EXIT_OK and "forked http://***@" in err

    code, out, err = cli("close", url, '{"done": true}', *HEADER)
    assert code == EXIT_OK and out.strip() and "closed http://***@" in err
    code, _, err = cli("delete", fork, *HEADER)
    assert code == EXIT_OK and "deleted http://***@" in err

    root = secret_url(f"{server.url}/v1/stream")  # subscriptions see /v1/stream/ only
    wake = f"wake-{uuid.uuid4().hex[:8]}"
    DurableStream.create(f"{server.url}/v1/stream/{wake}", content_type=JSON).close()
    sub_id = f"secrets-{uuid.uuid4().hex[:8]}"
    code, _, err = cli("subscription", "create", sub_id, "--root", root, "--pattern",
                       "secrets-never/*", "--wake-stream", wake, *HEADER)
    assert code == EXIT_OK and f"created subscription {sub_id}" in err
    code, out, _ = cli("subscription", "info", sub_id, "--json", *HEADER, env_base=root)
    assert code == EXIT_OK and json.loads(out)["id"] == sub_id
    code, out, _ = cli("subscription", "info", sub_id, *HEADER, env_base=root)
    assert code == EXIT_OK and sub_id in out
    code, _, err = cli("subscription", "delete", sub_id, *HEADER, env_base=root)
    assert code == EXIT_OK and "deleted subscription" in err

    code, out, _ = cli("demo", "-n", "50", "--server", secret_url(server.url), *HEADER)
    assert code == EXIT_OK, out
    assert "verified:" in out and "http://***@" in out and "token=***" in out


def test_a_webhook_url_with_a_token_is_masked_in_info(
        durable_streams_webhook_server: ReferenceServer, cli: Cli) -> None:
    root = durable_streams_webhook_server.stream_root
    sub_id = f"hook-{uuid.uuid4().hex[:8]}"
    hook = f"http://127.0.0.1:9/hook?sig={TOKEN}"  # never called: no stream matches
    Subscription.create(root, sub_id, pattern=f"{sub_id}-never/*", webhook_url=hook).close()
    try:
        code, out, _ = cli("subscription", "info", sub_id, "--root", root)
        assert code == EXIT_OK and "sig=***" in out
        code, out, _ = cli("subscription", "info", sub_id, "--root", root, "--json")
        assert code == EXIT_OK and json.loads(out)["webhook_url"].endswith("sig=***")
    finally:
        with Subscription(root, sub_id) as sub:
            sub.delete()


def test_every_command_fails_without_printing_a_secret(server: ReferenceServer,
                                                       cli: Cli) -> None:
    missing = secret_url(server.stream_url())
    root = secret_url(f"{server.url}/v1/stream")
    with ReferenceServer() as private:
        refused = secret_url(private.stream_url())
    failures = [
        ("create", refused, "-t", JSON),
        ("head", missing), ("head", missing, "--json"), ("head", refused),
        ("append", missing, "x"), ("read", missing), ("close", missing), ("delete", refused),
        ("fork", missing, secret_url(server.stream_url())),
        ("subscription", "info", "no-such-sub", "--root", root),
        ("subscription", "delete", "x", "--root", refused.rsplit("/", 1)[0]),
        ("demo", "-n", "5", "--server", refused.rsplit("/", 1)[0]),
    ]
    for args in failures:
        code, out, err = cli(*args, *HEADER)
        assert code != EXIT_OK, args
        assert "error:" in err, (args, err)
    code, _, err = cli("head", missing)
    assert code == EXIT_NOT_FOUND and "http://***@" in err and "token=***" in err


def test_usage_errors_never_echo_credentials(cli: Cli) -> None:
    cases: list[tuple[tuple[str, ...], str | None]] = [
        (("head", "logs/app"), f"alice:{PASSWORD}@h/v1?token={TOKEN}"),  # no scheme
        (("head", f"ftp://alice:{PASSWORD}@h/x?token={TOKEN}"), None),
        (("head", f"alice:{PASSWORD}@h/x"), None),  # no scheme, no base
        (("subscription", "info", "s", "--root", f"alice:{PASSWORD}@h"), None),
    ]
    for args, base in cases:
        code, _, err = cli(*args, env_base=base)
        assert code == EXIT_USAGE, (args, err)
    with pytest.raises(SystemExit) as info:  # argparse: it quotes the extra arguments
        cli("head", "http://h/x", f"alice:{PASSWORD}@h/y", f"http://a:{PASSWORD}@h/z")
    assert info.value.code == EXIT_USAGE
    assert_clean("".join(cli.capfd.readouterr()))


def test_names_join_the_base_path_and_keep_its_query(server: ReferenceServer,
                                                     cli: Cli) -> None:
    base = secret_url(server.url) + "/"
    name = f"secrets-{uuid.uuid4().hex[:8]}/logs/app"
    code, _, err = cli("create", name, "-t", JSON, env_base=base)
    assert code == EXIT_OK, err
    with DurableStream(f"{server.url}/{name}") as handle:  # the path the name says
        assert handle.head().content_type == JSON
    code, _, _ = cli("append", name, '{"ok": 1}', env_base=base)
    assert code == EXIT_OK
    with stream(f"{server.url}/{name}") as response:
        assert response.read_json() == [{"ok": 1}]
    code, out, _ = cli("head", name, "--json", env_base=base)
    assert json.loads(out)["url"] == f"http://***@{urlsplit(server.url).netloc}/{name}" \
        "?token=***"


def test_head_as_a_subprocess_prints_no_secret(server: ReferenceServer) -> None:
    # The report's reproduction, exactly: the installed entry point, plain and --json.
    url = secret_url(server.stream_url())
    DurableStream.create(url, content_type=JSON).close()
    env = {k: v for k, v in os.environ.items() if k != URL_ENV}
    for extra in ((), ("--json",)):
        proc = subprocess.run([sys.executable, "-m", "durable_streams", "head", url, *extra],
                              capture_output=True, text=True, timeout=60, env=env)
        assert proc.returncode == EXIT_OK, proc.stderr
        assert_clean(proc.stdout + proc.stderr)
        assert "token=***" in proc.stdout


def test_resolve_url_keeps_the_base_query_at_the_end() -> None:
    from durable_streams.cli import resolve_url

    env = {URL_ENV: "http://h/v1/stream?token=T"}
    assert resolve_url("logs/app", env) == "http://h/v1/stream/logs/app?token=T"
    assert resolve_url("/logs/app", {URL_ENV: "http://h/v1/stream/?token=T&x=1"}) == \
        "http://h/v1/stream/logs/app?token=T&x=1"
    assert resolve_url("logs?live=sse", env) == "http://h/v1/stream/logs?live=sse&token=T"
    assert resolve_url("logs", {URL_ENV: "https://u:p@h:8/base#frag"}) == \
        "https://u:p@h:8/base/logs"
    with pytest.raises(_common.UsageError, match="empty stream name"):
        resolve_url("?token=x", env)
