"""The durable event log: SQLite in WAL mode with ``synchronous=FULL``.

:meth:`EventLog.append` commits before it returns, so an acknowledged ``RecordEvents`` survives
``kill -9``; sequence numbers (``seq``) only ever grow. Schema (also read directly with sqlite3
by ``tandem build --events-log``; documented in docs/operations.md)::

    CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,
                         item_id TEXT NOT NULL, ts INTEGER NOT NULL, event TEXT NOT NULL,
                         value REAL, received_at REAL NOT NULL)
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from retrieval.data import Event

__all__ = ["EventLog", "SCHEMA"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    event TEXT NOT NULL,
    value REAL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
"""


class EventLog:
    """Append-only, thread-safe (one writer connection under a lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._closed = False
        self._last = int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def append(self, events: Sequence[Event]) -> int:
        """Durably append; returns the sequence number of the last event (0 if none ever)."""
        if not events:
            return self.position()
        now = time.time()
        rows = [(e.user_id, e.item_id, int(e.ts), e.event, e.value, now) for e in events]
        with self._lock:
            if self._closed:
                raise RuntimeError(f"event log {self.path} is closed (the server is shutting down)")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO events (user_id, item_id, ts, event, value, received_at) VALUES (?, ?, ?, ?, ?, ?)",
                    rows)
                last = int(self._conn.execute("SELECT MAX(seq) FROM events").fetchone()[0])
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._last = last
            return last

    def position(self) -> int:
        """The sequence number of the newest event (0 when empty)."""
        with self._lock:
            return self._last

    def iter_events(self, since_ts: int | None = None, received_since: float | None = None, *,
                    after_seq: int = 0, upto_seq: int | None = None, batch: int = 10_000) -> Iterator[Event]:
        """Events in sequence order: all of them, or those with ``ts >= since_ts`` or received at or
        after ``received_since`` (epoch seconds) when either is given; always restricted to
        ``after_seq < seq <= upto_seq`` (``upto_seq`` None = the end). Reads on its own connection,
        so appends go on meanwhile."""
        conn = sqlite3.connect(str(self.path))
        everything = since_ts is None and received_since is None
        try:
            cur = conn.execute(
                "SELECT user_id, item_id, ts, event, value FROM events "
                "WHERE seq > ? AND seq <= ? AND (? OR ts >= ? OR received_at >= ?) ORDER BY seq",
                (int(after_seq), 2**62 if upto_seq is None else int(upto_seq), everything,
                 since_ts if since_ts is not None else 2**62,
                 received_since if received_since is not None else float(2**62)))
            while rows := cur.fetchmany(batch):
                for u, i, ts, ev, v in rows:
                    yield Event(u, i, int(ts), ev, v)
        finally:
            conn.close()

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()
