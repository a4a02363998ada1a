"""Read the server's SQLite event log (``tandem build --events-log FILE``) without importing the
server: the table layout is the documented contract (docs/operations.md, server/event_log.py).

A bundle built from the log records which of its events it includes (:func:`event_log_mark`, the
manifest's ``event_log``): the server replays only the later ones when it loads the bundle."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import quote

from tandem.retrieval.data import EVENT_TYPES, Event, Item

__all__ = ["read_event_log", "event_log_mark", "FINGERPRINT_COLUMNS", "read_catalog_changes", "apply_catalog_edits",
           "CatalogEdit"]

#: the columns of the last included row that the manifest records; with ``received_at`` (the
#: server's clock when it logged the event) they tell this log, a backup or a recovery of it
#: apart from any other log (server/bundle_manager.py compares them)
FINGERPRINT_COLUMNS = ("user_id", "item_id", "ts", "event", "received_at")


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(f"--events-log {path} does not exist; it is the server's --event-log file "
                                "(default BUNDLES/events.sqlite3)")
    # quoted: an unescaped '#' or '?' in the path would cut the URI and open (even create) another file
    return sqlite3.connect(f"file:{quote(str(path.absolute()), safe='/')}?mode=ro", uri=True)


def event_log_mark(path: str | Path) -> dict:
    """What a bundle built from the log now includes: ``{"seq": S, "last_event": {...}, "path": ...}``,
    S the newest sequence number (0 for an empty log) and ``last_event`` that row's
    :data:`FINGERPRINT_COLUMNS` (None when the log is empty). Read the events with
    ``read_event_log(path, upto_seq=S)`` so that the build takes exactly these."""
    path = Path(path)
    conn = _connect(path)
    try:
        try:
            row = conn.execute(f"SELECT seq, {', '.join(FINGERPRINT_COLUMNS)} FROM events "
                               "ORDER BY seq DESC LIMIT 1").fetchone()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path} is not a Tandem event log ({exc})") from None
    finally:
        conn.close()
    if row is None:
        return {"seq": 0, "last_event": None, "path": str(path.absolute())}
    return {"seq": int(row[0]), "last_event": dict(zip(FINGERPRINT_COLUMNS, row[1:], strict=True)),
            "path": str(path.absolute())}


def read_event_log(path: str | Path, batch: int = 10_000, upto_seq: int | None = None) -> Iterator[Event]:
    """Events in log order, those with ``seq <= upto_seq`` when it is given; rows with an unknown
    event type are skipped (the server never writes them).

    Works on logs written before the ``event_id`` column existed (only the shared columns are read)."""
    path = Path(path)
    conn = _connect(path)
    try:
        try:
            cur = conn.execute("SELECT user_id, item_id, ts, event, value FROM events WHERE seq <= ? ORDER BY seq",
                               (2**62 if upto_seq is None else int(upto_seq),))
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path} is not a Tandem event log ({exc})") from None
        while rows := cur.fetchmany(batch):
            for user, item, ts, event, value in rows:
                if event in EVENT_TYPES:
                    yield Event(str(user), str(item), int(ts), event, None if value is None else float(value))
    finally:
        conn.close()


#: a live catalog change as the build reads it: ("upsert", item_id, the row) or ("delete", item_id, None)
CatalogEdit = tuple[str, str, Item | None]


def read_catalog_changes(path: str | Path, upto_seq: int | None = None) -> list[CatalogEdit]:
    """The live catalog changes (UpsertItems, DeleteItems) logged with ``seq <= upto_seq``, in log
    order: rows whose ``event`` is "catalog.upsert" (``payload`` the item row as JSON, checked
    again like a catalog file row) or "catalog.delete". A log without a ``payload`` column (written
    before live catalog changes existed) has none."""
    path = Path(path)
    conn = _connect(path)
    try:
        try:
            if "payload" not in {r[1] for r in conn.execute("PRAGMA table_info(events)")}:
                return []
            rows = conn.execute("SELECT seq, event, item_id, payload FROM events WHERE seq <= ? AND payload IS NOT NULL "
                                "ORDER BY seq", (2**62 if upto_seq is None else int(upto_seq),)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path} is not a Tandem event log ({exc})") from None
    finally:
        conn.close()
    return catalog_edits((event, item_id, payload, f"{path}: the catalog row at sequence {seq}")
                         for seq, event, item_id, payload in rows)


def catalog_edits(records: Iterable[tuple[str, str, str, str]]) -> list[CatalogEdit]:
    """``(event, item_id, payload, where)`` records of live catalog changes (an event log's rows,
    a stream's catalog entries) as the build's edits; a row that does not parse raises ValueError
    naming ``where``."""
    from tandem.index_builder.row_parsing import BadField, parse_item

    out: list[CatalogEdit] = []
    for event, item_id, payload, where in records:
        if event == "catalog.delete":
            out.append(("delete", str(item_id), None))
        elif event == "catalog.upsert":
            try:
                item = parse_item(json.loads(payload))
            except (BadField, json.JSONDecodeError, TypeError) as exc:
                raise ValueError(f"{where} cannot be read ({exc}); see `tandem events check`") from None
            out.append(("upsert", item.item_id, item))
    return out


def apply_catalog_edits(items: list[Item], edits: Iterable[CatalogEdit]) -> list[Item]:
    """Catalog file rows with the live changes applied in order: an upsert replaces the row of its
    id (in place) or is appended, a delete removes the row."""
    by_id = {item.item_id: item for item in items}
    for kind, item_id, item in edits:
        if kind == "delete":
            by_id.pop(item_id, None)
        else:
            assert item is not None
            by_id[item_id] = item
    return list(by_id.values())
