"""The Durable Streams State Protocol: change events in, materialised state out.

- :class:`StateProducer`: ``insert``/``update``/``upsert``/``delete``, ``reset()`` and
  ``snapshot()`` blocks, over an :class:`~durable_streams.IdempotentProducer`.
- :class:`MaterializedState`: the pure, in-memory view (``apply``, ``get``,
  ``collection``, ``types``).
- :func:`follow_state`: a live, thread-safe view on a background thread
  (``wait_for_txid``, ``wait_until_up_to_date``, change callbacks).
- :class:`SqliteState`: a persistent view; events and the offset committed together.
- :mod:`.events`: building and checking events.

See the README's "State Protocol" section.
"""

from .blocks import BlockAssembler
from .events import (
    StateEvent,
    StateEventError,
    change_event,
    check_event,
    control_event,
    is_change,
    is_control,
)
from .follow import StateFollower, StateStore, follow_state
from .materialized import MaterializedState
from .producer import StateProducer
from .sqlite import SqliteState

__all__ = [
    "BlockAssembler",
    "MaterializedState",
    "SqliteState",
    "StateEvent",
    "StateEventError",
    "StateFollower",
    "StateProducer",
    "StateStore",
    "change_event",
    "check_event",
    "control_event",
    "follow_state",
    "is_change",
    "is_control",
]
