"""End to end, issue #14: `tandem build --events-log` records the newest logged event it includes,
and `tandem serve` replays exactly the later events into that bundle, on a hot swap and after a
restart (each event once: the bundle's copy of the earlier ones, the log's of the later ones)."""

import json
import re
import shutil

import pytest

from tandem.server._generated import tandem_pb2 as pb
from tests.conftest import TINY_CONFIG, Server
from tests.e2e.test_server_e2e import a_user, stub

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _replayed(server: Server, version: str) -> list[int]:
    """The replay counts the server logged for loading ``version`` (one per load)."""
    server.log.flush()
    text = open(server.log.name).read()
    return [int(n) for n in re.findall(rf"serving bundle {re.escape(version)} \(was [^;]+; (\d+) logged events "
                                       "replayed", text)]


def test_build_from_the_log_then_swap_and_restart_replay_each_later_event_once(tiny_bundles, tiny_shop, tmp_path):
    from tandem.index_builder.config import load_config
    from tandem.index_builder.tune import to_toml
    from tandem.retrieval.bundle import current_bundle, read_manifest, set_current
    from tandem.server.cli import main

    first = current_bundle(tiny_bundles)
    root = tmp_path / "bundles"
    shutil.copytree(first, root / first.name)  # the bundle alone: a log of its own
    set_current(root, first.name)
    assert read_manifest(root / first.name)["event_log"] == {"seq": 0}  # built without --events-log
    s = Server(root)
    try:
        s.wait_ready()
        t, admin, ch = stub(s.addr)
        built_at = admin.GetStatus(pb.GetStatusRequest()).bundle_built_at
        items = [it.item_id for it in t.Recommend(pb.RecommendRequest(user_id=a_user(tiny_shop), k=8)).items]
        assert t.Recommend(pb.RecommendRequest(user_id="live-only", k=5)).cold_start

        def record(item, ts):
            t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="live-only", item_id=item, ts=ts)]))

        # live events older than the shop's newest event, and one at the receive time (ts 0): the
        # newest the build will read, so built_at is its time (the old rule replayed it again)
        for item in items[:3]:
            record(item, built_at - 3600)
        record(items[3], 0)
        assert admin.GetStatus(pb.GetStatusRequest()).event_log_sequence == 4

        cfg = tmp_path / "tiny.toml"
        cfg.write_text(to_toml(load_config(overrides=TINY_CONFIG, environ={})))
        staging = tmp_path / "staging"
        assert main(["build", "--data", str(tiny_shop), "--out", str(staging), "--config", str(cfg),
                     "--events-log", str(root / "events.sqlite3")]) == 0
        second = current_bundle(staging)
        included = read_manifest(second)["event_log"]
        assert included["seq"] == 4 and included["last_event"]["item_id"] == items[3]
        assert included["path"] == str((root / "events.sqlite3").absolute())

        record(items[4], built_at - 3600)  # logged after the build read the log
        record(items[5], 0)
        shutil.copytree(second, root / second.name)
        r = admin.ReloadBundle(pb.ReloadBundleRequest(version=second.name))
        assert r.swapped and r.error == ""
        assert _replayed(s, second.name) == [2]  # the two later events, not the four the bundle has
        after = t.Recommend(pb.RecommendRequest(user_id="live-only", k=5))
        assert not after.cold_start and after.bundle_version == second.name
        ch.close()
    finally:
        s.stop()

    set_current(root, second.name)
    s2 = Server(root)
    try:
        s2.wait_ready()
        assert _replayed(s2, second.name) == [2]  # a restart replays the same two, once
        t, admin, ch = stub(s2.addr)
        assert admin.GetStatus(pb.GetStatusRequest()).event_log_sequence == 6
        assert not t.Recommend(pb.RecommendRequest(user_id="live-only", k=5)).cold_start
        assert json.loads((root / second.name / "manifest.json").read_text())["event_log"]["seq"] == 4
        ch.close()
    finally:
        s2.stop()
