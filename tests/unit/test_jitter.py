"""Backoff jitter comes from the library's own generator: background threads never draw
from the application's ``random`` state (which it may have seeded to repeat its runs), and
a simulation can seed the library's generator to repeat a walk exactly."""

from __future__ import annotations

import random

from durable_streams import RetryPolicy, _jitter
from durable_streams._log_startup import retry_delay


def _delays() -> list[float]:
    policy = RetryPolicy()
    return ([policy.delay(n) for n in range(8)] + [retry_delay(n) for n in range(1, 8)])


def test_jitter_leaves_the_applications_random_state_alone() -> None:
    random.seed(1234)
    expected = [random.random() for _ in range(3)]
    random.seed(1234)
    delays = _delays()
    assert [random.random() for _ in range(3)] == expected
    assert len(set(delays)) > 1  # jittered: not all equal


def test_seeding_the_librarys_generator_repeats_the_delays() -> None:
    state = _jitter.RNG.getstate()
    try:
        _jitter.RNG.seed(7)
        first = _delays()
        _jitter.RNG.seed(7)
        assert _delays() == first
        _jitter.RNG.seed(8)
        assert _delays() != first
    finally:
        _jitter.RNG.setstate(state)
