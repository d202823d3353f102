"""``python -m durable_streams.cli``: the same as ``python -m durable_streams``."""

from __future__ import annotations

from . import main

raise SystemExit(main())
