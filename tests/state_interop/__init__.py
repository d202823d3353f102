"""The pinned TypeScript @durable-streams/state, for interop tests and benchmarks/state.py."""
