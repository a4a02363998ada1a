"""End to end, issue #14 part 5: `tandem learn` beside a running `tandem serve`.

Live users buy pairs of items no one bought together before (A, then B). A cycle trains a candidate
on the log minus its newest events, judges it on those held out, publishes it (it learnt A -> B: it
is better), and the server swaps to it. A second cycle whose candidate forgets the log (built from
the bundle's data alone, answering from popularity) is judged worse and is not published. The
decisions are in the manifest and the metrics. `tandem learn --every` stops cleanly on SIGTERM."""

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from tandem.server._generated import tandem_pb2 as pb
from tests.conftest import ROOT, Server, free_port
from tests.e2e.test_server_e2e import stub

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _own_root(tiny_bundles, tmp_path):
    from tandem.retrieval.bundle import current_bundle, set_current

    first = current_bundle(tiny_bundles)
    root = tmp_path / "bundles"
    shutil.copytree(first, root / first.name)
    set_current(root, first.name)
    return root, first.name


def _record_pairs(t, pairs, prefix, users, ts):
    """Each user buys the A of a pair, then (after every user has) its B: the newest events are Bs
    of users whose history holds the A."""
    for step in (0, 1):
        events = [pb.Event(user_id=f"{prefix}{u}", item_id=pairs[u % len(pairs)][step], ts=ts + 1000 * step + u)
                  for u in range(users)]
        t.RecordEvents(pb.RecordEventsRequest(events=events))


def _wait_version(admin, version, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if admin.GetStatus(pb.GetStatusRequest()).bundle_version == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"the server did not swap to {version} within {timeout}s")


def test_better_candidate_is_published_and_served_worse_one_is_not(tiny_bundles, tmp_path):
    from tandem.index_builder.candidate import train_candidate
    from tandem.ranking.loader import load_pipeline
    from tandem.retrieval.bundle import current_bundle, list_bundles, read_manifest
    from tandem.server.learner import LearnConfig, Learner

    root, first = _own_root(tiny_bundles, tmp_path)
    s = Server(root)
    try:
        s.wait_ready()
        t, admin, ch = stub(s.addr)
        built_at = admin.GetStatus(pb.GetStatusRequest()).bundle_built_at
        # pairs among items popularity does not put in a top 50: only a model that learnt the pair finds B
        cold = {it.item_id for it in t.Recommend(pb.RecommendRequest(user_id="nobody", k=50)).items}
        ids = [i for i in load_pipeline(root / first).catalog.item_ids if i not in cold]
        pairs = [(ids[2 * j], ids[2 * j + 1]) for j in range(5)]
        _record_pairs(t, pairs, "first-", 100, built_at + 10)

        learner = Learner(LearnConfig(root, root / "events.sqlite3"))
        r1 = learner.cycle()
        assert r1["decision"] == "published", r1
        ev = r1["events"]
        assert (ev["after_seq"], ev["upto_seq"], ev["train_upto_seq"]) == (0, 200, 160)
        assert ev["held_out_seq"] == [161, 200] and ev["target_users"] == 40
        before, after = r1["metrics"]["serving"], r1["metrics"]["candidate"]
        assert after["ndcg@10"] > before["ndcg@10"] and after["recall@10"] > before["recall@10"]
        published = r1["candidate"]
        assert current_bundle(root).name == published and published != first
        manifest = read_manifest(root / published)
        assert manifest["event_log"]["seq"] == 160  # the server replays the held-out events into it
        assert manifest["learn"]["decision"] == "published" and manifest["learn"]["serving"] == first
        assert manifest["learn"]["metrics"] == r1["metrics"] and manifest["learn"]["events"] == ev
        gain = r1["gain"]["ndcg@10"]  # the judge's noise is recorded with the decision
        assert gain["low"] <= gain["gain"] <= gain["high"] and gain["gain"] == pytest.approx(
            after["ndcg@10"] - before["ndcg@10"])

        _wait_version(admin, published)  # the server's watcher swapped to it
        t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="probe", item_id=pairs[0][0],
                                                               ts=built_at + 5000)]))
        probe = [it.item_id for it in t.Recommend(pb.RecommendRequest(user_id="probe", k=10)).items]
        assert pairs[0][1] in probe

        reg = learner.metrics.registry
        assert reg.get_sample_value("tandem_learn_cycles_total", {"decision": "published"}) == 1
        assert reg.get_sample_value("tandem_learn_last_metric", {"bundle": "candidate", "metric": "ndcg@10"}) \
            == after["ndcg@10"]

        # a candidate that forgets the live events and answers from popularity: a real judgement rejects it
        def forgetful(serving, log, out, upto):
            return train_candidate(serving, log, out, upto_seq=0,
                                   config_overrides={"pipeline": {"recommend_sources": ["popularity"]}})

        _record_pairs(t, pairs, "second-", 100, built_at + 10_000)
        learner.trainer = forgetful
        r2 = learner.cycle()
        assert r2["decision"] == "rejected", r2
        assert r2["metrics"]["candidate"]["ndcg@10"] < r2["metrics"]["serving"]["ndcg@10"]
        assert "worse" in r2["reason"] and r2["serving"] == published and "candidate" not in r2
        assert current_bundle(root).name == published and list_bundles(root) == sorted([first, published])
        assert not (root / ".learn").exists()  # the candidate was discarded
        assert reg.get_sample_value("tandem_learn_cycles_total", {"decision": "rejected"}) == 1
        assert reg.get_sample_value("tandem_learn_last_metric", {"bundle": "serving", "metric": "ndcg@10"}) \
            == r2["metrics"]["serving"]["ndcg@10"]
        assert admin.GetStatus(pb.GetStatusRequest()).bundle_version == published
        ch.close()
    finally:
        s.stop()


def test_learn_every_serves_metrics_and_stops_on_sigterm(tiny_bundles, tmp_path):
    from tandem.server.event_log import EventLog

    root, _ = _own_root(tiny_bundles, tmp_path)
    EventLog(root / "events.sqlite3").close()
    port = free_port()
    out = open(tmp_path / "learn.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tandem.server.cli", "learn", "--bundles", str(root),
                             "--every", "1h", "--metrics-port", str(port)], cwd=ROOT, stdout=out,
                            stderr=subprocess.STDOUT)
    try:
        deadline, text = time.monotonic() + 120, ""
        while 'tandem_learn_cycles_total{decision="no_new_events"} 1.0' not in text:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "learn.log").read_text()
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
            except OSError:
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        out.close()
    log = (tmp_path / "learn.log").read_text()
    decisions = [json.loads(line.split("learn decision ", 1)[1]) for line in log.splitlines()
                 if "learn decision " in line]
    assert [d["decision"] for d in decisions] == ["no_new_events"] and "tandem learn: stopped" in log
