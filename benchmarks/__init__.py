"""Benchmarks: our client side by side with the raw ceiling and the official client.

Entry point: ``python3 -m benchmarks`` (see :mod:`benchmarks.run`). Not part of the library
and not collected by the test suite.
"""
