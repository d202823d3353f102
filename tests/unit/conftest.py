"""Server-free tests: pure protocol decisions driven by tables and hypothesis state
machines. Nothing here may start the reference server or need Node (``pytest tests/unit``
passes with ``node`` absent from PATH)."""
