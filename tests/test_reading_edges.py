"""Reading edge cases against the real reference server: deep JSON messages (PROTOCOL.md
§9.1), big bodies delivered in pieces, bounded SSE lines."""

from __future__ import annotations

from typing import Any

import pytest

from durable_streams import DurableStream

pytestmark = pytest.mark.timeout(60)

JSON = "application/json"


def _depth(value: Any) -> int:
    n = 0
    while isinstance(value, list) and value:
        value = value[0]
        n += 1
    return n


@pytest.mark.parametrize("live", [False, "sse", "long-poll"])
def test_readers_deliver_a_deeply_nested_message(url: str, live: Any) -> None:
    deep = "[" * 3000 + "]" * 3000  # valid JSON that json.loads cannot parse
    with DurableStream.create(url, content_type=JSON) as handle:
        handle.append("1")
        handle.append(deep)
        handle.append("2")
        with handle.stream(live=live, stop_at_up_to_date=True) as res:
            items = list(res.iter_json())
    assert items[0] == 1 and items[2] == 2 and len(items) == 3
    assert _depth(items[1]) == 2999
