"""An in-process server running an experiment over the FakeEngine: every answer to a user carries
its arm and is logged as an exposure, a pinned-bundle arm answers from its own bundle and sees
recorded events, anonymous requests are not counted, and the Prometheus counters attribute clicks,
carts and purchases to the arm that showed the item (also after a restart)."""

import copy
import dataclasses
import json
import re
import sqlite3
import urllib.request

import grpc
import pytest

from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.cli import main
from tandem.server.experiment import load_experiment
from tandem.server.service import ServerConfig, TandemServer
from tests.server.fake_engine import FakeEngine, load_fake_engine, write_fake_bundle

EXPERIMENT = """
name = "svc-exp"
attribution_window_s = 3600

[[arms]]
name = "control"
share = 0.5

[[arms]]
name = "pinned"
share = 0.5
bundle = "v-old"
"""


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v-old", make_current=False, histories={})
    write_fake_bundle(root, version="v-new", n_items=30, histories={})
    f = tmp_path / "exp.toml"
    f.write_text(EXPERIMENT)
    config = ServerConfig(bundles=root, port=0, metrics_port=0, workers=4, grace_s=1, experiment=f,
                          event_log=tmp_path / "logs" / "events.sqlite3")
    return config, load_experiment(f)


def start(config):
    server = TandemServer(config, load_fake_engine)
    port = server.start()
    return server, grpc.insecure_channel(f"127.0.0.1:{port}")


def scrape(server) -> dict[tuple, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    out = {}
    for name, labels, value in re.findall(r"^(tandem_experiment_\w+?)\{(.*?)\} (\S+)$", text, re.M):
        out[(name, *sorted(dict(kv.split("=") for kv in labels.split(",")).items()))] = float(value)
    return out


def counter(metrics, name, **labels):
    key = (name, *sorted((k, f'"{v}"') for k, v in labels.items()))
    return metrics.get(key, 0.0)


def test_arms_answer_log_exposures_and_count_conversions(setup, capsys):
    config, exp = setup
    server, channel = start(config)
    try:
        t = pb_grpc.TandemStub(channel)
        users = [f"u{i}" for i in range(24)]
        arms = {u: exp.assign(u).name for u in users}
        assert set(arms.values()) == {"control", "pinned"}
        shown = {}
        for u in users:
            r = t.Recommend(pb.RecommendRequest(user_id=u, k=3))
            assert (r.experiment, r.experiment_arm) == ("svc-exp", arms[u])
            assert r.bundle_version == ("v-old" if arms[u] == "pinned" else "v-new")
            shown[u] = [it.item_id for it in r.items]
        s = t.Search(pb.SearchRequest(query="item", user_id="u0", k=2))
        sim = t.SimilarItems(pb.SimilarItemsRequest(item_id="i01", user_id="u1", k=2))
        assert s.experiment_arm == arms["u0"] and sim.experiment_arm == arms["u1"]
        anon = t.Recommend(pb.RecommendRequest(k=3))
        assert anon.experiment == "" and anon.experiment_arm == "" and anon.bundle_version == "v-new"  # control
        assert main(["similar", "--addr", f"127.0.0.1:{server.port}", "--item", "i01", "--user", "u1", "--k", "2"]) == 0
        assert f"experiment svc-exp arm {arms['u1']}" in capsys.readouterr().out
        with pytest.raises(grpc.RpcError) as err:
            t.SimilarItems(pb.SimilarItemsRequest(item_id="i01", user_id="x" * 300, k=2))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "user_id" in err.value.details()

        rows = sqlite3.connect(config.exposure_log_path).execute(
            "SELECT experiment, arm, user_id, kind, bundle_version, items FROM exposures ORDER BY seq").fetchall()
        assert len(rows) == len(users) + 3  # the anonymous request is not an exposure
        assert rows[0] == ("svc-exp", arms["u0"], "u0", "recommend", "v-old" if arms["u0"] == "pinned" else "v-new",
                           json.dumps(shown["u0"]))
        assert [r[3] for r in rows[-3:]] == ["search", "similar", "similar"]

        # a click and a purchase on a shown item count for the user's arm, once (a repeated event_id is a
        # duplicate); a click on an item never shown counts for nobody
        clicks = {"control": 0, "pinned": 0}
        revenue = {"control": 0.0, "pinned": 0.0}
        events = []
        for u in users[:10]:
            item = shown[u][0]
            events.append(pb.Event(user_id=u, item_id=item, event="click", event_id=f"c-{u}"))
            events.append(pb.Event(user_id=u, item_id=item, event="purchase"))
            events.append(pb.Event(user_id=u, item_id="i29", event="click"))  # only in v-new, never shown first
            clicks[arms[u]] += 1 + (item == "i29")
            revenue[arms[u]] += 5 + int(item[1:])
        t.RecordEvents(pb.RecordEventsRequest(events=events))
        t.RecordEvents(pb.RecordEventsRequest(events=events[:1]))  # the duplicate
        m = scrape(server)
        for arm in ("control", "pinned"):
            n = sum(1 for r in rows if r[1] == arm)
            assert counter(m, "tandem_experiment_exposures_total", experiment="svc-exp", arm=arm) == n
            assert counter(m, "tandem_experiment_conversions_total", experiment="svc-exp", arm=arm,
                           type="click") == clicks[arm]
            assert counter(m, "tandem_experiment_conversions_total", experiment="svc-exp", arm=arm,
                           type="purchase") == sum(1 for u in users[:10] if arms[u] == arm)
            assert counter(m, "tandem_experiment_revenue_total", experiment="svc-exp", arm=arm) == revenue[arm]
            assert counter(m, "tandem_experiment_conversions_total", experiment="svc-exp", arm=arm, type="cart") == 0

        # the pinned engine is given recorded events too: a pinned user's next answer follows the new history
        pinned_user = next(u for u in users if arms[u] == "pinned")
        t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=pinned_user, item_id="i10")]))
        after = t.Recommend(pb.RecommendRequest(user_id=pinned_user, k=2))
        assert after.bundle_version == "v-old" and [it.item_id for it in after.items] == ["i11", "i12"]
        last_shown = [it.item_id for it in after.items]
    finally:
        channel.close()
        server.stop(0)

    # a restarted server rereads the recent exposures: a click on what was shown before still counts
    server, channel = start(config)
    try:
        t = pb_grpc.TandemStub(channel)
        t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=pinned_user, item_id=last_shown[1],
                                                               event="cart")]))
        m = scrape(server)
        assert counter(m, "tandem_experiment_conversions_total", experiment="svc-exp", arm="pinned", type="cart") == 1
        assert counter(m, "tandem_experiment_exposures_total", experiment="svc-exp", arm="control") == 0
    finally:
        channel.close()
        server.stop(0)


@pytest.mark.parametrize("arm, message", [
    ('bundle = "v-missing"', "arm b: ValueError: version 'v-missing' is not a bundle folder"),
    ('ranker = false', "arm b: ValueError: the engine of bundle v-new cannot answer with pipeline overrides"),
])
def test_an_arm_that_cannot_be_served_stops_the_start(setup, tmp_path, arm, message):
    config, _ = setup
    f = tmp_path / "bad.toml"
    f.write_text(f'name = "e"\n[[arms]]\nname = "a"\nshare = 0.5\n[[arms]]\nname = "b"\nshare = 0.5\n{arm}\n')
    server = TandemServer(ServerConfig(bundles=config.bundles, port=0, experiment=f,
                                       event_log=config.event_log), load_fake_engine)
    with pytest.raises(RuntimeError) as err:
        server.start()
    assert f"cannot serve: experiment e: {message}" in str(err.value)


class _ArmableFake(FakeEngine):
    """The FakeEngine with ``variant()``: a shallow copy (same items, histories and lock) that, without
    the ranker, explains items with no ranker score; pipeline changes are kept but change nothing."""

    no_ranker = False

    def variant(self, changes, *, use_ranker=True):
        v = copy.copy(self)
        v.no_ranker, v.changes = not use_ranker, dict(changes)
        return v

    def _explain(self, n, score, rank, explain):
        e = super()._explain(n, score, rank, explain)
        return dataclasses.replace(e, ranker_score=None) if e is not None and self.no_ranker else e


def _load_armable(path):
    engine = load_fake_engine(path)
    engine.__class__ = _ArmableFake
    return engine


def test_a_variant_arm_follows_hot_swaps_and_recorded_events(tmp_path):
    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v1", histories={})
    f = tmp_path / "exp.toml"
    f.write_text('name = "variant-exp"\n[[arms]]\nname = "control"\nshare = 0.5\n'
                 '[[arms]]\nname = "plain"\nshare = 0.5\nranker = false\n[arms.pipeline]\nfused_k = 50\n')
    exp = load_experiment(f)
    server = TandemServer(ServerConfig(bundles=root, port=0, grace_s=1, experiment=f, watch_interval_s=3600),
                          _load_armable)
    port = server.start()
    users = {exp.assign(f"u{i}").name: f"u{i}" for i in range(20)}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            t = pb_grpc.TandemStub(ch)

            def ask(user):
                r = t.Recommend(pb.RecommendRequest(user_id=user, k=2, explain=True))
                return r.experiment_arm, r.bundle_version, r.items[0].explanation.HasField("ranker_score"), \
                    [it.item_id for it in r.items]

            assert ask(users["control"])[:3] == ("control", "v1", True)
            assert ask(users["plain"])[:3] == ("plain", "v1", False)
            assert server.experiment_runner.engine_for(exp.arm("plain"), server.manager.engine).changes == \
                {"fused_k": 50}
            write_fake_bundle(root, version="v2", histories={})
            assert server.manager.reload() == (True, "")
            assert ask(users["plain"])[:3] == ("plain", "v2", False)  # derived again from the swapped-in engine
            t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=users["plain"], item_id="i07")]))
            assert ask(users["plain"])[3] == ["i08", "i09"]  # the variant sees the serving engine's histories
    finally:
        server.stop(0)
