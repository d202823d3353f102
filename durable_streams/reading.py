"""Placeholder: replaced by the reading implementation (issue 4)."""

from __future__ import annotations

from typing import Any, Literal, Union

LiveMode = Union[bool, Literal["auto", "long-poll", "sse"]]


class JsonBatch:  # pragma: no cover - placeholder
    pass


class StreamEvent:  # pragma: no cover - placeholder
    pass


class StreamResponse:  # pragma: no cover - placeholder
    pass


def stream(url: str, **kwargs: Any) -> StreamResponse:  # pragma: no cover - placeholder
    raise NotImplementedError
