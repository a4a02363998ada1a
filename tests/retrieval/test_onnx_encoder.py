"""The text encoder's ONNX backends against the torch model (the bundled MiniLM, exported for real):
fp32 gives the same vectors, int8 close ones; a text source keeps its exported model and encodes
queries with it after a reload; bad values name the field; text vectors are not reused across
backends."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from tandem.index_builder.config import ConfigError, load_config
from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Catalog, Item
from tandem.retrieval.onnx_encoder import META_FILE, MODEL_FILE, OnnxEncoderSession, read_export_meta
from tandem.retrieval.text_cache import TextCache, reuse_vectors
from tandem.retrieval.text_tower import TextEncoder, TextEncoderConfig, TextSource, TextSourceConfig

TEXTS = [
    "red shoes",
    "  Cordless drill, 18V lithium-ion, with two batteries  ",
    "",
    "1/2 in. x 10 ft. copper pipe",
    "Ünïcödé café crème brûlée torch",
    " ".join(["a very long title that is truncated"] * 40),  # over max_seq_length tokens
    "GREEN tea",
]


@pytest.fixture(scope="module")
def torch_vectors() -> np.ndarray:
    return TextEncoder(TextEncoderConfig(batch_size=3, backend="torch")).encode(TEXTS)


@pytest.fixture(scope="module")
def onnx_encoder() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(backend="onnx", batch_size=3))


@pytest.fixture(scope="module")
def int8_encoder() -> TextEncoder:
    return TextEncoder(TextEncoderConfig(backend="onnx-int8", batch_size=3))


def test_fp32_onnx_gives_the_torch_vectors(onnx_encoder, torch_vectors) -> None:
    vecs = onnx_encoder.encode(TEXTS)
    assert vecs.shape == torch_vectors.shape and vecs.dtype == np.float32
    np.testing.assert_allclose(vecs, torch_vectors, atol=2e-5)
    assert onnx_encoder.dim == torch_vectors.shape[1]
    # one at a time (the query path) is the same as in batches of mixed lengths
    np.testing.assert_allclose(np.stack([onnx_encoder.encode([t])[0] for t in TEXTS]), vecs, atol=2e-5)
    meta = read_export_meta(onnx_encoder.exported_folder())
    assert meta["backend"] == "onnx" and meta["int8"] is None and meta["max_seq_length"] == 128


def test_int8_is_close_to_torch_but_quantised(int8_encoder, onnx_encoder, torch_vectors) -> None:
    vecs = int8_encoder.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    cos = (vecs * torch_vectors).sum(axis=1)
    assert cos.min() > 0.95, cos
    assert np.abs(vecs - torch_vectors).max() > 1e-3  # really int8, not the fp32 graph
    folder = int8_encoder.exported_folder()
    assert read_export_meta(folder)["int8"]["per_channel"] is True
    size = (folder / MODEL_FILE).stat().st_size
    assert size < 0.4 * (onnx_encoder.exported_folder() / MODEL_FILE).stat().st_size


def test_a_saved_source_serves_queries_with_its_own_exported_model(tmp_path, int8_encoder) -> None:
    catalog = Catalog.from_items([Item("a", "Stainless steel kitchen knife"), Item("b", "Red leather running shoes"),
                                  Item("c", "Organic green tea, 100 bags"), Item("d", "Wireless headphones")])
    source = TextSource(TextSourceConfig(encoder=int8_encoder.config), encoder=int8_encoder).fit(catalog)
    files = source.save(tmp_path)
    assert tmp_path / "encoder" / MODEL_FILE in files and tmp_path / "encoder" / META_FILE in files
    loaded = TextSource.load(tmp_path, catalog)
    assert loaded.encoder.config.backend == "onnx-int8"
    query = loaded.encode_query("red shoes")
    assert loaded.encoder._tmp is None  # read from the bundle, not exported again
    assert loaded.encoder.exported_folder() == tmp_path / "encoder"
    np.testing.assert_array_equal(query, int8_encoder.encode(["red shoes"])[0])
    assert catalog.item_ids[loaded.retrieve(RetrievalRequest(query="red shoes"), 2).items[0]] == "b"
    # an ONNX source whose exported model is gone is refused, naming what to do
    import shutil

    shutil.rmtree(tmp_path / "encoder")
    with pytest.raises(ValueError, match="no exported model.*rebuild the bundle"):
        TextSource.load(tmp_path, catalog)


def test_a_session_reads_an_exported_folder_with_its_threads(onnx_encoder, torch_vectors) -> None:
    session = OnnxEncoderSession(onnx_encoder.exported_folder(), threads=1)
    np.testing.assert_allclose(session.encode(TEXTS, batch_size=64), torch_vectors, atol=2e-5)
    with pytest.raises(ValueError, match="not an exported text encoder"):
        OnnxEncoderSession(onnx_encoder.exported_folder().parent / "nowhere")


def test_a_bad_backend_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match=r"TextEncoderConfig\.backend must be one of 'torch', 'onnx', 'onnx-int8', "
                                         r"got 'onnx-fp16'"):
        TextEncoderConfig(backend="onnx-fp16")
    with pytest.raises(ConfigError, match=r"build\.text.*backend.*'int8'"):
        load_config(overrides={"text": {"backend": "int8"}}, environ={})
    with pytest.raises(ConfigError, match=r"build\.text.*backend.*runs on the CPU"):
        load_config(overrides={"text": {"backend": "onnx", "device": "cuda"}}, environ={})
    assert load_config(environ={"TANDEM_BUILD__TEXT__BACKEND": "onnx-int8"}).text.backend == "onnx-int8"


def test_a_missing_onnxruntime_is_named_with_the_fix(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ValueError, match=r"TextEncoderConfig\.backend: backend 'onnx' needs the onnxruntime "
                                         r"package.*pip install onnxruntime.*or use backend 'torch'"):
        TextEncoderConfig(backend="onnx")
    TextEncoderConfig(backend="torch")  # torch does not need it


def test_text_vectors_are_not_reused_across_backends(onnx_encoder, int8_encoder) -> None:
    texts = ["red shoe", "blue shirt"]
    torch_encoder = TextEncoder(TextEncoderConfig(backend="torch"))
    torch_cache, _ = reuse_vectors(torch_encoder, texts, None)
    assert torch_cache.identity["backend"] == "torch"
    cache, report = reuse_vectors(int8_encoder, texts, torch_cache)
    assert report.reused == 0 and "backend: 'torch' -> 'onnx-int8'" in report.full_reason
    np.testing.assert_array_equal(cache.vectors, int8_encoder.encode(texts))
    _, report = reuse_vectors(onnx_encoder, texts, cache)
    assert report.reused == 0 and "backend: 'onnx-int8' -> 'onnx'" in report.full_reason
    # a cache written before backends existed was torch's, and is reused by torch
    old = TextCache(torch_cache.hashes, torch_cache.vectors,
                    {k: v for k, v in torch_cache.identity.items() if k != "backend"})
    _, report = reuse_vectors(torch_encoder, texts, old)
    assert (report.reused, report.full_reason) == (2, None)


def test_exports_are_cached_by_content_and_settings(tmp_path) -> None:
    import shutil
    import time

    from tandem.retrieval.onnx_encoder import cached_export, export_key
    from tandem.retrieval.text_tower import default_model_path

    model = tmp_path / "model"
    shutil.copytree(default_model_path(), model)
    cache = tmp_path / "cache"
    first = cached_export(model, "onnx", 128, cache_dir=cache)
    assert first is not None and read_export_meta(first)["backend"] == "onnx"
    stamp = (first / MODEL_FILE).stat().st_mtime_ns
    time.sleep(0.01)
    assert cached_export(model, "onnx", 128, cache_dir=cache) == first  # a hit: not exported again
    assert (first / MODEL_FILE).stat().st_mtime_ns == stamp
    assert [p.name for p in cache.iterdir()] == [first.name]  # no half-written export left beside it
    # another backend, truncation or model content is another entry
    key = export_key(model, "onnx", 128)
    assert len({key, export_key(model, "onnx-int8", 128), export_key(model, "onnx", 64)}) == 3
    (model / "config_sentence_transformers.json").write_text((model / "config_sentence_transformers.json")
                                                              .read_text() + "\n")
    assert export_key(model, "onnx", 128) != key
    # a cache that cannot be written: None, and the encoder exports to a temporary folder instead
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert cached_export(model, "onnx", 128, cache_dir=blocked / "sub") is None


def test_a_bundle_from_before_backends_loads_as_torch(tmp_path) -> None:
    import json

    catalog = Catalog.from_items([Item("a", "Stainless steel kitchen knife"), Item("b", "Red leather running shoes")])
    torch_config = TextEncoderConfig(backend="torch")
    TextSource(TextSourceConfig(encoder=torch_config)).fit(catalog).save(tmp_path)
    meta_path = tmp_path / "text_source.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["encoder"]["backend"]  # what bundles wrote before the setting existed
    meta_path.write_text(json.dumps(meta))
    loaded = TextSource.load(tmp_path, catalog)
    assert loaded.encoder.config.backend == "torch" and TextEncoderConfig().backend == "onnx-int8"
    np.testing.assert_allclose(loaded.encode_query("red shoes"), TextEncoder(torch_config).encode(["red shoes"])[0],
                               atol=1e-6)


def test_the_int8_export_does_not_flood_the_log(tmp_path, caplog) -> None:
    import logging

    from tandem.retrieval.onnx_encoder import cached_export
    from tandem.retrieval.text_tower import default_model_path

    with caplog.at_level(logging.INFO):
        assert cached_export(default_model_path(), "onnx-int8", 128, cache_dir=tmp_path / "cache") is not None
    from_quantiser = [r.getMessage() for r in caplog.records if r.name == "root"]
    assert from_quantiser == [], from_quantiser[:3]


def test_an_onnx_encode_shows_its_progress_in_the_log(int8_encoder, caplog, monkeypatch) -> None:
    import logging

    monkeypatch.setenv("TQDM_MININTERVAL", "0")  # a line per batch, not every 30 s
    with caplog.at_level(logging.INFO, logger="tandem.retrieval.onnx_encoder"):
        quiet = int8_encoder.encode(TEXTS)
        assert not [r for r in caplog.records if "text encoding" in r.getMessage()]
        loud = int8_encoder.encode(TEXTS, progress=True)
    lines = [r.getMessage() for r in caplog.records if "text encoding" in r.getMessage()]
    assert lines and lines[-1].startswith(f"text encoding: done, {len(TEXTS)} text"), lines
    np.testing.assert_array_equal(quiet, loud)
