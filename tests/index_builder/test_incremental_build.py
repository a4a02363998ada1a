"""``tandem build --from``: a tiny shop built once, then again after some item texts changed,
items were added and events recorded, from the first bundle (issue #14 part 4)."""

import gzip
import json
import logging
import shutil

import numpy as np
import pytest

from tandem.index_builder.build import build
from tandem.index_builder.config import load_config
from tandem.ranking.loader import load_pipeline
from tandem.retrieval.bundle import current_bundle, verify_bundle, write_bundle
from tandem.retrieval.catalog_io import load_catalog
from tandem.retrieval.text_tower import TextEncoder, TextEncoderConfig
from tandem.server.cli import main
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.slow

N_NEW, N_CHANGED = 8, 10


def _read(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write(path, rows):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def shops(tiny_shop, tmp_path_factory):
    """(earlier shop, current shop, new ids, changed ids): the current shop is the tiny shop with
    N_CHANGED items retitled, N_NEW new items (copies of others under new ids, with events) and
    10% more events."""
    root = tmp_path_factory.mktemp("inc")
    earlier, current = root / "earlier", root / "current"
    shutil.copytree(tiny_shop, earlier)
    shutil.copytree(tiny_shop, current)
    items = _read(tiny_shop / "items.jsonl.gz")
    events = _read(tiny_shop / "events.jsonl.gz")
    ids = sorted({r["item_id"] for r in items})
    changed = set(ids[:N_CHANGED])
    new_rows = []
    for k, row in enumerate([r for r in items if r["item_id"] in set(ids[-N_NEW:])]):
        new_rows.append({**row, "item_id": f"new{k:03d}", "title": f"Brand new gadget number {k}"})
    new_ids = {r["item_id"] for r in new_rows}
    cur_items = [{**r, "title": r["title"] + " (2027 edition)"} if r["item_id"] in changed and r.get("title")
                 else r for r in items] + new_rows
    cur_items = [({**r, "title": "Retitled item"} if r["item_id"] in changed and not r.get("title") else r)
                 for r in cur_items]
    # 10% more events, some of them on the new items, after everything before
    last = max(int(e["ts"]) for e in events)
    extra = []
    for i, e in enumerate(events[: len(events) // 10]):
        item = sorted(new_ids)[i % N_NEW] if i % 3 == 0 else e["item_id"]
        extra.append({**e, "item_id": item, "ts": last + 60 * (i + 1)})
    _write(current / "items.jsonl.gz", cur_items)
    _write(current / "events.jsonl.gz", events + extra)
    return earlier, current, new_ids, changed


@pytest.fixture(scope="module")
def builds(shops, tmp_path_factory):
    earlier, current, _, _ = shops
    root = tmp_path_factory.mktemp("incb")
    first = build(earlier, root / "first", load_config(overrides=TINY_CONFIG, environ={}))
    second = build(current, root / "second", load_config(overrides={**TINY_CONFIG, "from_bundle": str(root / "first")},
                                                         environ={}))
    return root, first, second


def test_only_new_and_changed_texts_are_encoded(builds, shops):
    root, first, second = builds
    _, _, new_ids, changed = shops
    manifest = verify_bundle(second.folder)
    inc = manifest["incremental"]
    assert inc["from"]["version"] == first.folder.name
    n_items = len(load_catalog(second.folder / "catalog"))
    # the tiny shop's dirt makes some items without a title; they are retitled too, so every changed one differs
    assert inc["texts"] == {"reused": n_items - N_NEW - N_CHANGED, "encoded": N_NEW + N_CHANGED,
                            "full_encode_reason": None}
    assert verify_bundle(first.folder)["incremental"]["texts"]["encoded"] == n_items - N_NEW  # a full encode

    # reused vectors are the earlier bundle's, byte for byte; encoded ones are the encoder's for the new text
    old_cat, new_cat = load_catalog(first.folder / "catalog"), load_catalog(second.folder / "catalog")
    old_vec = np.load(first.folder / "sources/text/text_vectors.npy")
    new_vec = np.load(second.folder / "sources/text/text_vectors.npy")
    same = [i for i, item in enumerate(new_cat.item_ids) if item not in new_ids and item not in changed]
    assert np.array_equal(new_vec[same], old_vec[[old_cat.index[new_cat.item_ids[i]] for i in same]])
    fresh = [i for i, item in enumerate(new_cat.item_ids) if item in new_ids or item in changed]
    encoded = TextEncoder(TextEncoderConfig()).encode([new_cat.text(i) for i in fresh])
    np.testing.assert_allclose(new_vec[fresh], encoded, atol=1e-5)
    changed_rows = [i for i in fresh if new_cat.item_ids[i] in changed]
    old_rows = [old_cat.index[new_cat.item_ids[i]] for i in changed_rows]
    assert not np.allclose(new_vec[changed_rows], old_vec[old_rows], atol=1e-3)


def test_warm_started_models_load_and_serve(builds, shops):
    root, first, second = builds
    _, _, new_ids, _ = shops
    inc = verify_bundle(second.folder)["incremental"]
    tt, ranker = inc["two_tower"], inc["ranker"]
    n_items = len(load_catalog(second.folder / "catalog"))
    assert tt["warm"] and tt["items_new"] == N_NEW and tt["items_copied"] == n_items - N_NEW
    assert tt["epochs_cap"] >= 1 and tt["vocab_copied"]["brands"] > 0
    assert ranker["warm"] and ranker["epochs_cap"] >= 1
    assert inc["schedule"] == verify_bundle(first.folder)["incremental"]["schedule"]  # carried from the cold build
    # fewer epochs than the cold build trained
    models = verify_bundle(second.folder)["models"]
    assert models["two_tower"]["epochs_run"] <= tt["epochs_cap"]
    assert models["ranker"]["epochs"] <= ranker["epochs_cap"]

    pipeline = load_pipeline(current_bundle(root / "second"))
    assert set(pipeline.rankers) == {"recommend"}
    cat = pipeline.catalog
    new_rows = np.array([cat.index[i] for i in sorted(new_ids)])
    req_hist = new_rows[:3]
    from tandem.retrieval.base import RetrievalRequest

    ranked = pipeline.rank(RetrievalRequest(history=req_hist), "recommend")
    assert len(ranked.items) > 0 and not set(ranked.items.tolist()) & set(req_hist.tolist())
    similar = pipeline.sources["two_tower"].retrieve(RetrievalRequest(item=int(new_rows[0])), 10)
    assert len(similar.items) == 10


def _strip_text_cache(src, root):
    """A copy of bundle ``src`` as a bundle built before text hashes were kept: no text_cache/ and
    no ``incremental`` section in its (re-sealed) manifest."""
    manifest = json.loads((src / "manifest.json").read_text())

    def fill(folder):
        for path in src.rglob("*"):
            rel = path.relative_to(src)
            if path.is_file() and rel.parts[0] != "text_cache" and path.name not in ("manifest.json", "manifest.sha256"):
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, folder / rel)
        return {k: v for k, v in manifest.items()
                if k not in ("incremental", "files", "format_version", "version", "created_at")}

    return write_bundle(root, fill)


def test_bundle_without_text_hashes_falls_back_to_a_full_encode(builds, shops, tmp_path, caplog):
    root, first, _ = builds
    _, current, _, _ = shops
    old = _strip_text_cache(first.folder, tmp_path / "old")
    assert not (old / "text_cache").exists()
    with caplog.at_level(logging.INFO):
        result = build(current, tmp_path / "out", load_config(overrides={**TINY_CONFIG, "from_bundle": str(old)},
                                                              environ={}))
    inc = result.info["incremental"]
    n_items = len(result.pipeline.catalog)
    assert inc["texts"]["reused"] == 0 and inc["texts"]["encoded"] == n_items
    assert "has no text hashes" in inc["texts"]["full_encode_reason"]
    assert any("encoding all" in r.getMessage() and "no text hashes" in r.getMessage() for r in caplog.records)
    # the models still start warm; their epoch caps come from the old manifest's training records
    assert inc["two_tower"]["warm"] and inc["ranker"]["warm"]
    assert inc["schedule"]["two_tower"] == verify_bundle(first.folder)["models"]["two_tower"]["best_epoch"]
    assert load_pipeline(result.folder).n_items == n_items


def test_changed_text_encoder_or_architecture_starts_over(builds, shops, tmp_path, caplog):
    root, first, _ = builds
    _, current, _, _ = shops
    overrides = {**TINY_CONFIG, "from_bundle": str(root / "first"), "text": {"max_seq_length": 64},
                 "two_tower": {**TINY_CONFIG["two_tower"], "dim": 8}, "ranker": {"epochs": 3, "hidden": [8]}}
    with caplog.at_level(logging.WARNING):
        result = build(current, tmp_path / "out", load_config(overrides=overrides, environ={}), make_current=False)
    assert not (tmp_path / "out" / "CURRENT").exists()  # a candidate, not published
    inc = result.info["incremental"]
    assert inc["texts"]["reused"] == 0 and inc["texts"]["encoded"] == len(result.pipeline.catalog)
    assert "max_seq_length: 128 -> 64" in inc["texts"]["full_encode_reason"]
    assert not inc["two_tower"]["warm"] and "dim 16 -> 8" in inc["two_tower"]["reason"]
    assert not inc["ranker"]["warm"] and "hidden" in inc["ranker"]["reason"]
    # cold models set the schedule anew, and train their full configured epochs (no warm cap)
    assert inc["schedule"]["two_tower"] == result.info["two_tower"]["best_epoch"]
    assert "epochs_cap" not in inc["two_tower"] and "epochs_cap" not in inc["ranker"]
    assert result.info["two_tower"]["epochs_run"] == 3 and result.info["ranker"]["epochs"] == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("two-tower: cold start: the two-tower architecture changed") for m in messages)
    assert any(m.startswith("recommend ranker: cold start:") for m in messages)
    assert load_pipeline(result.folder).n_items == len(result.pipeline.catalog)


@pytest.mark.parametrize("kind", ["missing", "not_a_bundle", "tampered"])
def test_bad_from_exits_2_with_one_line(builds, shops, tmp_path, capsys, kind):
    root, first, _ = builds
    _, current, _, _ = shops
    if kind == "missing":
        bad = tmp_path / "nowhere"
    elif kind == "not_a_bundle":
        bad = tmp_path / "empty"
        bad.mkdir()
    else:
        bad = tmp_path / "copy"
        shutil.copytree(first.folder, bad / first.folder.name)
        (bad / "CURRENT").write_text(first.folder.name + "\n")
        with open(bad / first.folder.name / "sources/text/text_vectors.npy", "ab") as f:
            f.write(b"x")
    capsys.readouterr()
    rc = main(["build", "--data", str(current), "--out", str(tmp_path / "out"), "--from", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith(f"tandem build: error: --from {bad}"), err
    assert not (tmp_path / "out").exists()  # refused before any work
