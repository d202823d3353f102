"""The producer's Conditions (``_producer/waits.py``): one per wait, each documented, and
each event notifying only the waits it can end. The simulation (``sim_producer.py``) checks
that no wake-up is lost; these check that the table stays the truth."""

from __future__ import annotations

import threading
from pathlib import Path

from durable_streams._producer import waits
from durable_streams._producer.waits import NAMES, Waits

README = Path(__file__).resolve().parents[2] / "README.md"


class Recording:
    def __init__(self, log: list[tuple[str, str]], name: str) -> None:
        self.log, self.name = log, name

    def wait(self, timeout: float | None = None) -> bool:
        raise AssertionError("not waited on here")

    def notify(self, n: int = 1) -> None:
        self.log.append((self.name, "one"))

    def notify_all(self) -> None:
        self.log.append((self.name, "all"))


def notified(event: str, *args: int) -> set[str]:
    log: list[tuple[str, str]] = []
    w = Waits(threading.Lock(), make=lambda name: Recording(log, name))
    getattr(w, event)(*args)
    return {name for name, _ in log}


def test_every_condition_is_documented_in_the_module_and_the_readme() -> None:
    doc = waits.__doc__ or ""
    readme = README.read_text(encoding="utf-8")
    for name in NAMES:
        assert f"``{name}``" in doc, name
        assert f"| `{name}` |" in readme, name
    real = Waits(threading.Lock())
    assert all(isinstance(getattr(real, n), threading.Condition) for n in NAMES)
    assert len({id(getattr(real, n)) for n in NAMES}) == len(NAMES)  # one per wait


def test_no_claim_no_notification_and_a_claim_wakes_the_batch_waits() -> None:
    assert notified("on_new_generation", 3, 3) == set()
    assert notified("on_new_generation", 3, 4) == {"turn", "earlier", "retry"}


def test_events_wake_only_the_waits_they_can_end() -> None:
    assert notified("on_written") == {"turn"}
    assert notified("on_probed") == {"probed"}
    assert notified("on_acked") == {"settled", "turn", "earlier"}
    assert notified("on_failed") == {"settled", "turn", "earlier", "retry"}
    assert notified("on_stop") == {"ready", "close_retry"}
    # A fatal error ends every wait that depends on the batch going on, on the producer
    # or on close_stream(); flush() waits for the failures it causes (on_failed), and the
    # probe wait for the probe, which a fatal error does not end.
    assert notified("on_fatal") == set(NAMES) - {"settled", "probed"}
