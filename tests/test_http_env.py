"""The HTTP layer reads proxy, TLS and ~/.netrc settings once per origin, with the same
outcome as requests' per-call lookups."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests
import responses
from urllib3.util import make_headers

from durable_streams import DurableStream


@responses.activate
def test_netrc_credentials_are_still_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine streams.example login alice password s3cret\n")
    os.chmod(netrc, 0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    responses.add(responses.HEAD, "http://streams.example/s", status=200,
                  headers={"Stream-Next-Offset": "0_0", "Content-Type": "text/plain"})
    with DurableStream("http://streams.example/s", session=requests.Session()) as handle:
        handle.head()
        handle.head()
    sent = [call.request.headers.get("Authorization") for call in responses.calls]
    assert sent == [make_headers(basic_auth="alice:s3cret")["authorization"]] * 2


@responses.activate
def test_no_netrc_means_no_authorization(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))
    responses.add(responses.HEAD, "http://streams.example/s", status=200,
                  headers={"Stream-Next-Offset": "0_0"})
    with DurableStream("http://streams.example/s", session=requests.Session()) as handle:
        handle.head()
    assert "Authorization" not in responses.calls[0].request.headers


@responses.activate
def test_session_auth_wins_over_netrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine streams.example login alice password s3cret\n")
    os.chmod(netrc, 0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    responses.add(responses.HEAD, "http://streams.example/s", status=200,
                  headers={"Stream-Next-Offset": "0_0"})
    session = requests.Session()
    session.auth = ("bob", "pw")
    with DurableStream("http://streams.example/s", session=session) as handle:
        handle.head()
    assert responses.calls[0].request.headers["Authorization"] == \
        make_headers(basic_auth="bob:pw")["authorization"]
