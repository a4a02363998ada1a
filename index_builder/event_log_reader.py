"""Read the server's SQLite event log (``tandem build --events-log FILE``) without importing the
server: the table layout is the documented contract (docs/operations.md, server/event_log.py)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

from tandem.retrieval.data import EVENT_TYPES, Event

__all__ = ["read_event_log"]


def read_event_log(path: str | Path, batch: int = 10_000) -> Iterator[Event]:
    """Events in log order; rows with an unknown event type are skipped (the server never writes them).

    Works on logs written before the ``event_id`` column existed (only the shared columns are read)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--events-log {path} does not exist; it is the server's --event-log file "
                                "(default BUNDLES/events.sqlite3)")
    # quoted: an unescaped '#' or '?' in the path would cut the URI and open (even create) another file
    conn = sqlite3.connect(f"file:{quote(str(path.absolute()), safe='/')}?mode=ro", uri=True)
    try:
        try:
            cur = conn.execute("SELECT user_id, item_id, ts, event, value FROM events ORDER BY seq")
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path} is not a Tandem event log ({exc})") from None
        while rows := cur.fetchmany(batch):
            for user, item, ts, event, value in rows:
                if event in EVENT_TYPES:
                    yield Event(str(user), str(item), int(ts), event, None if value is None else float(value))
    finally:
        conn.close()
