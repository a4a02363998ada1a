"""Several writers on one event log (``tandem serve --processes N``): each process's engines get
every logged event exactly once, in sequence order (the order a replay gives), whoever logged it,
across bundle swaps. Two EventLog/BundleManager pairs on one file stand for two processes (SQLite
sees two connections either way); the multi-process checks are in tests/server/test_event_log_shared.py
and tests/e2e/test_processes.py."""

import threading
import time

import pytest

from tandem.retrieval.data import Event
from tandem.server.bundle_manager import BundleManager
from tandem.server.event_log import EventLog
from tandem.server.log_tailer import LogTailer
from tests.server.fake_engine import load_fake_engine, write_fake_bundle

BUILT_AT = 1_700_000_000
SHOP = {"alice": ["i03"], "bob": ["i10", "i11"]}


class Member:
    """One process's event log, bundle manager and tailer."""

    def __init__(self, root, log_path, interval_s=0.005):
        self.log = EventLog(log_path, shared=True)
        self.manager = BundleManager(root, load_fake_engine, self.log)
        self.tailer = self.manager.tailer = LogTailer(self.log, self.manager, interval_s)
        assert self.manager.reload() == (True, "")

    def close(self):
        self.tailer.stop()
        self.log.close()


@pytest.fixture
def members(tmp_path):
    root, log_path = tmp_path / "bundles", tmp_path / "events.sqlite3"
    write_fake_bundle(root, version="v1", built_at=BUILT_AT, event_log={"seq": 0})
    made = []

    def make():
        made.append(Member(root, log_path))
        return made[-1]

    yield make
    for m in made:
        m.close()


def logged(log: EventLog) -> list[Event]:
    return list(log.iter_events())


def applied_in_log_order(member: Member) -> bool:
    """The engine's recorded events are the log's, in sequence order, each once."""
    return member.manager.engine.recorded == logged(member.log)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_an_event_logged_by_one_process_reaches_the_other_and_own_events_apply_once(members):
    a, b = members(), members()
    seen = []
    b.tailer.on_tailed = seen.append  # the server counts them in tandem_events_tailed_total
    a.manager.record([Event("zoe", "i01", BUILT_AT), Event("zoe", "i02", BUILT_AT)])
    assert b.manager.engine.histories.get("zoe") is None  # nobody tails yet
    with b.manager.ingest_lock:
        assert b.tailer.advance() == 2
    assert b.manager.engine.histories["zoe"] == ["i01", "i02"]
    # b's own batch first applies what a logged before it, then its own events, each once
    a.manager.record([Event("zoe", "i04", BUILT_AT)])
    seq, applied, dup = b.manager.record([Event("zoe", "i05", BUILT_AT)])
    assert (seq, applied, dup) == (4, 1, 0) and b.tailer.position == 4
    assert b.tailer.tailed == 3 and seen == [2, 1]  # the other process's events only
    assert b.manager.engine.histories["zoe"] == ["i01", "i02", "i04", "i05"]
    # a has not tailed b's event yet; its tailer thread brings it, once
    assert a.manager.engine.histories["zoe"] == ["i01", "i02", "i04"]
    a.tailer.start()
    assert wait_for(lambda: a.tailer.position == 4)
    assert a.manager.engine.histories["zoe"] == ["i01", "i02", "i04", "i05"]
    assert applied_in_log_order(a) and applied_in_log_order(b)
    # a duplicate event id logged by the other process is acknowledged, neither logged nor applied
    assert a.manager.record([Event("yan", "i06", BUILT_AT)], ["id-1"])[1:] == (1, 0)
    assert b.manager.record([Event("yan", "i06", BUILT_AT)], ["id-1"])[1:] == (0, 1)
    assert wait_for(lambda: a.tailer.position == 5)
    assert applied_in_log_order(a) and applied_in_log_order(b)


def test_concurrent_writers_and_a_swap_give_every_engine_the_log_in_order(members, tmp_path):
    """Both processes record from 2 threads each while one swaps bundles: afterwards each serving
    engine holds exactly the log's events, in sequence order (the bundle's own users aside)."""
    a, b = members(), members()
    a.tailer.start()
    b.tailer.start()
    stop = threading.Event()
    errors = []

    def writer(member, name):
        n = 0
        while not stop.is_set() and n < 400:
            try:
                member.manager.record([Event(f"{name}-{n % 7}", f"i{n % 20:02d}", BUILT_AT + n)])
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
                return
            n += 1

    threads = [threading.Thread(target=writer, args=(m, f"{tag}{k}")) for m, tag in ((a, "a"), (b, "b"))
               for k in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    write_fake_bundle(tmp_path / "bundles", version="v2", built_at=BUILT_AT, event_log={"seq": 0})
    assert b.manager.reload() == (True, "")  # the watcher's call, made here at a known moment
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(30)
    assert not errors
    end = a.log.position()
    assert end > 50 and b.log.position() == end
    assert wait_for(lambda: a.tailer.position == end and b.tailer.position == end)
    assert b.manager.engine.version == "v2"
    for m in (a, b):
        assert applied_in_log_order(m), m.manager.engine.version
        assert {u: h for u, h in m.manager.engine.histories.items() if u in SHOP} == SHOP


def test_a_tail_interval_must_be_positive(members):
    a = members()
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        LogTailer(a.log, a.manager, 0)


def test_a_swap_to_a_bundle_that_includes_part_of_the_log_replays_the_rest_once_with_the_tailer(members, tmp_path):
    """The new bundle was built from the log's first 3 events (its manifest's event_log mark):
    after b swaps to it, b's engine holds exactly the later events, in order, whichever process
    logged them and whether they came before the swap (replay) or after it (tailer, own)."""
    from tandem.index_builder.event_log_reader import event_log_mark

    a, b = members(), members()
    b.tailer.start()
    a.manager.record([Event("zoe", "i01", BUILT_AT), Event("zoe", "i02", BUILT_AT)])
    b.manager.record([Event("yan", "i05", BUILT_AT)])
    mark = event_log_mark(a.log.path)
    assert mark["seq"] == 3
    a.manager.record([Event("zoe", "i03", BUILT_AT)])  # logged after the build read the log
    write_fake_bundle(tmp_path / "bundles", version="v2", built_at=BUILT_AT,
                      histories={**SHOP, "zoe": ["i01", "i02"], "yan": ["i05"]}, event_log=mark)
    assert b.manager.reload() == (True, "") and b.manager.engine.version == "v2"
    a.manager.record([Event("zoe", "i04", BUILT_AT)])
    b.manager.record([Event("yan", "i06", BUILT_AT)])
    assert wait_for(lambda: b.tailer.position == 6)
    assert b.manager.engine.recorded == logged(b.log)[3:]
    assert b.manager.engine.histories == {**SHOP, "zoe": ["i01", "i02", "i03", "i04"], "yan": ["i05", "i06"]}
