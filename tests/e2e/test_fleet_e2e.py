"""End to end, issue #15: two `tandem serve --event-bus` processes on one real redis-server and a
real bundle. An event recorded on A changes B's next Recommend; `tandem build --events-bus`
records the newest stream entry it includes; both replicas swap to that bundle replaying only
the later entries, and so does a restarted replica."""

import re
import shutil
import time

import pytest

from tandem.server._generated import tandem_pb2 as pb
from tests.conftest import TINY_CONFIG, Server
from tests.e2e.test_server_e2e import stub
from tests.redis_server import redis_server  # noqa: F401 - the fixture

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _replayed(server: Server, version: str) -> list[int]:
    server.log.flush()
    text = open(server.log.name).read()
    return [int(n) for n in re.findall(rf"serving bundle {re.escape(version)} \(was [^;]+; (\d+) logged events "
                                       "replayed", text)]


def test_two_replicas_share_events_and_replay_from_the_bundles_stream_position(tiny_bundles, tiny_shop, tmp_path,
                                                                                redis_server):  # noqa: F811
    from tandem.index_builder.config import load_config
    from tandem.index_builder.tune import to_toml
    from tandem.retrieval.bundle import current_bundle, read_manifest, set_current
    from tandem.server.cli import main

    first = current_bundle(tiny_bundles)
    root = tmp_path / "bundles"
    shutil.copytree(first, root / first.name)
    set_current(root, first.name)
    flags = ("--event-bus", redis_server.url, "--event-stream", "e2e:events")
    a, b = Server(root, *flags), Server(root, *flags)
    b2 = None
    try:
        a.wait_ready()
        b.wait_ready()
        ta, admin_a, ch_a = stub(a.addr)
        tb, admin_b, ch_b = stub(b.addr)
        items = [it.item_id for it in ta.Recommend(pb.RecommendRequest(k=8)).items]
        assert tb.Recommend(pb.RecommendRequest(user_id="fleet-user", k=5)).cold_start

        def record(t, item):
            return t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="fleet-user", item_id=item)]))

        ack = record(ta, items[0])
        assert ack.accepted == 1 and ack.last_sequence > 0
        deadline = time.monotonic() + 10
        while tb.Recommend(pb.RecommendRequest(user_id="fleet-user", k=5)).cold_start:
            assert time.monotonic() < deadline, "B never saw A's event"
            time.sleep(0.01)
        record(tb, items[1])

        cfg = tmp_path / "tiny.toml"
        cfg.write_text(to_toml(load_config(overrides=TINY_CONFIG, environ={})))
        staging = tmp_path / "staging"
        assert main(["build", "--data", str(tiny_shop), "--out", str(staging), "--config", str(cfg),
                     "--events-bus", redis_server.url, "--events-stream", "e2e:events"]) == 0
        second = current_bundle(staging)
        included = read_manifest(second)["event_log"]
        position = admin_b.GetStatus(pb.GetStatusRequest()).event_log_sequence
        assert included["seq"] == position and included["stream"] == "e2e:events"
        assert included["stream_id"].count("-") == 1 and set(included["last_event"]) == {"origin", "at"}

        record(tb, items[2])  # appended after the build read the stream
        record(ta, items[3])
        shutil.copytree(second, root / second.name)
        set_current(root, second.name)  # both replicas swap
        for server, admin in ((a, admin_a), (b, admin_b)):
            deadline = time.monotonic() + 60
            while admin.GetStatus(pb.GetStatusRequest()).bundle_version != second.name:
                assert time.monotonic() < deadline, f"{server.addr} did not swap"
                time.sleep(0.1)
            assert _replayed(server, second.name) == [2]  # the two later entries, not the bundle's two
        end = admin_a.GetStatus(pb.GetStatusRequest()).event_log_sequence
        ch_a.close()
        ch_b.close()
        b.stop()
        b2 = Server(root, *flags)  # a restart replays the same two, once, before SERVING
        b2.wait_ready()
        assert _replayed(b2, second.name) == [2]
        t2, admin2, ch2 = stub(b2.addr)
        assert admin2.GetStatus(pb.GetStatusRequest()).event_log_sequence == end
        assert not t2.Recommend(pb.RecommendRequest(user_id="fleet-user", k=5)).cold_start
        ch2.close()
    finally:
        a.stop()
        b.stop()
        if b2 is not None:
            b2.stop()
