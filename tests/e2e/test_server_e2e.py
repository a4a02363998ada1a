"""End to end: a real bundle, `tandem serve` as a subprocess on a loopback port, every RPC,
bad input, hot swap under load, kill -9 durability, SIGTERM drain."""

import json
import signal
import subprocess
import sys
import threading
import time

import grpc
import pytest

from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tests.conftest import ROOT, TINY_CONFIG, Server

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def server(tiny_bundles):
    s = Server(tiny_bundles, "--token", "s3cret")
    s.wait_ready()
    yield s
    s.stop()


AUTH = [("authorization", "Bearer s3cret")]


def stub(addr):
    ch = grpc.insecure_channel(addr)
    return pb_grpc.TandemStub(ch), pb_grpc.TandemAdminStub(ch), ch


def a_user(shop):
    import gzip

    with gzip.open(shop / "events.jsonl.gz", "rt") as f:
        return json.loads(f.readline())["user_id"]


def test_every_rpc_and_realtime_effect(server, tiny_shop):
    t, admin, ch = stub(server.addr)
    user = a_user(tiny_shop)
    r = t.Search(pb.SearchRequest(query="wireless earbuds", k=5, explain=True, request_id="r1"))
    assert len(r.items) == 5 and r.request_id == "r1" and r.items[0].explanation.sources
    before = t.Recommend(pb.RecommendRequest(user_id=user, k=10))
    assert len(before.items) == 10 and not before.cold_start
    first = before.items[0].item_id
    ack = t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=first, event="purchase")]),
                         metadata=AUTH)
    assert ack.accepted == 1 and ack.applied == 1 and ack.last_sequence >= 1
    after = t.Recommend(pb.RecommendRequest(user_id=user, k=10))
    assert first not in [i.item_id for i in after.items]
    cold = t.Recommend(pb.RecommendRequest(user_id="never-seen-user", k=3))
    assert cold.cold_start and len(cold.items) == 3
    sim = t.SimilarItems(pb.SimilarItemsRequest(item_id=first, k=4))
    assert len(sim.items) == 4 and first not in [i.item_id for i in sim.items]
    item = t.GetItem(pb.GetItemRequest(item_id=first))
    assert item.item_id == first and item.title
    streamed = t.StreamEvents(iter([pb.Event(user_id=user, item_id=first, event="view")] * 3), metadata=AUTH)
    assert streamed.accepted == 3
    assert t.Ping(pb.PingRequest(payload=b"x")).payload == b"x"
    st = admin.GetStatus(pb.GetStatusRequest(), metadata=AUTH)
    assert st.items >= 290 and st.event_log_sequence >= 4 and st.bundle_version == before.bundle_version
    ch.close()


@pytest.mark.parametrize(("call", "code", "text"), [
    (lambda t: t.Recommend(pb.RecommendRequest(user_id="u", k=0)), "INVALID_ARGUMENT", "k must be between 1 and 1000"),
    (lambda t: t.Recommend(pb.RecommendRequest(user_id="u", k=1001)), "INVALID_ARGUMENT", "k must be between"),
    (lambda t: t.Search(pb.SearchRequest(query="", k=5)), "INVALID_ARGUMENT", "query must be between 1 and 1000"),
    (lambda t: t.Search(pb.SearchRequest(query="x" * 1001, k=5)), "INVALID_ARGUMENT", "query must be between"),
    (lambda t: t.Recommend(pb.RecommendRequest(user_id="u" * 257, k=5)), "INVALID_ARGUMENT",
     "user_id must be at most 256"),
    (lambda t: t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="u", item_id="i")] * 10001),
                              metadata=AUTH), "INVALID_ARGUMENT", "at most 10000 events"),
    (lambda t: t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="u", item_id="i", event="like")]),
                              metadata=AUTH), "INVALID_ARGUMENT", "events[0].event must be one of"),
    (lambda t: t.SimilarItems(pb.SimilarItemsRequest(item_id="nope", k=3)), "NOT_FOUND", "unknown item_id 'nope'"),
    (lambda t: t.GetItem(pb.GetItemRequest(item_id="nope")), "NOT_FOUND", "unknown item_id"),
    (lambda t: t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="u", item_id="i")])),
     "UNAUTHENTICATED", "bearer token"),
])
def test_bad_input_gets_clear_status(server, call, code, text):
    t, _, ch = stub(server.addr)
    with pytest.raises(grpc.RpcError) as err:
        call(t)
    assert err.value.code().name == code and text in err.value.details()
    assert t.Ping(pb.PingRequest()).payload == b""  # still serving
    ch.close()


def test_search_reranks_the_callers_candidates(server, tiny_shop):
    """The real pipeline behind the real server: only the known given ids come back, in the
    ranker's order, with the caller's list and the sources' own scores in the explanation."""
    t, admin, ch = stub(server.addr)
    found = [it.item_id for it in t.Search(pb.SearchRequest(query="wireless earbuds", k=30)).items]
    others = [it.item_id for it in t.Search(pb.SearchRequest(query="face cream", k=30)).items]
    given = list(dict.fromkeys(found[::-3] + others[:4])) + ["no-such-item"]
    r = t.Search(pb.SearchRequest(query="wireless earbuds", k=len(given) + 5, explain=True,
                                  candidate_item_ids=given))
    got = [it.item_id for it in r.items]
    assert sorted(got) == sorted(given[:-1]) and r.unknown_candidates == 1  # k beyond them: all come back
    assert [it.score for it in r.items] == sorted((it.score for it in r.items), reverse=True)
    for it in r.items:
        hits = it.explanation.sources
        assert (hits[0].source, hits[0].rank) == ("candidates", given.index(it.item_id) + 1)
        assert {h.source for h in hits[1:]} <= {"lexical", "text"}
        e = it.explanation  # the ranker's score, or the fused one where the bundle has no search ranker
        assert it.score == pytest.approx(e.ranker_score if e.HasField("ranker_score") else e.fused_score)
    text_hits = [h for it in r.items for h in it.explanation.sources if h.source == "text"]
    assert len(text_hits) == len(got) and all(h.rank >= 1 for h in text_hits)  # scored, not looked up
    top = t.Search(pb.SearchRequest(query="wireless earbuds", k=3, candidate_item_ids=given))
    assert [it.item_id for it in top.items] == got[:3]
    stocked = t.Search(pb.SearchRequest(query="wireless earbuds", k=50, candidate_item_ids=given,
                                        filters=pb.Filters(in_stock_only=True)))
    in_stock = {i for i in got if t.GetItem(pb.GetItemRequest(item_id=i)).in_stock}
    assert [it.item_id for it in stocked.items] == [i for i in got if i in in_stock]
    with pytest.raises(grpc.RpcError) as err:
        t.Search(pb.SearchRequest(query="x", k=5, candidate_item_ids=[given[0], given[0]]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("candidate_item_ids[1] must not repeat candidate_item_ids[0]")
    ch.close()


def test_cli_client_json_and_error(server, tiny_shop):
    run = lambda *a: subprocess.run([sys.executable, "-m", "tandem.server.cli", *a], cwd=ROOT, capture_output=True,  # noqa: E731
                                    text=True, timeout=60)
    ok = run("recommend", "--addr", server.addr, "--user", a_user(tiny_shop), "--k", "3", "--json")
    assert ok.returncode == 0
    out = json.loads(ok.stdout)
    assert len(out["items"]) == 3 and {"item_id", "score", "title"} <= set(out["items"][0])
    bad = run("recommend", "--addr", server.addr, "--user", "u", "--k", "0")
    assert bad.returncode == 1 and "INVALID_ARGUMENT: k must be between 1 and 1000" in bad.stderr


def test_reflection_and_metrics(tiny_bundles):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    from tests.conftest import free_port

    mport = free_port()
    s = Server(tiny_bundles, "--metrics-port", str(mport))
    try:
        s.wait_ready()
        ch = grpc.insecure_channel(s.addr)
        refl = reflection_pb2_grpc.ServerReflectionStub(ch)
        resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {x.name for x in resp.list_services_response.service}
        assert {"tandem.v1.Tandem", "tandem.v1.TandemAdmin", "grpc.health.v1.Health"} <= names
        pb_grpc.TandemStub(ch).Search(pb.SearchRequest(query="coffee", k=3))
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5).read().decode()
        assert 'tandem_rpc_latency_seconds_count{rpc="Search"} 1.0' in text
        assert "tandem_bundle_info" in text and "tandem_stage_seconds" in text
        ch.close()
    finally:
        s.stop()


def test_kill9_loses_no_acknowledged_event(tiny_bundles, tmp_path):
    log = tmp_path / "events.sqlite3"
    s = Server(tiny_bundles, "--event-log", str(log))
    s.wait_ready()
    t, _, ch = stub(s.addr)
    acked = []
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set() and i < 2000:
            ev = pb.Event(user_id=f"k9-{i}", item_id="x", ts=1_700_000_000 + i)
            try:
                t.RecordEvents(pb.RecordEventsRequest(events=[ev]), timeout=5)
                acked.append(i)
            except grpc.RpcError:
                return
            i += 1

    th = threading.Thread(target=writer)
    th.start()
    time.sleep(1.5)
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait(10)
    stop.set()
    th.join(10)
    ch.close()
    s.log.close()
    assert len(acked) > 10
    from tandem.server.event_log import EventLog

    users = {e.user_id for e in EventLog(log).iter_events()}
    assert {f"k9-{i}" for i in acked} <= users
    s2 = Server(tiny_bundles, "--event-log", str(log))  # restarts on the same log and replays it
    try:
        s2.wait_ready()
        t2, admin, ch2 = stub(s2.addr)
        assert admin.GetStatus(pb.GetStatusRequest()).event_log_sequence >= len(acked)
        ch2.close()
    finally:
        s2.stop()


def test_hot_swap_under_load_and_tampered_bundle_refused(tiny_shop, tmp_path):
    from tandem.index_builder.build import build
    from tandem.index_builder.config import load_config
    from tandem.retrieval.bundle import set_current

    root = tmp_path / "bundles"
    cfg = load_config(overrides=TINY_CONFIG, environ={})
    first = build(tiny_shop, root, cfg).folder
    second = build(tiny_shop, root, cfg).folder
    set_current(root, first.name)
    s = Server(root)
    s.wait_ready()
    t, admin, ch = stub(s.addr)
    failures, versions, count = [], set(), [0]
    stop = threading.Event()

    def load():
        while not stop.is_set() and count[0] < 5000:
            try:
                r = t.Recommend(pb.RecommendRequest(user_id="u0001", k=5), timeout=10)
                versions.add(r.bundle_version)
                count[0] += 1
            except grpc.RpcError as exc:
                failures.append(exc.code().name)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for th in threads:
        th.start()
    time.sleep(1.0)
    set_current(root, second.name)  # the watcher picks it up
    deadline = time.monotonic() + 60
    while second.name not in versions and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    stop.set()
    for th in threads:
        th.join(20)
    assert not failures and count[0] > 20
    assert versions == {first.name, second.name}
    # a tampered bundle is refused and the old one keeps serving
    (first / "pipeline.json").write_text("{}")
    r = admin.ReloadBundle(pb.ReloadBundleRequest(version=first.name))
    assert not r.swapped and "checksum mismatch" in r.error and r.version == second.name
    assert t.Recommend(pb.RecommendRequest(user_id="u0001", k=5)).bundle_version == second.name
    assert "checksum mismatch" in admin.GetStatus(pb.GetStatusRequest()).last_reload_error
    ch.close()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(30) == 0  # drained and exited cleanly
    s.log.close()
