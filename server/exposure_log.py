"""The exposure log of A/B experiments: one SQLite row per answer an arm gave a user.

A separate file from the event log (default ``exposures.sqlite3`` beside it), in WAL mode with
``synchronous=NORMAL``: each exposure is committed before its response is sent, so it survives
the process being killed (a power loss may drop the last ones; exposures are analytics, and
an fsync per request would cost more than the request). Schema: :data:`SCHEMA`; ``items`` is a
JSON array of item ids in the order shown. ``tandem experiment report`` reads it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from tandem.server.attribution import Exposure
from tandem.server.event_log import sqlite_uri

__all__ = ["ExposureLog", "SCHEMA", "read_exposures"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS exposures (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    experiment TEXT NOT NULL,
    arm TEXT NOT NULL,
    user_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    request_id TEXT NOT NULL,
    bundle_version TEXT NOT NULL,
    items TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS exposures_experiment_ts ON exposures (experiment, ts);
"""


class ExposureLog:
    """Append-only, thread-safe (one writer connection under a lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(sqlite_uri(self.path), uri=True, check_same_thread=False,
                                         isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"exposure log {self.path}: cannot open it as SQLite ({exc}); move it away or "
                             "give another --exposure-log") from None
        self._lock = threading.Lock()
        self._closed = False

    def append(self, experiment: str, exposure: Exposure, request_id: str = "", bundle_version: str = "") -> None:
        row = (exposure.ts, experiment, exposure.arm, exposure.user_id, exposure.kind, request_id, bundle_version,
               json.dumps(list(exposure.items)))
        with self._lock:
            if self._closed:
                raise RuntimeError(f"exposure log {self.path} is closed (the server is shutting down)")
            self._conn.execute("INSERT INTO exposures (ts, experiment, arm, user_id, kind, request_id, "
                               "bundle_version, items) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)

    def count(self, experiment: str | None = None) -> int:
        with self._lock:
            if experiment is None:
                return int(self._conn.execute("SELECT COUNT(*) FROM exposures").fetchone()[0])
            return int(self._conn.execute("SELECT COUNT(*) FROM exposures WHERE experiment = ?",
                                          (experiment,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._conn.close()


def read_exposures(path: str | Path, experiment: str, since_ts: float | None = None) -> Iterator[Exposure]:
    """The exposures of ``experiment`` in time order (those at or after ``since_ts`` when given),
    read on a read-only connection."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no exposure log at {path} (tandem serve --experiment writes it; see --exposures)")
    conn = sqlite3.connect(sqlite_uri(path, "ro"), uri=True)
    try:
        cur = conn.execute("SELECT ts, user_id, arm, kind, items FROM exposures WHERE experiment = ? AND ts >= ? "
                           "ORDER BY ts, seq", (experiment, -1.0 if since_ts is None else float(since_ts)))
        while rows := cur.fetchmany(10_000):
            for ts, user, arm, kind, items in rows:
                yield Exposure(float(ts), user, arm, kind, tuple(json.loads(items)))
    except sqlite3.DatabaseError as exc:
        raise ValueError(f"exposure log {path}: cannot read it ({exc})") from None
    finally:
        conn.close()
