"""The distribution's name and version, each written once.

The distribution is published as ``durable-streams-sync``; the import name stays
``durable_streams``. PyPI's ``durable-streams`` is the official client, which uses the same
import name, so the two cannot be installed side by side (README, "Install").
``pyproject.toml`` reads :data:`__version__` from this file (``[tool.setuptools.dynamic]``),
so the package metadata, ``durable_streams.__version__``, ``durable-streams --version`` and
the ``User-Agent`` header always agree.
"""

from __future__ import annotations

__all__ = ["DISTRIBUTION", "USER_AGENT", "__version__"]

#: The name on PyPI (``pip install durable-streams-sync``).
DISTRIBUTION = "durable-streams-sync"
#: The release (a plain literal: setuptools reads it without importing the package).
__version__ = "0.1.0"
#: The ``User-Agent`` of every request the library makes.
USER_AGENT = f"{DISTRIBUTION}/{__version__}"
