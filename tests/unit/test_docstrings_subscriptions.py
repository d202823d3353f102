"""Every public parameter of the subscription and webhook APIs is documented where
``help()`` shows it (README, "Subscriptions and workers" and "Webhooks")."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from durable_streams import Subscription, WebhookVerifier

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()

CASES: list[tuple[str, Callable[..., Any], str]] = [
    ("Subscription", Subscription.__init__, Subscription.__doc__ or ""),
    ("Subscription.create", Subscription.create, Subscription.create.__doc__ or ""),
    ("Subscription.claim", Subscription.claim, Subscription.claim.__doc__ or ""),
    ("Subscription.claims", Subscription.claims, Subscription.claims.__doc__ or ""),
    ("WebhookVerifier", WebhookVerifier.__init__, WebhookVerifier.__doc__ or ""),
]


def _params(func: Callable[..., Any]) -> list[str]:
    return [p.name for p in inspect.signature(func).parameters.values()
            if p.name not in ("self", "cls") and p.kind is not p.VAR_KEYWORD]


@pytest.mark.parametrize("name, func, doc", CASES, ids=[c[0] for c in CASES])
def test_every_parameter_is_in_the_docstring(name: str, func: Callable[..., Any],
                                             doc: str) -> None:
    missing = [p for p in _params(func) if not re.search(rf"\b{p}\b", doc)]
    assert not missing, f"{name}: parameters not documented: {missing}"


@pytest.mark.parametrize("name, func, doc", CASES, ids=[c[0] for c in CASES])
def test_every_parameter_is_in_the_readme_table(name: str, func: Callable[..., Any],
                                                doc: str) -> None:
    # The reference table's rows look like: | `Subscription.create` | `pattern` | ... |
    rows = {m.group(1) for m in re.finditer(rf"^\| `{re.escape(name)}` \| `(\w+)`",
                                            README, re.M)}
    missing = [p for p in _params(func) if p not in rows]
    assert not missing, f"README reference table lacks {name} parameters: {missing}"
