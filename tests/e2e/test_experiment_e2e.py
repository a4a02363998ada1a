"""An A/B experiment end to end: `tandem serve --experiment` over the tiny bundle, a simulated user
population of the synthetic shop clicking and buying what matches its tastes, then
`tandem experiment report`.

The arms: ``control`` answers Recommend from popularity alone (no ranker); ``personal`` is the
bundle as built (two-tower, item-CF, text and popularity, then the ranker). A shopper's tastes are
the categories of the shop's own history of that shopper (the synthetic shop draws a user's events
from three preferred leaf categories); a shown item in one of them is clicked with probability
0.2, any other with 0.02, and a click goes on to a cart and a purchase with probability 0.5 each.
So the personal arm is truly better, and the report must say so; the Prometheus counters must
agree with the report's counts.
"""

import gzip
import json
import re
import urllib.request
from collections import Counter, defaultdict

import grpc
import numpy as np
import pytest

from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.cli import main
from tests.conftest import Server, free_port

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

EXPERIMENT = """
name = "popularity-vs-personal"
attribution_window_s = 3600

[[arms]]
name = "control"
share = 0.5
ranker = false
[arms.pipeline]
recommend_sources = ["popularity"]

[[arms]]
name = "personal"
share = 0.5
"""

P_MATCH, P_OTHER, P_NEXT = 0.2, 0.02, 0.5
REQUESTS_PER_USER = 6  # enough shoppers' requests that the CTR gap is significant whatever the tiny model (at 3, z was 1.94-2.0)


def tastes(shop) -> dict[str, set[str]]:
    """user -> the (up to) three leaf categories most of the user's events fall in."""
    with gzip.open(shop / "items.jsonl.gz", "rt") as f:
        category = {r["item_id"]: r["category"] for r in map(json.loads, f)}
    counts: dict[str, Counter] = defaultdict(Counter)
    with gzip.open(shop / "events.jsonl.gz", "rt") as f:
        for r in map(json.loads, f):
            if r["item_id"] in category:
                counts[r["user_id"]][category[r["item_id"]]] += 1
    return {u: {c for c, _ in cnt.most_common(3)} for u, cnt in counts.items() if sum(cnt.values()) >= 5}


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()


def series(text: str, name: str, **labels) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_the_report_finds_the_arm_the_shoppers_prefer(tiny_shop, tiny_bundles, tmp_path):
    exp_file = tmp_path / "exp.toml"
    exp_file.write_text(EXPERIMENT)
    events_log = tmp_path / "events.sqlite3"
    metrics_port = free_port()
    server = Server(tiny_bundles, "--experiment", str(exp_file), "--event-log", str(events_log),
                    "--metrics-port", str(metrics_port), log=tmp_path / "server.log")
    taste = tastes(tiny_shop)
    with gzip.open(tiny_shop / "items.jsonl.gz", "rt") as f:
        category = {r["item_id"]: r["category"] for r in map(json.loads, f)}
    rng = np.random.default_rng(7)
    matched = defaultdict(list)
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.addr) as ch:
            t = pb_grpc.TandemStub(ch)
            for _ in range(REQUESTS_PER_USER):
                for user in sorted(taste):
                    r = t.Recommend(pb.RecommendRequest(user_id=user, k=10), timeout=30)
                    assert r.experiment == "popularity-vs-personal" and r.experiment_arm in ("control", "personal")
                    events = []
                    for it in r.items:
                        match = category[it.item_id] in taste[user]
                        matched[r.experiment_arm].append(match)
                        if rng.random() < (P_MATCH if match else P_OTHER):
                            events.append(pb.Event(user_id=user, item_id=it.item_id, event="click"))
                            if rng.random() < P_NEXT:
                                events.append(pb.Event(user_id=user, item_id=it.item_id, event="cart"))
                                if rng.random() < P_NEXT:
                                    events.append(pb.Event(user_id=user, item_id=it.item_id, event="purchase"))
                    if events:
                        t.RecordEvents(pb.RecordEventsRequest(events=events), timeout=30)
            anonymous = t.Recommend(pb.RecommendRequest(k=5), timeout=30)
            assert anonymous.experiment_arm == ""
        metrics = scrape(metrics_port)
    finally:
        server.stop()
    share = {arm: float(np.mean(m)) for arm, m in matched.items()}
    assert share["personal"] > share["control"]  # the premise: personal shows more of each shopper's tastes

    out = tmp_path / "report.json"
    assert main(["experiment", "report", "--experiment", str(exp_file), "--log", str(events_log),
                 "--bundles", str(tiny_bundles), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    control, personal = report["arms"]
    assert control["name"] == "control" and personal["name"] == "personal"
    assert control["exposures"] + personal["exposures"] == REQUESTS_PER_USER * len(taste)
    assert control["users"] + personal["users"] == len(taste)
    ctr = personal["vs_control"]["ctr"]
    assert ctr["significant"] and ctr["verdict"] == "better" and ctr["ci"][0] > 0, (share, ctr)
    assert personal["vs_control"]["revenue"]["diff"] > 0
    assert report["unattributed_events"] == 0  # every simulated event is on a shown item

    # the live counters saw what the report counts
    name = "popularity-vs-personal"
    for arm in (control, personal):
        assert series(metrics, "tandem_experiment_exposures_total", experiment=name, arm=arm["name"]) == \
            arm["exposures"]
        for kind in ("click", "cart", "purchase"):
            assert series(metrics, "tandem_experiment_conversions_total", experiment=name, arm=arm["name"],
                          type=kind) == arm["events"][kind]
    log = (tmp_path / "server.log").read_text()
    assert re.search(r"experiment popularity-vs-personal: arms control \(0\.5\), personal \(0\.5\)", log)
