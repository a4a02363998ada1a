"""Live catalog changes on a fleet of ``tandem serve --event-bus`` replicas over one real
redis-server, with the real tiny bundle: an item upserted through one replica is found by the
other's next calls once its follower applied the stream; one deleted through the other is gone
from the first; a replica started later replays the changes before it serves; a build from the
stream (``--events-bus``) includes them."""

import shutil
import time

import grpc
import pytest

from tandem.index_builder.event_log_reader import catalog_edits
from tandem.index_builder.event_stream import read_stream_catalog
from tandem.ranking.loader import load_engine
from tandem.retrieval.bundle import current_bundle, set_current
from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.service import ServerConfig, TandemServer
from tests.redis_server import redis_server  # noqa: F401 - the fixture

pytestmark = pytest.mark.slow  # the tiny bundle (tests/conftest.py)

NEW = pb.Item(item_id="fleet-new-1", title="Vorpaline cedar beard balm", category="Beauty > Beard",
              brand="Vorpaline", price=12.0, tags=["beard"], in_stock=True)


class Replica:
    def __init__(self, root, url):
        self.server = TandemServer(ServerConfig(bundles=root, port=0, watch_interval_s=0.2, grace_s=1, workers=8,
                                                event_bus=url, event_stream="fleet-catalog"), load_engine)
        port = self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.t = pb_grpc.TandemStub(self.channel)
        self.admin = pb_grpc.TandemAdminStub(self.channel)

    def has(self, item_id):
        try:
            self.t.GetItem(pb.GetItemRequest(item_id=item_id), timeout=10)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return True

    def stop(self):
        self.channel.close()
        self.server.stop(0)


def wait_for(check, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the deadline"
        time.sleep(0.01)


def test_catalog_changes_travel_on_the_bus(tiny_bundles, tmp_path, redis_server):  # noqa: F811
    root = tmp_path / "bundles"
    first = current_bundle(tiny_bundles)
    shutil.copytree(first, root / first.name)
    set_current(root, first.name)
    a = b = c = None
    try:
        a, b = Replica(root, redis_server.url), Replica(root, redis_server.url)
        r = a.admin.UpsertItems(pb.UpsertItemsRequest(items=[NEW]), timeout=120)
        assert (r.upserted, r.added) == (1, 1) and r.last_sequence > 0
        assert a.has(NEW.item_id)  # read your writes
        wait_for(lambda: b.has(NEW.item_id))
        assert b.t.Search(pb.SearchRequest(query=NEW.title, k=3), timeout=30).items[0].item_id == NEW.item_id
        # events on the new item, recorded through B, reach A's engine too
        b.t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="fleet-u", item_id=NEW.item_id)]), timeout=10)
        wait_for(lambda: not a.t.Recommend(pb.RecommendRequest(user_id="fleet-u", k=5), timeout=10).cold_start)
        # deleted through B: gone from A
        known = a.server.manager.engine.catalog.item_ids[0]  # an item of the bundle
        b.admin.DeleteItems(pb.DeleteItemsRequest(item_ids=[known]), timeout=120)
        assert not b.has(known)
        wait_for(lambda: not a.has(known))
        # a replica started now replays both changes before it serves
        c = Replica(root, redis_server.url)
        assert c.has(NEW.item_id) and not c.has(known)
        # what a build from the stream reads: the upsert, then the delete
        edits = catalog_edits((e, i, p, "test") for e, i, p in read_stream_catalog(redis_server.url, "fleet-catalog"))
        assert [(kind, item_id) for kind, item_id, _ in edits] == [("upsert", NEW.item_id), ("delete", known)]
        assert edits[0][2].title == NEW.title
    finally:
        for r in (a, b, c):
            if r is not None:
                r.stop()
