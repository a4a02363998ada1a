"""One event log, several writer processes (``tandem serve --processes N``): sequence numbers,
``event_id`` deduplication, the ``<log>-acked`` side file and the open-time checks stay right."""

import subprocess
import sys
import time

from tandem.retrieval.data import Event
from tandem.server.event_log import EventLog, inspect_log, read_acked
from tests.conftest import ROOT

WRITER = """
import sys
from tandem.retrieval.data import Event
from tandem.server.event_log import EventLog
path, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
log = EventLog(path, shared=True)
for k in range(n):
    # ids "shared-K" are sent by every writer: each is logged once, by whichever commits first
    log.append([Event(name, "i01", k), Event(name, "i02", k)], [f"shared-{k}", f"{name}-{k}"])
log.close()
"""


def test_an_older_commits_late_side_file_write_never_lowers_it(tmp_path):
    """Process A commits event 1; process B commits 2..4 and writes 4 to the side file; A's write
    of its own position (1) arrives last. The side file must keep 4: a lower one would hide the
    loss of acknowledged events 2..4. (A's late write is made directly: the interleaving of two
    processes' writes after their commits cannot be forced otherwise.)"""
    path = tmp_path / "ev.sqlite3"
    a, b = EventLog(path, shared=True), EventLog(path, shared=True)
    assert a.append([Event("u", "i1", 1)]) == 1
    assert b.append([Event("u", "i2", 2), Event("u", "i3", 3), Event("u", "i4", 4)]) == 4
    a._write_acked(1)  # the late write of the older commit
    assert read_acked(path) == 4
    assert a.position() == 4  # a shared log's position is the log's, whoever appended
    a.close()
    b.close()
    assert not inspect_log(path)["problems"]


def test_a_log_of_one_process_still_has_its_side_file_rewritten_as_before(tmp_path):
    path = tmp_path / "ev.sqlite3"
    log = EventLog(path)
    log.append([Event("u", "i1", 1), Event("u", "i2", 2)])
    log._write_acked(1)  # one writer: the side file holds what it was last told
    assert read_acked(path) == 1
    log.close()


def test_two_writer_processes_with_shared_event_ids_while_a_third_checks_the_log(tmp_path):
    path = tmp_path / "ev.sqlite3"
    EventLog(path).close()
    n = 300
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name, str(n)], cwd=ROOT)
             for name in ("p", "q")]
    checks = problems = 0
    while any(p.poll() is None for p in procs):  # the open-time checks, read while both append
        found = inspect_log(path)
        problems += bool(found["problems"])
        assert not found["problems"], found["problems"]
        checks += 1
        time.sleep(0.005)
    assert [p.wait(60) for p in procs] == [0, 0]
    assert checks > 5
    found = inspect_log(path)
    assert not found["problems"]
    # every shared id once, every own id once; sequence numbers with no gap
    assert found["rows"] == found["last_seq"] == 3 * n
    assert read_acked(path) == 3 * n
    log = EventLog(path)  # the open-time checks pass
    assert len(list(log.iter_events())) == 3 * n
    log.close()
