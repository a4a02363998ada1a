import sqlite3

import pytest

from tandem.index_builder.event_log_reader import FINGERPRINT_COLUMNS, event_log_mark, read_event_log
from tandem.retrieval.data import Event
from tandem.server import event_log as server_event_log
from tandem.server.event_log import EventLog


def test_append_iterate_and_builder_reader(tmp_path):
    log = EventLog(tmp_path / "ev.sqlite3")
    assert log.position() == 0
    assert log.append([Event("u", "a", 10), Event("u", "b", 20, "view", 1.5)]) == 2
    assert log.append([Event("v", "c", 5)]) == 3
    assert [e.item_id for e in log.iter_events()] == ["a", "b", "c"]
    assert [e.item_id for e in log.iter_events(since_ts=10)] == ["a", "b"]
    log.close()
    assert list(read_event_log(tmp_path / "ev.sqlite3")) == [
        Event("u", "a", 10), Event("u", "b", 20, "view", 1.5), Event("v", "c", 5)]


def test_the_builders_mark_is_the_newest_event_and_the_log_recognises_it(tmp_path):
    path = tmp_path / "ev.sqlite3"
    log = EventLog(path)
    assert event_log_mark(path) == {"seq": 0, "last_event": None, "path": str(path)}
    log.append([Event("u", "a", 10), Event("v", "b", 20, "click")])
    mark = event_log_mark(path)
    log.append([Event("w", "c", 30)])  # the server logs on while the build reads
    assert mark["seq"] == 2 and mark["path"] == str(path)
    assert {k: v for k, v in mark["last_event"].items() if k != "received_at"} == {
        "user_id": "v", "item_id": "b", "ts": 20, "event": "click"}
    assert list(read_event_log(path, upto_seq=mark["seq"])) == [Event("u", "a", 10), Event("v", "b", 20, "click")]
    assert log.holds(2, mark["last_event"]) and not log.holds(1, mark["last_event"])
    assert not log.holds(4, mark["last_event"]) and not log.holds(2, None)
    assert not log.holds(2, {**mark["last_event"], "received_at": mark["last_event"]["received_at"] + 1e-6})
    # the builder cannot import the server; both name the same columns
    assert FINGERPRINT_COLUMNS == server_event_log.FINGERPRINT_COLUMNS
    log.close()


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--events-log"):
        list(read_event_log(tmp_path / "missing.sqlite3"))
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"not a database at all" * 10)
    with pytest.raises(ValueError, match="is not a Tandem event log"):
        list(read_event_log(bad))


def test_a_hash_or_question_mark_in_the_path_opens_that_file_and_no_other(tmp_path):
    folder = tmp_path / "a#b?c%20d"
    log = EventLog(folder / "ev#1.sqlite3")
    log.append([Event("u", "a", 10)])
    log.close()
    assert list(read_event_log(folder / "ev#1.sqlite3")) == [Event("u", "a", 10)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a#b?c%20d"]  # no stray "a" beside it
    assert {p.name for p in folder.iterdir()} <= {f"ev#1.sqlite3{s}" for s in ("", "-acked", "-wal", "-shm")}


def test_an_old_log_gains_the_event_id_column_and_keeps_its_rows(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, item_id TEXT NOT NULL,
                             ts INTEGER NOT NULL, event TEXT NOT NULL, value REAL, received_at REAL NOT NULL);
        CREATE INDEX events_ts ON events (ts);
        INSERT INTO events (user_id, item_id, ts, event, value, received_at) VALUES ('u', 'a', 10, 'view', NULL, 1);
        INSERT INTO events (user_id, item_id, ts, event, value, received_at) VALUES ('u', 'b', 11, 'rate', 4, 1);
    """)
    conn.commit()
    conn.close()
    log = EventLog(path)
    assert log.position() == 2
    assert log.append_unique([Event("v", "c", 12), Event("v", "d", 13), Event("v", "c", 12)],
                             ["k1", None, "k1"]) == (4, [0, 1])
    assert log.append_unique([Event("v", "c", 12)], ["k1"]) == (4, [])  # already logged: not again
    log.close()
    assert [e.item_id for e in read_event_log(path)] == ["a", "b", "c", "d"]
    conn = sqlite3.connect(path)
    assert [r[0] for r in conn.execute("SELECT event_id FROM events ORDER BY seq")] == [None, None, "k1", None]
    with pytest.raises(sqlite3.IntegrityError):  # the unique index holds even against a direct insert
        conn.execute("INSERT INTO events (user_id, item_id, ts, event, received_at, event_id) "
                     "VALUES ('x', 'y', 1, 'view', 1, 'k1')")
    conn.close()
