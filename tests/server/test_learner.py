"""`tandem learn` without training: the held-out split, the no-op and skip decisions, refusals of a
bundle that cannot be rebuilt, a failing cycle that the loop survives, and the flags. The cycles
that train, judge and publish (against a running server) are in tests/e2e/test_learn_e2e.py."""

import json
import logging
import shutil
import threading
import time

import pytest

from tandem.index_builder.candidate import CannotRebuildError, LoggedEvent, bundle_source, log_mark_at
from tandem.index_builder.holdout import choose_holdout, holdout_targets
from tandem.retrieval.bundle import current_bundle, read_manifest, set_current, write_bundle
from tandem.retrieval.data import Event
from tandem.server.event_log import EventLog
from tandem.server.learn_commands import parse_duration
from tandem.server.learner import LearnConfig, Learner


def _events(n, user="u", start=0):
    return [LoggedEvent(start + i + 1, Event(f"{user}{i % 3}", f"i{i}", 1000 + i)) for i in range(n)]


def test_holdout_keeps_the_newest_share_and_trains_up_to_the_event_before():
    new = _events(10, start=40)
    h = choose_holdout(new, 0.2)
    assert [e.seq for e in h.held] == [49, 50] and h.train_upto == 48 and len(h.train) == 8
    assert h.describe() == {"train_events": 8, "held_out_events": 2, "train_seq": [41, 48],
                            "held_out_seq": [49, 50], "held_out_users": 2}
    assert len(choose_holdout(new[:3], 0.01).held) == 1  # at least one
    with pytest.raises(ValueError, match="share"):
        choose_holdout(new, 1.0)


def test_targets_are_the_items_first_touched_in_the_window():
    held = [LoggedEvent(1, Event("a", "x", 1)), LoggedEvent(2, Event("a", "y", 2, "view")),
            LoggedEvent(3, Event("a", "y", 3)), LoggedEvent(4, Event("b", "z", 4))]
    # y twice -> once; z was in b's history -> b has no target and is left out
    assert holdout_targets(held, {"a": {"w"}, "b": {"z"}}) == {"a": ["x", "y"]}


def _scores(ndcg, recall=None):
    import numpy as np

    from tandem.index_builder.holdout import UserScores

    ndcg = np.asarray(ndcg, dtype=float)
    return UserScores(10, tuple(f"u{i:03d}" for i in range(len(ndcg))), ndcg if recall is None else
                      np.asarray(recall, dtype=float), ndcg)


def test_score_users_keeps_each_users_scores_and_their_means_are_score_engine():
    import numpy as np

    from tandem.index_builder.holdout import score_engine, score_users
    from tandem.retrieval.metrics import ranking_metrics

    class Fixed:  # fixed answers (the scoring is what is tested): u0 hits one target at rank 2, u1 misses
        def __init__(self, answers):
            self.answers = answers

        def recommend(self, request):
            from types import SimpleNamespace

            return SimpleNamespace(items=[SimpleNamespace(item_id=i) for i in self.answers[request.user_id]])

    engine = Fixed({"u0": ["a", "b", "c"], "u1": ["d", "e"]})
    targets = {"u0": ["b", "z"], "u1": ["y"]}
    got = score_users(engine, (), targets, k=3)
    assert got.users == ("u0", "u1")
    assert got.recall.tolist() == [0.5, 0.0]
    ideal = 1 + 1 / 1.584962500721156
    assert got.ndcg[0] == pytest.approx((1 / 1.584962500721156) / ideal) and got.ndcg[1] == 0.0
    # the means are what ranking_metrics gives for the same lists (the aggregate the judge reported before)
    m = ranking_metrics(np.asarray([[0, 1, 2], [4, 5, -1]]), (np.asarray([0, 2, 3]), np.asarray([1, 3, 6])), [3])
    assert score_engine(engine, (), targets, k=3) == {"recall@3": pytest.approx(m["recall@3"]),
                                                       "ndcg@3": pytest.approx(m["ndcg@3"]), "users": 2.0}


def test_the_judge_rejects_on_the_mean_and_with_confidence_only_beyond_its_noise():
    from tandem.server.learner import _worse, judge_gains

    serving = _scores([0.5, 0.0, 1.0, 0.0, 0.5, 0.0, 1.0, 0.0] * 3)
    # one user of 24 loses half a point: 4% worse on the mean, well inside the judge's noise
    slightly = _scores([0.0, 0.0, 1.0, 0.0, 0.5, 0.0, 1.0, 0.0] + [0.5, 0.0, 1.0, 0.0, 0.5, 0.0, 1.0, 0.0] * 2)
    broken = _scores([0.0] * 24)  # every hit lost
    base = float(serving.ndcg.mean())
    on_mean = judge_gains(serving, slightly, 0.0)["ndcg@10"]
    assert on_mean["gain"] == pytest.approx(-0.5 / 24) and on_mean["upper"] == on_mean["gain"]
    assert on_mean["low"] < on_mean["gain"] < on_mean["high"]
    assert _worse(on_mean, base, 0.01, 0.0)  # the old rule: 4% below, beyond 1% tolerance
    confident = judge_gains(serving, slightly, 0.9)["ndcg@10"]
    assert confident["upper"] >= 0.0 and not _worse(confident, base, 0.01, 0.9)
    for confidence in (0.0, 0.9, 0.99):  # a clearly worse candidate is rejected whatever the rule
        assert _worse(judge_gains(serving, broken, confidence)["ndcg@10"], base, 0.01, confidence)
    same = judge_gains(serving, serving, 0.9)["recall@10"]
    assert same["gain"] == 0.0 and not _worse(same, base, 0.0, 0.9) and not _worse(same, base, 0.0, 0.0)
    with pytest.raises(ValueError, match="different users"):
        judge_gains(serving, _scores([0.5]), 0.0)


def test_durations_and_config_are_validated():
    assert parse_duration("90") == 90 and parse_duration("15m") == 900 and parse_duration("1.5h") == 5400
    for bad in ("0", "-1m", "soon", "5w"):
        with pytest.raises(ValueError, match="--every"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="--holdout-share"):
        LearnConfig("b", "l", holdout_share=0)
    with pytest.raises(ValueError, match="--tolerance"):
        LearnConfig("b", "l", tolerance=1.0)
    with pytest.raises(ValueError, match="--min-new-events"):
        LearnConfig("b", "l", min_new_events=1)
    for bad in (0.5, 1.0, -0.1):
        with pytest.raises(ValueError, match="--confidence"):
            LearnConfig("b", "l", confidence=bad)


@pytest.fixture
def root(tiny_bundles, tmp_path):
    """A bundle root of its own (the tiny bundle, no events included) with an empty event log."""
    first = current_bundle(tiny_bundles)
    out = tmp_path / "bundles"
    shutil.copytree(first, out / first.name)
    set_current(out, first.name)
    EventLog(out / "events.sqlite3").close()
    return out


def _append(root, n, user="live"):
    log = EventLog(root / "events.sqlite3")
    from tandem.ranking.loader import load_pipeline

    items = load_pipeline(current_bundle(root)).catalog.item_ids
    log.append([Event(f"{user}{i % 7}", items[i % len(items)], 1_800_000_000 + i) for i in range(n)])
    log.close()


def _never(*args):
    raise AssertionError("the trainer must not run")


def test_no_new_events_is_a_logged_no_op(root, caplog):
    learner = Learner(LearnConfig(root, root / "events.sqlite3"), trainer=_never)
    with caplog.at_level(logging.INFO, "tandem.learn"):
        record = learner.cycle()
    assert record["decision"] == "no_new_events" and record["events"]["new_events"] == 0
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [current_bundle(root).name]  # nothing built
    assert learner.metrics.registry.get_sample_value("tandem_learn_cycles_total", {"decision": "no_new_events"}) == 1
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("learn decision ")]
    assert len(line) == 1 and json.loads(line[0].removeprefix("learn decision "))["decision"] == "no_new_events"


def test_too_few_new_events_wait_for_the_next_cycle(root):
    _append(root, 5)
    record = Learner(LearnConfig(root, root / "events.sqlite3", min_new_events=6), trainer=_never).cycle()
    assert record["decision"] == "too_few_events" and record["events"]["new_events"] == 5
    assert "--min-new-events 6" in record["reason"]


def test_a_failing_cycle_is_logged_and_the_loop_goes_on(root, caplog):
    _append(root, 30)
    calls = []

    def broken(serving, log, out, upto):
        calls.append(upto)
        raise RuntimeError("trainer exploded")

    learner = Learner(LearnConfig(root, root / "events.sqlite3", every_s=0.05), trainer=broken)
    runner = threading.Thread(target=learner.run)
    with caplog.at_level(logging.INFO, "tandem.learn"):
        runner.start()
        deadline = time.monotonic() + 30
        while len(calls) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        learner.stop_event.set()
        runner.join(10)
    assert not runner.is_alive() and len(calls) >= 3
    assert calls[0] == 24  # 30 new events, the newest 6 held out
    failed = learner.metrics.registry.get_sample_value("tandem_learn_cycles_total", {"decision": "failed"})
    assert failed >= 3
    decisions = [json.loads(r.getMessage().removeprefix("learn decision ")) for r in caplog.records
                 if r.getMessage().startswith("learn decision ")]
    assert decisions and all(d["decision"] == "failed" and "trainer exploded" in d["reason"] for d in decisions)
    assert current_bundle(root).name == read_manifest(current_bundle(root))["version"]  # nothing published


def _republish(root, change):
    """The current bundle written again as a new version, its manifest changed by ``change``."""
    src = current_bundle(root)
    manifest = read_manifest(src)

    def fill(folder):
        for entry in manifest["files"]:
            (folder / entry["path"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / entry["path"], folder / entry["path"])
        out = {k: v for k, v in manifest.items() if k not in ("format_version", "version", "created_at", "files")}
        change(out)
        return out

    return write_bundle(root, fill)


def test_a_bundle_without_its_source_data_is_refused_with_the_reason(root, tmp_path):
    _append(root, 30)
    _republish(root, lambda m: m["data"].update(path=str(tmp_path / "gone")))
    with pytest.raises(CannotRebuildError, match="data.path .*gone.*not a folder"):
        Learner(LearnConfig(root, root / "events.sqlite3"), trainer=_never).cycle()
    _republish(root, lambda m: m.pop("data"))
    with pytest.raises(CannotRebuildError, match="has no data.path"):
        bundle_source(current_bundle(root), root / "events.sqlite3")


def test_a_bundle_built_from_another_log_is_refused(root, tmp_path):
    _append(root, 30)
    other = tmp_path / "other"
    other.mkdir()
    EventLog(other / "events.sqlite3").close()
    log = EventLog(other / "events.sqlite3")
    log.append([Event("x", "y", 1)] * 3)
    log.close()
    mark = log_mark_at(other / "events.sqlite3", 3)
    assert mark["seq"] == 3 and mark["last_event"]["user_id"] == "x"
    _republish(root, lambda m: m.update(event_log=mark))
    with pytest.raises(CannotRebuildError, match="another log"):
        bundle_source(current_bundle(root), root / "events.sqlite3")


def test_learn_once_prints_its_decision_and_a_refusal_exits_2(root, tmp_path, capsys):
    from tandem.server.cli import main

    assert main(["learn", "--bundles", str(root), "--once"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["decision"] == "no_new_events"
    _append(root, 30)
    _republish(root, lambda m: m["data"].update(path=str(tmp_path / "gone")))
    assert main(["learn", "--bundles", str(root), "--once"]) == 2
    err = capsys.readouterr().err
    assert "tandem learn: error:" in err and "data.path" in err and "gone" in err
    assert main(["learn", "--bundles", str(root), "--every", "soon"]) == 2
    assert "--every" in capsys.readouterr().err
