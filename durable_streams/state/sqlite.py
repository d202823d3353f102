"""SqliteState: a persistent materialised view in a SQLite database (standard library).

Each group of events is applied, together with the stream offset after it, in one SQLite
transaction. A reader that stops (or crashes) and reopens the database resumes from that
offset: what was committed is not applied again, and nothing after it is missed (a
transaction cut short by a crash leaves neither its events nor its offset).

Schema (documented in the README; query it with SQL, e.g. ``json_extract(value, '$.name')``)::

    CREATE TABLE ds_state (               -- one row per (type, key)
        type  TEXT NOT NULL,
        key   TEXT NOT NULL,
        value TEXT NOT NULL,              -- the value as JSON text
        PRIMARY KEY (type, key)
    ) WITHOUT ROWID;
    CREATE TABLE ds_state_types (         -- types, in the order of their first change event
        ord  INTEGER PRIMARY KEY,         -- since the last reset
        type TEXT NOT NULL UNIQUE
    );
    CREATE TABLE ds_state_meta (          -- 'offset': where to resume; 'stream': the stream
        name  TEXT PRIMARY KEY,           -- URL without credentials or query values;
        value TEXT NOT NULL               -- 'events_applied': a count of applied events
    );

The table prefix (``ds_``) can be changed with ``table_prefix=``, so several views can share
one database file. The database uses WAL journaling, so other connections can read it while
a follower writes.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .._redact import redact_url
from .events import StateEvent, check_event

if TYPE_CHECKING:
    from .follow import StateFollower

__all__ = ["SqliteState"]

_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class SqliteState:
    """State materialised into SQLite; the same reading methods as MaterializedState.

    ``SqliteState(path)`` opens (or creates) the database. Pass it as ``store=`` to
    :func:`~durable_streams.state.follow_state`, or call :meth:`follow`; it resumes from
    :attr:`offset`. Reading methods (:meth:`get`, :meth:`collection`, :attr:`types`,
    :meth:`to_dict`) may be called from any thread; for your own SQL, open another
    connection (``sqlite3.connect(path)``) or use :meth:`query`.
    """

    def __init__(self, path: str | Path, *, table_prefix: str = "ds_",
                 synchronous: str = "NORMAL") -> None:
        if not isinstance(table_prefix, str) or not _PREFIX.match(table_prefix):
            raise ValueError(f"table_prefix must be an SQL identifier prefix like 'ds_', got "
                             f"{table_prefix!r}")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be OFF, NORMAL, FULL or EXTRA, got "
                             f"{synchronous!r}")
        self.path = str(path)
        p = table_prefix
        self._t_state, self._t_types = f"{p}state", f"{p}state_types"
        self._t_meta = f"{p}state_meta"
        self._lock = threading.RLock()
        # One connection, used under the lock from the follower and reader threads.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        with self._lock:
            self._db.executescript(f"""
                BEGIN;
                CREATE TABLE IF NOT EXISTS {self._t_state} (
                    type TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
                    PRIMARY KEY (type, key)) WITHOUT ROWID;
                CREATE TABLE IF NOT EXISTS {self._t_types} (
                    ord INTEGER PRIMARY KEY, type TEXT NOT NULL UNIQUE);
                CREATE TABLE IF NOT EXISTS {self._t_meta} (
                    name TEXT PRIMARY KEY, value TEXT NOT NULL);
                COMMIT;
            """)
            self._offset = self._meta("offset")
            self._applied = int(self._meta("events_applied") or 0)

    def _meta(self, name: str) -> str | None:
        row = self._db.execute(f"SELECT value FROM {self._t_meta} WHERE name = ?",
                               (name,)).fetchone()
        return None if row is None else str(row[0])

    # -- applying ----------------------------------------------------------------------
    def apply(self, event: StateEvent) -> None:
        """Apply one event in its own transaction (the stored offset is not changed)."""
        self.apply_batch([event])

    def apply_batch(self, events: Sequence[StateEvent], *, offset: str | None = None) -> None:
        """Apply events and record ``offset`` in one transaction (all or nothing)."""
        checked = [check_event(e, offset=offset) for e in events]
        if not checked and (offset is None or offset == self._offset):
            return
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                self._apply_all(checked)
                if offset is not None:
                    db.execute(f"INSERT OR REPLACE INTO {self._t_meta} VALUES ('offset', ?)",
                               (offset,))
                db.execute(f"INSERT OR REPLACE INTO {self._t_meta} VALUES "
                           "('events_applied', ?)", (str(self._applied + len(checked)),))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._applied += len(checked)
            if offset is not None:
                self._offset = offset

    def _apply_all(self, events: list[StateEvent]) -> None:
        # Runs of "set" rows go through executemany; types are registered per run.
        db = self._db
        upsert = (f"INSERT INTO {self._t_state} (type, key, value) VALUES (?, ?, ?) "
                  "ON CONFLICT (type, key) DO UPDATE SET value = excluded.value")
        delete = f"DELETE FROM {self._t_state} WHERE type = ? AND key = ?"
        add_type = f"INSERT OR IGNORE INTO {self._t_types} (type) VALUES (?)"
        rows: list[tuple[str, str, str]] = []
        seen_types: list[str] = []
        for event in events:
            headers = event["headers"]
            operation = headers.get("operation")
            if operation is None:
                if headers["control"] == "reset":
                    self._flush_rows(rows, seen_types, upsert, add_type)
                    db.execute(f"DELETE FROM {self._t_state}")
                    db.execute(f"DELETE FROM {self._t_types}")
                continue
            type_ = event["type"]
            if not seen_types or seen_types[-1] != type_:
                seen_types.append(type_)
            if operation == "delete":
                self._flush_rows(rows, seen_types, upsert, add_type)
                db.execute(delete, (type_, event["key"]))
            else:
                rows.append((type_, event["key"], _dumps(event["value"])))
        self._flush_rows(rows, seen_types, upsert, add_type)

    def _flush_rows(self, rows: list[tuple[str, str, str]], seen_types: list[str],
                    upsert: str, add_type: str) -> None:
        if seen_types:
            self._db.executemany(add_type, [(t,) for t in dict.fromkeys(seen_types)])
            seen_types.clear()
        if rows:
            self._db.executemany(upsert, rows)
            rows.clear()

    def clear(self) -> None:
        """Delete every value and type (the offset is kept)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(f"DELETE FROM {self._t_state}")
            self._db.execute(f"DELETE FROM {self._t_types}")
            self._db.execute("COMMIT")

    def bind_stream(self, url: str) -> None:
        """Remember which stream this database follows; refuse another one later.

        The URL is stored without credentials or query values.
        """
        shown = redact_url(url)
        with self._lock:
            stored = self._meta("stream")
            if stored is None:
                self._db.execute(f"INSERT INTO {self._t_meta} VALUES ('stream', ?)", (shown,))
            elif stored != shown:
                raise ValueError(
                    f"{self.path} holds the state of {stored}, not of {shown}; use another "
                    "database file (or another table_prefix) for this stream")

    # -- reading -----------------------------------------------------------------------
    @property
    def offset(self) -> str | None:
        """The stream offset committed with the last group: where a follower resumes."""
        with self._lock:
            return self._offset

    @property
    def applied_count(self) -> int:
        """Events applied to this database so far, over all runs (controls included)."""
        with self._lock:
            return self._applied

    def get(self, type: str, key: str, default: Any = None) -> Any:
        with self._lock:
            row = self._db.execute(f"SELECT value FROM {self._t_state} WHERE type = ? AND "
                                   "key = ?", (type, key)).fetchone()
        return default if row is None else json.loads(row[0])

    def collection(self, type: str) -> Mapping[str, Any]:
        """A read-only ``{key: value}`` mapping of one type, ordered by key."""
        with self._lock:
            rows = self._db.execute(f"SELECT key, value FROM {self._t_state} WHERE type = ? "
                                    "ORDER BY key", (type,)).fetchall()
        return MappingProxyType({k: json.loads(v) for k, v in rows})

    @property
    def types(self) -> list[str]:
        """Type names, in the order of their first change event since the last reset."""
        with self._lock:
            rows = self._db.execute(f"SELECT type FROM {self._t_types} ORDER BY ord").fetchall()
        return [r[0] for r in rows]

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{type: {key: value}}`` (every type, in :attr:`types` order)."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {t: {} for t in self.types}
            for type_, key, value in self._db.execute(
                    f"SELECT type, key, value FROM {self._t_state} ORDER BY type, key"):
                out.setdefault(type_, {})[key] = json.loads(value)
        return out

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute(f"SELECT count(*) FROM {self._t_state}").fetchone()[0])

    def query(self, sql: str, parameters: Sequence[Any] | Mapping[str, Any] = ()
              ) -> list[tuple[Any, ...]]:
        """Run a read-only SQL query on this database and return every row."""
        with self._lock:
            return list(self._db.execute(sql, parameters).fetchall())

    def __iter__(self) -> Iterator[tuple[str, str, Any]]:
        for type_, collection in self.to_dict().items():
            for key, value in collection.items():
                yield type_, key, value

    # -- following and lifecycle -------------------------------------------------------
    def follow(self, url: str, **options: Any) -> StateFollower[SqliteState]:
        """``follow_state(url, store=self, **options)``, bound to this stream: resumes
        from :attr:`offset`. Returns the :class:`~durable_streams.state.StateFollower`."""
        from .follow import follow_state

        self.bind_stream(url)
        return follow_state(url, store=self, **options)

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SqliteState({self.path!r}, offset={self._offset!r})"
