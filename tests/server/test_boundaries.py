"""The edges the other server tests leave out: every documented limit is inclusive (the largest
legal request is answered, not refused), and a request in flight during a hot swap finishes on
the engine it started with while the next request already sees the new bundle."""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.service import ServerConfig, TandemServer
from tests.server.fake_engine import load_fake_engine, write_fake_bundle


@pytest.fixture
def running(tmp_path):
    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v1")
    server = TandemServer(ServerConfig(bundles=root, port=0, watch_interval_s=0.1, grace_s=2, workers=4,
                                       event_log=tmp_path / "events.sqlite3"), load_fake_engine)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, pb_grpc.TandemStub(channel), pb_grpc.TandemAdminStub(channel), root
    channel.close()
    server.stop(0)


def test_limits_are_inclusive(running):
    server, t, _, _ = running
    assert len(t.Recommend(pb.RecommendRequest(user_id="u" * 256, k=1000)).items) == 20  # all the catalog has
    assert len(t.Search(pb.SearchRequest(query="red " + "x" * 996, k=1)).items) == 0  # 1000 characters: answered
    assert len(t.SimilarItems(pb.SimilarItemsRequest(item_id="i01", k=1)).items) == 1
    ack = t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="u" * 256, item_id="i01")] * 10_000))
    assert (ack.accepted, ack.applied, ack.last_sequence) == (10_000, 10_000, 10_000)
    assert server.event_log.position() == 10_000


def test_in_flight_request_finishes_on_the_engine_it_started_with(running):
    server, t, admin, root = running
    out: dict = {}

    def slow():
        try:
            out["r"] = t.Search(pb.SearchRequest(query="sleep 0.8 red", k=2), timeout=10)
        except grpc.RpcError as exc:  # recorded, so the assertion below shows it
            out["error"] = f"{exc.code().name}: {exc.details()}"

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.2)  # the slow search now holds a reference to v1
    write_fake_bundle(root, version="v2", make_current=False)
    r = admin.ReloadBundle(pb.ReloadBundleRequest(version="v2"))
    assert r.swapped and r.version == "v2"
    assert t.Search(pb.SearchRequest(query="red", k=1)).bundle_version == "v2"
    th.join(10)
    assert "error" not in out, out.get("error")
    assert out["r"].bundle_version == "v1" and [it.item_id for it in out["r"].items] == ["i00", "i04"]
    assert server.manager.engine.version == "v2"
