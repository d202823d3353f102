"""How the command line builds and shows URLs (no secret printed, query kept)."""

from __future__ import annotations

from durable_streams.cli._common import join_url, shown, shown_arg


def test_join_url_appends_to_the_path_and_keeps_the_query() -> None:
    assert join_url("http://h/v1/stream?token=T", "logs/app") == \
        "http://h/v1/stream/logs/app?token=T"
    assert join_url("http://h/v1/stream/", "/a") == "http://h/v1/stream/a"
    assert join_url("http://h", "a/b") == "http://h/a/b"
    assert join_url("http://h/x?a=1&b=2", "s?live=sse") == "http://h/x/s?live=sse&a=1&b=2"
    assert join_url("http://u:p@h/x#f", "s") == "http://u:p@h/x/s"


def test_shown_masks_user_info_and_query_values() -> None:
    assert shown("http://alice:pw@h:1/x?token=T&live=sse") == \
        "http://***@h:1/x?token=***&live=***"


def test_shown_arg_masks_credentials_written_without_a_scheme() -> None:
    text = "unrecognized arguments: alice:pw@h/x 'bob:pw2@h' http://c:pw3@h/?token=t4"
    masked = shown_arg(text)
    for secret in ("pw", "pw2", "pw3", "t4"):
        assert f":{secret}@" not in masked and f"={secret}" not in masked
    assert masked.startswith("unrecognized arguments: ***@h/x")
