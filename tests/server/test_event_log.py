import pytest

from index_builder.event_log_reader import read_event_log
from retrieval.data import Event
from server.event_log import EventLog


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


def test_reader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="--events-log"):
        list(read_event_log(tmp_path / "missing.sqlite3"))
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"not a database at all" * 10)
    with pytest.raises(ValueError, match="is not a Tandem event log"):
        list(read_event_log(bad))
