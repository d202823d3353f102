"""Server-free tests: pure protocol decisions driven by tables and hypothesis state
machines. Nothing here may start the reference server or need Node (``pytest tests/unit``
passes with ``node`` absent from PATH)."""

from hypothesis import register_random

from durable_streams import _jitter

# The library's backoff jitter comes from its own generator: hypothesis seeds and restores
# it for every example, as it does the random module, so that replaying an example (and
# shrinking) repeats the same delays.
register_random(_jitter.RNG)
