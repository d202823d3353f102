"""``durable-streams fork`` and ``durable-streams subscription create|info|delete``, run as
real subprocesses against the reference server (PROTOCOL §4.2, §6)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sub_helpers import JSON, Space, items, root_of

from durable_streams import DurableStream, Subscription, SubscriptionNotFoundError
from durable_streams.cli import EXIT_CONFLICT, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from durable_streams.testing import ReferenceServer

URL_ENV = "DURABLE_STREAMS_URL"


def run(*args: str, env_root: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop(URL_ENV, None)
    if env_root is not None:
        env[URL_ENV] = env_root
    return subprocess.run([sys.executable, "-m", "durable_streams", *args], env=env,
                          capture_output=True, text=True, timeout=60)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("durable-streams:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def space(server: ReferenceServer) -> Space:
    return Space(root_of(server))


def test_fork_command(server: ReferenceServer) -> None:
    src = DurableStream.create(server.stream_url(), content_type=JSON)
    mid = src.append({"n": 1})
    src.append({"n": 2})
    dst = server.stream_url()
    proc = run("fork", src.url, dst, "--offset", mid)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout == "" and proc.stderr == ""  # not a terminal: nothing but errors
    assert items(dst) == [{"n": 1}]
    again = run("fork", src.url, dst, "--offset", mid)  # the same fork: fine
    assert again.returncode == EXIT_OK, again.stderr
    # fork at the tail, with a name joined to $DURABLE_STREAMS_URL
    name = dst.rsplit("/", 1)[1] + "-tail"
    proc = run("fork", src.url, name, env_root=server.url)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert items(f"{server.url}/{name}") == [{"n": 1}, {"n": 2}]


def test_fork_command_errors(server: ReferenceServer) -> None:
    src = DurableStream.create(server.stream_url(), content_type=JSON)
    src.append({"n": 1})
    bad = run("fork", src.url, server.stream_url(), "--offset", "garbage")
    assert bad.returncode == EXIT_FAILED
    assert "malformed" in one_error_line(bad)
    missing = run("fork", server.stream_url(), server.stream_url())
    assert missing.returncode == EXIT_NOT_FOUND
    assert "does not exist" in one_error_line(missing)
    taken = DurableStream.create(server.stream_url(), content_type="text/plain")
    conflict = run("fork", src.url, taken.url)
    assert conflict.returncode == EXIT_CONFLICT
    one_error_line(conflict)
    other_origin = run("fork", src.url, "http://127.0.0.1:1/elsewhere")
    assert other_origin.returncode == EXIT_USAGE
    assert "same server" in one_error_line(other_origin)
    src.fork(server.stream_url())
    src.delete()
    gone = run("fork", src.url, server.stream_url())
    assert gone.returncode == EXIT_NOT_FOUND
    assert "deleted but still has forks" in one_error_line(gone)


def test_subscription_commands(space: Space) -> None:
    DurableStream.create(space.url("wake"), content_type=JSON).close()
    space.create("orders/a").close()
    sid = space.prefix + "-cli"
    create = ["subscription", "create", sid, "--root", space.root, "--pattern",
              space.path("orders/*"), "--stream", space.path("extra/x"), "--wake-stream",
              space.path("wake"), "--lease-ttl-ms", "2000", "--description", "cli test"]
    proc = run(*create)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout == ""
    assert run(*create).returncode == EXIT_OK  # identical: re-confirmed
    conflict = run(*create[:-1], "changed")
    assert conflict.returncode == EXIT_CONFLICT
    assert "SUBSCRIPTION_ALREADY_EXISTS" in one_error_line(conflict)

    info = run("subscription", "info", sid, "--json", env_root=space.root)
    assert info.returncode == EXIT_OK, info.stderr
    doc = json.loads(info.stdout)
    assert doc["id"] == sid and doc["type"] == "pull-wake"
    assert doc["lease_ttl_ms"] == 2000 and doc["description"] == "cli test"
    links = {s["path"]: s["link_type"] for s in doc["streams"]}
    assert links == {space.path("orders/a"): "glob", space.path("extra/x"): "explicit"}
    text = run("subscription", "info", sid, "--root", space.root)
    assert text.returncode == EXIT_OK
    assert f"id:           {sid}" in text.stdout
    assert space.path("extra/x") in text.stdout

    deleted = run("subscription", "delete", sid, "--root", space.root)
    assert deleted.returncode == EXIT_OK, deleted.stderr
    with pytest.raises(SubscriptionNotFoundError):
        Subscription(space.root, sid).info()
    missing = run("subscription", "info", sid, "--root", space.root)
    assert missing.returncode == EXIT_NOT_FOUND
    assert "SUBSCRIPTION_NOT_FOUND" in one_error_line(missing)


def test_subscription_command_usage_errors(space: Space) -> None:
    no_root = run("subscription", "info", "x")
    assert no_root.returncode == EXIT_USAGE
    assert "--root" in one_error_line(no_root)
    no_delivery = run("subscription", "create", "x", "--root", space.root, "--pattern", "a/*")
    assert no_delivery.returncode == EXIT_USAGE
    no_streams = run("subscription", "create", "x", "--root", space.root, "--wake-stream", "w")
    assert no_streams.returncode == EXIT_USAGE
    assert "pattern" in one_error_line(no_streams)
    bad_ttl = run("subscription", "create", "x", "--root", space.root, "--pattern", "a/*",
                  "--wake-stream", "w", "--lease-ttl-ms", "5")
    assert bad_ttl.returncode == EXIT_USAGE
    assert "1000 to 600000" in one_error_line(bad_ttl)
