"""A damaged event log is never served silently: garbage in the file, a truncated file, garbage in
the WAL after kill -9, rows gone under a running server; and `tandem events check|recover`."""

import json
import os
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from tandem.retrieval.data import Event
from tandem.server.bundle_manager import BundleManager
from tandem.server.cli import main
from tandem.server.event_log import EventLog, EventLogDamaged, inspect_log
from tandem.server.event_salvage import recover_log
from tests.conftest import ROOT
from tests.server.fake_engine import load_fake_engine, write_fake_bundle


def _events(n, start=0):
    return [Event(f"u{(start + k) % 97}", f"i{(start + k) % 50:02d}", 1_000 + start + k, "view", None)
            for k in range(n)]


def _write_log(path, batches=60, size=100):
    log = EventLog(path)
    for b in range(batches):
        log.append(_events(size, b * size))
    log.close()  # checkpointed: everything is in the main file
    return batches * size


def _rows(path):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {r[0]: r[1:] for r in conn.execute("SELECT seq, user_id, item_id, ts, event FROM events")}
    finally:
        conn.close()


def _leaf_page_at_middle(path):
    """The offset of the middle table-leaf page of the file (a page holding events rows)."""
    data = path.read_bytes()
    leaves = [at for at in range(4096, len(data), 4096) if data[at] == 0x0D]
    return leaves[len(leaves) // 2]


def _garble(path, at, size=4096):
    with open(path, "r+b") as f:
        f.seek(at)
        f.write(os.urandom(size))


def test_garbage_in_the_middle_refuses_to_open_and_recover_salvages_the_rest(tmp_path):
    path = tmp_path / "events.sqlite3"
    total = _write_log(path)
    original = _rows(path)
    _garble(path, _leaf_page_at_middle(path))
    with pytest.raises(EventLogDamaged, match=f"event log {path} is damaged.*tandem events recover"):
        EventLog(path)
    report = recover_log(path, tmp_path / "new.sqlite3")
    recovered = _rows(tmp_path / "new.sqlite3")
    assert report["salvaged"] == len(recovered) and 0 < report["lost"] < total // 2
    assert report["salvaged"] + report["lost"] == total == report["last_seq"]
    assert all(original[s] == row for s, row in recovered.items())  # nothing salvaged is altered
    lost = {s for a, b in report["lost_ranges"] for s in range(a, b + 1)}
    assert lost == set(range(1, total + 1)) - set(recovered)  # exactly the missing sequence numbers
    log = EventLog(tmp_path / "new.sqlite3")  # the new log is sound and never reuses a lost number
    assert log.position() == total and log.append(_events(1)) == total + 1
    assert sum(1 for _ in log.iter_events()) == report["salvaged"] + 1
    log.close()
    assert inspect_log(tmp_path / "new.sqlite3")["problems"] == []


def test_truncated_or_garbage_file_is_refused(tmp_path):
    path = tmp_path / "events.sqlite3"
    _write_log(path, batches=20)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    with pytest.raises(EventLogDamaged, match="is damaged"):
        EventLog(path)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"not a database " * 500)
    with pytest.raises(EventLogDamaged, match="junk.sqlite3 is damaged"):
        EventLog(junk)


_KILLED_WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from tandem.retrieval.data import Event
    from tandem.server.event_log import EventLog
    log = EventLog({path!r})
    for b in range(76):
        log.append([Event(f"u{{b}}", f"i{{k}}", 1000 + b, "view") for k in range(16)])
    os._exit(0)  # like kill -9: no checkpoint, the events live in the WAL only
""")


def test_garbage_in_the_wal_after_kill_9_is_detected_and_recovered(tmp_path):
    path = tmp_path / "events.sqlite3"
    subprocess.run([sys.executable, "-c", _KILLED_WRITER.format(root=str(ROOT), path=str(path))], check=True)
    wal = tmp_path / "events.sqlite3-wal"
    assert wal.stat().st_size > 100_000
    _garble(wal, wal.stat().st_size // 3)
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    seen = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    conn.close()
    assert seen < 1216  # what SQLite alone shows: the frames after the garbage are dropped silently
    with pytest.raises(EventLogDamaged, match=f"up to sequence 1216 were acknowledged but the log ends at {seen}"):
        EventLog(path)
    assert wal.stat().st_size > 100_000  # the check left the WAL for recovery
    report = recover_log(path, tmp_path / "new.sqlite3")
    assert report["acked"] == 1216 == report["last_seq"] and report["salvaged"] > seen
    assert report["salvaged"] + report["lost"] == 1216


def test_rows_missing_under_a_running_server_refuse_the_replay(tmp_path):
    write_fake_bundle(tmp_path)
    log = EventLog(tmp_path / "events.sqlite3")
    log.append(_events(50))
    conn = sqlite3.connect(tmp_path / "events.sqlite3")
    conn.execute("DELETE FROM events WHERE seq BETWEEN 10 AND 19")  # what a damaged page does, without an error
    conn.commit()
    conn.close()
    manager = BundleManager(tmp_path, load_fake_engine, log)
    swapped, error = manager.reload()
    assert not swapped and manager.engine is None
    assert "40 events are readable between sequence numbers 1 and 50, 50 were acknowledged" in error
    log.close()


def test_events_check_and_recover_commands(tmp_path, capsys):
    path = tmp_path / "events.sqlite3"
    total = _write_log(path, batches=30)
    assert main(["events", "check", str(path)]) == 0
    assert f"ok, {total} events" in capsys.readouterr().out
    _garble(path, _leaf_page_at_middle(path))
    assert main(["events", "check", str(path), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"] and report["problems"] and report["expected"] == total
    assert main(["events", "recover", str(path), "--out", str(tmp_path / "new.sqlite3")]) == 0
    out = capsys.readouterr().out
    assert f"of sequence 1..{total}" in out and "lost " in out and "sequence numbers" in out
    assert main(["events", "recover", str(path), "--out", str(tmp_path / "new.sqlite3")]) == 2  # never overwrites
    assert main(["events", "check", str(tmp_path / "new.sqlite3")]) == 0


@pytest.mark.slow
def test_serve_on_a_damaged_log_exits_2_naming_the_file(tmp_path):
    write_fake_bundle(tmp_path)
    path = tmp_path / "events.sqlite3"
    _write_log(path, batches=20)
    _garble(path, _leaf_page_at_middle(path))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "tests.e2e.fake_serve", "--bundles", str(tmp_path), "--port", "0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"tandem serve: error: event log {path} is damaged" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_restored_backup_is_refused_until_recovered_with_the_gap_recorded(tmp_path):
    path = tmp_path / "events.sqlite3"
    log = EventLog(path)
    log.append(_events(100))
    src, dst = sqlite3.connect(path), sqlite3.connect(tmp_path / "backup.sqlite3")
    src.backup(dst)
    src.close()
    dst.close()
    log.append(_events(50, 100))
    log.close()
    os.replace(tmp_path / "backup.sqlite3", path)  # the -acked file still says 150
    with pytest.raises(EventLogDamaged, match="up to sequence 150 were acknowledged but the log ends at 100"):
        EventLog(path)
    report = recover_log(path, tmp_path / "new.sqlite3")
    assert (report["salvaged"], report["lost"], report["lost_ranges"]) == (100, 50, [[101, 150]])
    log = EventLog(tmp_path / "new.sqlite3")  # the lost tail is recorded: the new log opens and goes on at 151
    assert log.position() == 150 and log.append(_events(1)) == 151
    log.close()
    assert inspect_log(tmp_path / "new.sqlite3")["problems"] == []
