"""Hot swap through CURRENT under a bounded load loop (zero failed requests, no acknowledged event
lost between the two engines), refused bundles, replay of the event log on load."""

import sqlite3
import threading
import time

import grpc
import pytest

from tandem.index_builder.event_log_reader import event_log_mark
from tandem.retrieval.bundle import set_current
from tandem.retrieval.data import Event
from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.bundle_manager import BundleManager
from tandem.server.event_log import EventLog
from tandem.server.event_salvage import recover_log
from tandem.server.service import ServerConfig, TandemServer
from tests.server.fake_engine import load_fake_engine, write_fake_bundle


@pytest.fixture
def serve(tmp_path):
    started = []

    def start(root, **config):
        server = TandemServer(ServerConfig(bundles=root, port=0, watch_interval_s=0.1, grace_s=2, workers=8,
                                           **config), load_fake_engine)
        port = server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return server, pb_grpc.TandemStub(channel), pb_grpc.TandemAdminStub(channel)

    yield start
    for server, channel in started:
        channel.close()
        server.stop(0)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_swap_under_load_fails_nothing_and_loses_no_event(tmp_path, serve):
    root = tmp_path / "bundles"
    first = write_fake_bundle(root, version="v1")
    server, t, admin = serve(root)
    failures, versions, answered, acked = [], set(), [0], []
    stop = threading.Event()
    t_end = time.monotonic() + 8  # hard bound on the loop, whatever happens

    def reader(n):
        while not stop.is_set() and answered[0] < 4000 and time.monotonic() < t_end:
            try:
                if n % 2:
                    r = t.Recommend(pb.RecommendRequest(user_id="alice", k=5), timeout=5)
                else:
                    r = t.Search(pb.SearchRequest(query="red", k=3), timeout=5)
                versions.add(r.bundle_version)
                answered[0] += 1
            except grpc.RpcError as exc:
                failures.append(exc.code().name)

    def writer():
        n = 0
        while not stop.is_set() and n < 3000 and time.monotonic() < t_end:
            item = f"i{n % 20:02d}"
            try:
                t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="w", item_id=item)]), timeout=5)
                acked.append(item)
            except grpc.RpcError as exc:
                failures.append(exc.code().name)
            n += 1

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(3)] + [threading.Thread(target=writer)]
    for th in threads:
        th.start()
    time.sleep(0.5)
    second = write_fake_bundle(root, version="v2", histories={"alice": ["i15"]})  # flips CURRENT
    assert wait_for(lambda: "v2" in versions)
    time.sleep(0.5)
    stop.set()
    for th in threads:
        th.join(10)
    assert failures == [] and answered[0] > 20 and len(acked) > 5
    assert versions == {first.name, second.name}
    engine = server.manager.engine
    assert engine.version == "v2" and server.manager.last_error == ""
    # every acknowledged event reached the new engine exactly once: the replay before the swap plus
    # the catch-up under the ingest lock cover whatever arrived while v2 was loading
    assert engine.histories["w"] == acked
    assert [it.item_id for it in t.Recommend(pb.RecommendRequest(user_id="alice", k=1)).items] == ["i16"]


def test_corrupted_bundle_refused_old_keeps_serving(tmp_path, serve):
    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v1")
    server, t, admin = serve(root)
    bad = write_fake_bundle(root, version="v2", make_current=False)
    (bad / "catalog.json").write_text('{"items": [], "histories": {}}')
    set_current(root, "v2")  # the watcher tries it and refuses it
    assert wait_for(lambda: server.manager.last_error != "")
    status = admin.GetStatus(pb.GetStatusRequest())
    assert "checksum mismatch for catalog.json" in status.last_reload_error and status.bundle_version == "v1"
    assert t.Search(pb.SearchRequest(query="red", k=2)).bundle_version == "v1"
    r = admin.ReloadBundle(pb.ReloadBundleRequest(version="v2"))
    assert not r.swapped and r.version == "v1" and "checksum mismatch" in r.error
    with pytest.raises(grpc.RpcError) as err:  # no such folder: refused before anything is tried
        admin.ReloadBundle(pb.ReloadBundleRequest(version="v9"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'v9' is not a bundle folder" in err.value.details()
    # a good bundle afterwards is taken, and the error clears
    write_fake_bundle(root, version="v3")
    assert wait_for(lambda: server.manager.engine.version == "v3")
    assert admin.GetStatus(pb.GetStatusRequest()).last_reload_error == ""
    r = admin.ReloadBundle(pb.ReloadBundleRequest(version="v1"))
    assert r.swapped and r.version == "v1" and t.Ping(pb.PingRequest()).payload == b""
    assert server.metrics.refused._value.get() == 2 and server.metrics.swaps._value.get() == 3


def test_any_loader_failure_refuses_and_the_watcher_survives(tmp_path):
    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v1")
    calls = []

    def loader(folder):
        calls.append(folder.name)
        if folder.name == "v2":
            raise TypeError("weights do not fit this model")
        return load_fake_engine(folder)

    manager = BundleManager(root, loader, None)
    assert manager.reload() == (True, "")
    manager.watch(0.05)
    try:
        write_fake_bundle(root, version="v2")
        assert wait_for(lambda: manager.last_error)
        assert manager.last_error == "bundle v2 refused: TypeError: weights do not fit this model"
        assert manager.engine.version == "v1"
        write_fake_bundle(root, version="v3")
        assert wait_for(lambda: manager.engine.version == "v3")
        assert calls == ["v1", "v2", "v3"]  # v2 was tried once, not on every poll
    finally:
        manager.stop()


def test_a_bundle_from_before_the_manifest_recorded_the_log_replays_by_built_at_and_receive_time(tmp_path):
    root = tmp_path / "bundles"
    log = EventLog(tmp_path / "events.sqlite3")
    log.append([Event("alice", "i09", 1_600_000_000)])  # received before the bundle existed, older than built_at
    log.append([Event("alice", "i12", 1_700_000_500)])  # newer than built_at
    log.close()
    with sqlite3.connect(tmp_path / "events.sqlite3") as conn:  # pretend both arrived long ago
        conn.execute("UPDATE events SET received_at = 0")
    write_fake_bundle(root, built_at=1_700_000_000)
    log = EventLog(tmp_path / "events.sqlite3")
    log.append([Event("alice", "i05", 1_500_000_000)])  # old timestamp, but received after the bundle was made
    manager = BundleManager(root, load_fake_engine, log)
    assert manager.reload() == (True, "")
    assert manager.engine.histories["alice"] == ["i03", "i12", "i05"] and manager.replayed == 2
    seq, applied, _ = manager.record([Event("alice", "i01", 1_800_000_000), Event("alice", "zzz", 1_800_000_000)])
    assert (seq, applied) == (5, 1) and manager.engine.histories["alice"][-1] == "i01"
    log.close()


def test_engine_is_warmed_after_the_replay_and_before_it_serves(tmp_path):
    root = tmp_path / "bundles"
    write_fake_bundle(root, built_at=1_700_000_000)
    log = EventLog(tmp_path / "events.sqlite3")
    log.append([Event("alice", "i12", 1_700_000_500)])
    seen = []

    def loader(folder):
        engine = load_fake_engine(folder)

        def warm(users):  # what the engine holds when it is asked to warm
            seen.append((users, list(engine.histories["alice"])))
            return 1

        engine.warm = warm
        return engine

    manager = BundleManager(root, loader, log, warm_users=7)
    assert manager.reload() == (True, "")
    assert seen == [(7, ["i03", "i12"])]  # the replayed event was in before warming
    # without warm_users (and for engines without warm) nothing is called
    write_fake_bundle(root, version="v2", built_at=1_700_000_000)
    assert BundleManager(root, loader, log).reload() == (True, "") and len(seen) == 1
    log.close()


def test_every_request_path_is_computed_before_the_engine_serves(tmp_path):
    """Ready means ready: a loaded engine answers one Search, one Recommend (cold, and with a
    history) and one SimilarItems on a real item before it takes traffic, at start and on a hot
    swap; an engine that fails them is refused and the old one serves on."""
    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v1")
    calls = []
    managers = []

    def loader(folder):
        engine = load_fake_engine(folder)
        def spy(name):
            real = getattr(engine, name)

            def call(request):
                calls.append((engine.version, name, managers[0].engine is engine, request))
                return real(request)

            return call

        for name in ("search", "recommend", "similar_items"):
            setattr(engine, name, spy(name))
        return engine

    managers.append(BundleManager(root, loader, None))
    manager = managers[0]
    assert manager.reload() == (True, "")
    assert {name for _, name, _, _ in calls} == {"search", "recommend", "similar_items"}
    assert not any(serving for _, _, serving, _ in calls)
    by_name = {name: request for _, name, _, request in calls}
    assert by_name["search"].query == "item 0 red"  # the first item's title: a query that finds something
    assert by_name["similar_items"].item_id == "i00"
    assert any(name == "recommend" and req.context for _, name, _, req in calls)  # the history path too
    assert manager.engine.recorded == [] and manager.engine.histories == {"alice": ["i03"], "bob": ["i10", "i11"]}
    calls.clear()
    write_fake_bundle(root, version="v2")
    assert manager.reload() == (True, "")
    assert calls and all(version == "v2" and not serving for version, _, serving, _ in calls)

    def broken(folder):  # loads, but cannot answer a Search
        engine = load_fake_engine(folder)
        engine.search = lambda request: (_ for _ in ()).throw(RuntimeError("no query encoder"))
        return engine

    manager.loader = broken
    write_fake_bundle(root, version="v3")
    swapped, error = manager.reload()
    assert not swapped and error == "bundle v3 refused: RuntimeError: no query encoder"
    assert manager.engine.version == "v2"


BUILT_AT = 1_700_000_000
#: live events older than the newest event of the shop's data (which sets built_at): e.g. a data
#: export taken after these events happened, or a client whose clock is behind
BEFORE_BUILT_AT = BUILT_AT - 3600


def _record(t, user, items, ts=BEFORE_BUILT_AT):
    return t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=i, ts=ts) for i in items]))


def test_a_swap_to_a_bundle_built_without_the_log_keeps_live_only_users_personalised(tmp_path, serve):
    """Issue #14: a user whose only history is live events must not become cold-start when the
    server swaps to a bundle built without --events-log (which includes no logged event)."""
    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v1", built_at=BUILT_AT, event_log={"seq": 0})
    server, t, _ = serve(root)
    assert t.Recommend(pb.RecommendRequest(user_id="zoe", k=3)).cold_start
    _record(t, "zoe", ["i07", "i08"])
    assert not t.Recommend(pb.RecommendRequest(user_id="zoe", k=3)).cold_start
    time.sleep(1.1)  # the new bundle is created after the events were received (created_at has seconds)
    write_fake_bundle(root, version="v2", built_at=BUILT_AT, event_log={"seq": 0})
    assert wait_for(lambda: server.manager.engine.version == "v2")
    r = t.Recommend(pb.RecommendRequest(user_id="zoe", k=3))
    assert r.bundle_version == "v2" and not r.cold_start and ids(r) == ["i09", "i10", "i11"]
    assert server.manager.engine.histories["zoe"] == ["i07", "i08"] and server.manager.replayed == 2


def ids(resp):
    return [it.item_id for it in resp.items]


def test_a_bundle_built_with_the_log_gets_each_later_event_once_at_swap_and_restart(tmp_path, serve):
    """The manifest's event_log.seq is the newest logged event the bundle includes: loading it
    (hot swap, then a restart) replays exactly the later events, so every event is in the
    history once (the bundle's own copy of the earlier ones, the log's of the later ones)."""
    root, log_path = tmp_path / "bundles", tmp_path / "bundles" / "events.sqlite3"
    write_fake_bundle(root, version="v1", built_at=BUILT_AT, event_log={"seq": 0})
    server, t, _ = serve(root)
    _record(t, "zoe", ["i01", "i02"], ts=BUILT_AT - 10)
    _record(t, "yan", ["i05"], ts=BUILT_AT)
    mark = event_log_mark(log_path)  # what `tandem build --events-log` records, read while serving
    assert mark["seq"] == 3 and mark["last_event"]["user_id"] == "yan" and mark["last_event"]["ts"] == BUILT_AT
    _record(t, "zoe", ["i03"], ts=BUILT_AT + 10)  # logged after the build read the log
    _record(t, "xia", ["i04"], ts=BUILT_AT - 20)
    # the new bundle holds what the build read: the shop's histories plus the log's first 3 events
    histories = {"alice": ["i03"], "zoe": ["i01", "i02"], "yan": ["i05"]}
    write_fake_bundle(root, version="v2", built_at=BUILT_AT, histories=histories, event_log=mark)
    assert wait_for(lambda: server.manager.engine.version == "v2")
    _record(t, "zoe", ["i06"], ts=BUILT_AT + 20)  # after the swap: applied directly
    expected = {"alice": ["i03"], "zoe": ["i01", "i02", "i03", "i06"], "yan": ["i05"], "xia": ["i04"]}
    assert server.manager.engine.histories == expected and server.manager.replayed == 2
    server.stop(0)
    restarted, t2, _ = serve(root)  # the same bundle and log: the events after seq 3, once
    assert restarted.manager.engine.version == "v2" and restarted.manager.replayed == 3
    assert restarted.manager.engine.histories == expected
    assert ids(t2.Recommend(pb.RecommendRequest(user_id="xia", k=1))) == ["i05"]


def test_restart_on_a_bundle_without_the_log_replays_every_event(tmp_path, serve):
    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v1", built_at=BUILT_AT, event_log={"seq": 0})
    server, t, _ = serve(root)
    _record(t, "zoe", ["i07"])
    _record(t, "zoe", ["i09"], ts=BUILT_AT + 5)
    server.stop(0)
    time.sleep(1.1)
    write_fake_bundle(root, version="v2", built_at=BUILT_AT, event_log={"seq": 0})  # built while it was down
    restarted, t2, _ = serve(root)
    assert restarted.manager.engine.version == "v2" and restarted.manager.replayed == 2
    assert restarted.manager.engine.histories["zoe"] == ["i07", "i09"]
    assert not t2.Recommend(pb.RecommendRequest(user_id="zoe", k=1)).cold_start


def test_a_bundle_built_from_another_log_gets_this_whole_log_and_a_recovered_log_counts_as_the_same(tmp_path):
    first = EventLog(tmp_path / "a.sqlite3")
    first.append([Event("zoe", "i01", BUILT_AT), Event("zoe", "i02", BUILT_AT)])
    mark = event_log_mark(first.path)
    first.append([Event("zoe", "i03", BUILT_AT)])
    root = tmp_path / "bundles"
    write_fake_bundle(root, built_at=BUILT_AT, histories={"zoe": ["i01", "i02"]}, event_log=mark)

    def loaded(log):
        manager = BundleManager(root, load_fake_engine, log)
        assert manager.reload() == (True, "")
        return manager.engine.histories["zoe"]

    assert loaded(first) == ["i01", "i02", "i03"]
    first.close()
    recovered = tmp_path / "recovered.sqlite3"  # the same events, the same sequence numbers
    recover_log(first.path, recovered)
    log = EventLog(recovered)
    assert loaded(log) == ["i01", "i02", "i03"]
    log.close()
    # another server's log: the same users and items, logged at other times, none in the bundle
    other = EventLog(tmp_path / "b.sqlite3")
    other.append([Event("zoe", "i01", BUILT_AT), Event("zoe", "i02", BUILT_AT), Event("zoe", "i04", BUILT_AT)])
    assert loaded(other) == ["i01", "i02", "i01", "i02", "i04"]
    other.close()
    # a new, shorter log (the old one was reset): all of it
    reset = EventLog(tmp_path / "c.sqlite3")
    reset.append([Event("zoe", "i05", BUILT_AT)])
    assert loaded(reset) == ["i01", "i02", "i05"]
    reset.close()


def test_a_manifest_with_a_bad_event_log_record_is_refused(tmp_path):
    root = tmp_path / "bundles"
    log = EventLog(tmp_path / "events.sqlite3")
    write_fake_bundle(root, version="v1", event_log={"seq": 0})
    manager = BundleManager(root, load_fake_engine, log)
    assert manager.reload() == (True, "")
    write_fake_bundle(root, version="v2", event_log={"seq": "12"})
    swapped, error = manager.reload()
    assert not swapped and error == ("bundle v2 refused: ValueError: manifest.json of v2: event_log.seq must be a "
                                     "sequence number >= 0, got '12'")
    assert manager.engine.version == "v1"
    log.close()
