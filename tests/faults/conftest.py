"""Fixtures of the fault scenarios (the reference server comes from tests/conftest.py)."""

from __future__ import annotations

import pytest

from durable_streams.testing import ReferenceServer


@pytest.fixture
def origin(server: ReferenceServer) -> str:
    """Base URL of the session's in-memory reference server (faults cleared after use)."""
    return server.url
