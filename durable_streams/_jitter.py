"""Random jitter for backoff delays, from a generator of the library's own, so that
background threads never draw from (or disturb) the application's ``random`` module
state, which an application may have seeded to make its own runs repeatable."""

from __future__ import annotations

import random

#: The library's generator (a test may seed it to repeat a simulated run exactly).
RNG = random.Random()


def fraction() -> float:
    """A uniform float in [0, 1)."""
    return RNG.random()
