"""Live catalog changes in the event log: one sequence with the events, kept apart from them by
every event reader, added to logs written before they existed, replayed in order."""

import sqlite3

from tandem.index_builder.event_log_reader import apply_catalog_edits, read_catalog_changes, read_event_log
from tandem.ranking.live_catalog import CatalogChange
from tandem.retrieval.data import Event, Item
from tandem.server.event_log import CatalogRow, EventLog
from tandem.server.live_catalog import catalog_rows, change_from_row, replay_entries

ITEM = Item("n1", "Nebula teapot", "glass", "Home > Kitchen", "Nebula", 12.5, ("tea", "glass"), False)


def test_changes_share_the_sequence_and_stay_out_of_event_readers(tmp_path):
    path = tmp_path / "events.sqlite3"
    log = EventLog(path)
    log.append([Event("u1", "a", 100)])
    assert log.append_catalog(catalog_rows([CatalogChange.upsert(ITEM), CatalogChange.delete("a")])) == 3
    log.append([Event("u1", "n1", 200)])
    assert [e.item_id for e in log.iter_events()] == ["a", "n1"]
    entries = list(log.iter_entries())
    assert [type(e).__name__ for e in entries] == ["Event", "CatalogRow", "CatalogRow", "Event"]
    assert change_from_row(entries[1]) == CatalogChange.upsert(ITEM)  # the row round-trips exactly
    assert change_from_row(entries[2]) == CatalogChange.delete("a")
    # a time-bounded replay (old manifests) still gets every catalog change, whatever its time
    assert [type(e).__name__ for e in log.iter_entries(since_ts=150, received_since=1e12)] == \
        ["CatalogRow", "CatalogRow", "Event"]
    log.close()
    assert [e.item_id for e in read_event_log(path)] == ["a", "n1"]  # the build's event reader
    edits = read_catalog_changes(path)
    assert edits == [("upsert", "n1", ITEM), ("delete", "a", None)]
    assert read_catalog_changes(path, upto_seq=2) == [("upsert", "n1", ITEM)]
    rows = apply_catalog_edits([Item("a", "A"), Item("b", "B")], edits)
    assert [r.item_id for r in rows] == ["b", "n1"]


def test_a_log_from_before_live_changes_gains_the_column(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript("""CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,
        item_id TEXT NOT NULL, ts INTEGER NOT NULL, event TEXT NOT NULL, value REAL, received_at REAL NOT NULL);
        INSERT INTO events (user_id, item_id, ts, event, value, received_at) VALUES ('u', 'i', 1, 'view', NULL, 1);""")
    conn.commit()
    conn.close()
    assert read_catalog_changes(path) == []  # the build reads an old log as before
    log = EventLog(path)
    log.append_catalog(catalog_rows([CatalogChange.delete("i")]))
    assert [type(e).__name__ for e in log.iter_entries()] == ["Event", "CatalogRow"]
    log.close()


class _Engine:
    """Records what a replay does, in order (a stand-in for the pipeline's two calls)."""

    def __init__(self, trail):
        self.trail = trail

    def record_events(self, events):
        self.trail.append(("events", [e.item_id for e in events]))
        return len(events)

    def apply_catalog(self, changes):
        self.trail.append(("catalog", [c.item_id for c in changes]))
        return _Engine(self.trail), {}


def test_replay_applies_events_and_changes_in_log_order():
    trail = []
    entries = [Event("u", "a", 1), Event("u", "b", 2), *catalog_rows([CatalogChange.upsert(ITEM),
                                                                       CatalogChange.delete("a")]),
               Event("u", "n1", 3), CatalogRow("catalog.delete", "n1", "{}")]
    engine, applied = replay_entries(_Engine(trail), entries, batch=10)
    assert applied == 3 and isinstance(engine, _Engine)
    assert trail == [("events", ["a", "b"]), ("catalog", ["n1", "a"]), ("events", ["n1"]), ("catalog", ["n1"])]
