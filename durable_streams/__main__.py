"""``python -m durable_streams``: the ``durable-streams`` command line."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
