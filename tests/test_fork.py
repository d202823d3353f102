"""Forks (PROTOCOL §4.2) against the reference server: fork points, sub-offsets, idempotent
re-forks, every fork error, soft delete, and producers writing to a fork."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from durable_streams import (
    ContentTypeMismatchError,
    DurableStream,
    ForkError,
    IdempotentProducer,
    RetentionGoneError,
    StreamExistsError,
    StreamNotFoundError,
    StreamSoftDeletedError,
    stream,
)
from durable_streams._http import NO_RETRY
from durable_streams.testing import ReferenceServer

JSON = "application/json"


def items(url: str) -> list[Any]:
    with stream(url) as response:
        return response.read_json()


def text(url: str) -> str:
    with stream(url) as response:
        return response.read_bytes().decode()


@pytest.fixture
def src(server: ReferenceServer) -> DurableStream:
    handle = DurableStream.create(server.stream_url(), content_type=JSON)
    return handle


def test_fork_at_an_offset_inherits_data_before_it_only(src: DurableStream,
                                                        server: ReferenceServer) -> None:
    src.append({"n": 1})
    mid = src.append({"n": 2})
    src.append({"n": 3})
    with src.fork(server.stream_url(), offset=mid) as fork:
        assert fork.created is True
        assert fork.content_type == JSON
        assert items(fork.url) == [{"n": 1}, {"n": 2}]
        assert fork.head().offset == mid  # §4.2: the fork's tail starts at the fork point
        # the fork is independent: appends on either side stay on that side
        fork.append({"n": "fork"})
        src.append({"n": 4})
        assert items(fork.url) == [{"n": 1}, {"n": 2}, {"n": "fork"}]
        assert items(src.url) == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]


def test_fork_without_offset_forks_at_the_tail(src: DurableStream,
                                               server: ReferenceServer) -> None:
    src.append([1, 2])
    tail = src.append(3)
    with src.fork(server.stream_url()) as fork:
        assert fork.created is True
        assert items(fork.url) == [[1, 2], 3]
        assert fork.head().offset == tail


def test_fork_of_a_handle_without_known_content_type(src: DurableStream,
                                                     server: ReferenceServer) -> None:
    src.append('"x"')
    plain = DurableStream(src.url)  # content type unknown: fork() asks the server first
    with plain.fork(server.stream_url()) as fork:
        assert fork.content_type == JSON
        assert items(fork.url) == ["x"]


def test_sub_offset_counts_json_messages(src: DurableStream, server: ReferenceServer) -> None:
    start = src.head().offset
    after_batch = src.append([1, 2, 3])  # append() stores the list as one message
    src.append(4)
    # §4.2: JSON sub-offset = number of flattened messages past the anchor. Here the anchor
    # is the start, so a sub-offset of 0 forks an empty stream.
    with src.fork(server.stream_url(), offset=start, sub_offset=0) as empty:
        assert items(empty.url) == []
    with src.fork(server.stream_url(), offset=after_batch, sub_offset=1) as fork:
        assert items(fork.url) == [[1, 2, 3], 4]


def test_sub_offset_splits_a_json_batch(server: ReferenceServer) -> None:
    url = server.stream_url()
    # A PUT body of [1,2,3] is stored as three messages in one record: a sub-offset can
    # cut inside it.
    with DurableStream.create(url, content_type=JSON, body=[1, 2, 3]) as src:
        with src.fork(server.stream_url(), offset="0000000000000000_0000000000000000",
                      sub_offset=2) as fork:
            assert items(fork.url) == [1, 2]
        with pytest.raises(ForkError, match="sub-offset") as info:
            src.fork(server.stream_url(), offset="0000000000000000_0000000000000000",
                     sub_offset=5)
        assert info.value.status == 400


def test_sub_offset_counts_bytes_in_byte_mode(server: ReferenceServer) -> None:
    with DurableStream.create(server.stream_url(), content_type="text/plain") as src:
        after_hello = src.append("hello")
        src.append("world")
        with src.fork(server.stream_url(), offset=after_hello, sub_offset=3) as fork:
            assert text(fork.url) == "hellowor"
            assert fork.content_type == "text/plain"
        with pytest.raises(ForkError, match="sub-offset"):
            src.fork(server.stream_url(), offset=after_hello, sub_offset=6)


def test_re_fork_is_idempotent_and_retries_are_safe(src: DurableStream,
                                                    server: ReferenceServer) -> None:
    mid = src.append('"a"')
    tail = src.append('"b"')
    target = server.stream_url()
    first = src.fork(target, offset=mid, sub_offset=0)
    assert first.created is True
    # The same request again (a retry, or a re-run of the script), from a handle that does
    # not know the content type: 200, not the 409 the server gives without Content-Type.
    again = DurableStream(src.url).fork(target, offset=mid)
    assert again.created is False
    assert items(target) == ["a"]
    # a different fork point is another configuration
    with pytest.raises(StreamExistsError, match="already exists") as info:
        src.fork(target, offset=tail)
    assert info.value.status == 409
    # Server quirk (0.3.7): without Stream-Fork-Offset a re-fork is not compared on the
    # offset at all, so "fork at the tail" onto an existing fork from an older tail is 200.
    with src.fork(target) as quirk:
        assert quirk.created is False
        assert items(target) == ["a"]
    for h in (first, again):
        h.close()


def test_fork_errors_of_section_4_2(src: DurableStream, server: ReferenceServer) -> None:
    tail = src.append('"a"')
    # offset beyond the tail: 400
    beyond = "9" * 16 + tail[16:]
    with pytest.raises(ForkError, match="beyond the source's tail") as e1:
        src.fork(server.stream_url(), offset=beyond)
    assert e1.value.status == 400 and e1.value.code == "FORK_REFUSED"
    # malformed offset: 400
    with pytest.raises(ForkError, match="malformed"):
        src.fork(server.stream_url(), offset="garbage")
    # source missing: 404 (from the HEAD that fetches the source's content type)
    missing = DurableStream(server.stream_url())
    with pytest.raises(StreamNotFoundError, match="source stream .* does not exist"):
        missing.fork(server.stream_url())
    # source missing even though the handle knows a content type: the PUT answers 404
    missing_typed = DurableStream(server.stream_url(), content_type=JSON)
    with pytest.raises(StreamNotFoundError, match="source stream"):
        missing_typed.fork(server.stream_url())
    # content type mismatch: 409 (the handle was told the wrong type)
    wrong = DurableStream(src.url, content_type="text/plain")
    with pytest.raises(ContentTypeMismatchError, match="content type") as e2:
        wrong.fork(server.stream_url())
    assert e2.value.status == 409
    # target in use with another configuration: 409
    other = DurableStream.create(server.stream_url(), content_type=JSON)
    with pytest.raises(StreamExistsError):
        src.fork(other.url)
    # bad arguments never reach the server
    with pytest.raises(ValueError, match="sub_offset must be >= 0"):
        src.fork(server.stream_url(), sub_offset=-1)
    with pytest.raises(ValueError, match="not a fork point"):
        src.fork(server.stream_url(), offset="-1")
    with pytest.raises(ValueError, match="ttl_seconds or expires_at"):
        src.fork(server.stream_url(), ttl_seconds=5, expires_at="2099-01-01T00:00:00Z")


def test_fork_to_another_origin_raises_before_any_request() -> None:
    # Nothing listens on either port: a request would raise TransportError, not ValueError.
    source = DurableStream("http://127.0.0.1:1/v1/stream/a", retry=NO_RETRY)
    with pytest.raises(ValueError, match="same server"):
        source.fork("http://127.0.0.1:2/v1/stream/b")
    with pytest.raises(ValueError, match="same server"):
        source.fork("https://127.0.0.1:1/v1/stream/b")
    # default ports are the same origin: this one gets past the check and fails to connect
    with pytest.raises(Exception) as info:
        DurableStream("http://127.0.0.1:1/a", retry=NO_RETRY).fork("http://127.0.0.1:1/b")
    assert not isinstance(info.value, ValueError)


def test_fork_ttl_and_closed_source(src: DurableStream, server: ReferenceServer) -> None:
    src.append(1)
    src.close_stream()
    with src.fork(server.stream_url(), ttl_seconds=60) as fork:
        info = fork.head()
        assert info.ttl_seconds == 60
        assert info.closed is False  # §4.2: a fork of a closed stream starts open
        fork.append(2)
        assert items(fork.url) == [1, 2]


def test_fork_inherits_the_source_expiry_unless_given(server: ReferenceServer) -> None:
    # §4.2 expiry table: source TTL + no fork expiry -> the fork inherits the TTL value;
    # a fork Expires-At replaces it.
    with DurableStream.create(server.stream_url(), content_type=JSON, ttl_seconds=120) as src:
        with src.fork(server.stream_url()) as inherited:
            assert inherited.head().ttl_seconds == 120
        with src.fork(server.stream_url(), expires_at="2099-01-01T00:00:00Z") as own:
            info = own.head()
            assert info.expires_at and info.expires_at.startswith("2099-01-01")
            assert info.ttl_seconds is None


def test_soft_deleted_source(src: DurableStream, server: ReferenceServer) -> None:
    src.append('"kept"')
    fork = src.fork(server.stream_url())
    src.delete()  # it has a fork: soft delete (§4.2)
    for call in (src.head, lambda: src.append('"x"'), src.delete, src.close_stream):
        with pytest.raises(StreamSoftDeletedError, match="deleted but still has forks") as e:
            call()
        assert e.value.status == 410
        assert isinstance(e.value, RetentionGoneError)
    with pytest.raises(StreamSoftDeletedError, match="deleted but still has forks") as e2:
        DurableStream.create(src.url, content_type=JSON)
    assert e2.value.status == 409
    with pytest.raises(StreamSoftDeletedError, match="source stream .* was deleted"):
        DurableStream(src.url, content_type=JSON).fork(server.stream_url())
    # the fork still reads the inherited data
    assert items(fork.url) == ["kept"]
    # deleting the last fork frees the source's path (possibly asynchronously: poll)
    fork.delete()
    deadline = time.monotonic() + 10
    while True:
        try:
            src.head()
        except StreamNotFoundError:
            break
        except StreamSoftDeletedError:
            assert time.monotonic() < deadline, "source still soft-deleted 10 s after"
            time.sleep(0.05)  # polling the server for an asynchronous cleanup
    DurableStream.create(src.url, content_type=JSON).close()


def test_producer_on_a_fork_starts_afresh(src: DurableStream, server: ReferenceServer) -> None:
    with IdempotentProducer(src, "writer") as producer:
        for i in range(3):
            producer.append(json.dumps({"i": i}))
        producer.flush()
        fork_point = producer.last_offset
    src.append({"i": "after"})
    with src.fork(server.stream_url(), offset=fork_point) as fork:
        # §4.2: producer state is not inherited; the same producer id just works on the fork
        with IdempotentProducer(fork, "writer") as producer:
            producer.append(json.dumps({"i": "f0"}))
            producer.append(json.dumps({"i": "f1"}))
            producer.flush()
        assert items(fork.url) == [{"i": 0}, {"i": 1}, {"i": 2}, {"i": "f0"}, {"i": "f1"}]
