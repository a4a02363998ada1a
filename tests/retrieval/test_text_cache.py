"""Text vectors reused by content hash: only new or changed texts are encoded, and any change
of the encoder's identity encodes everything."""

from __future__ import annotations

import numpy as np
import pytest

from tandem.retrieval.data import Catalog, Item
from tandem.retrieval.text_cache import (
    TEXT_PREP_VERSION,
    TextCache,
    encoder_identity,
    reuse_vectors,
    text_hashes,
)
from tandem.retrieval.text_tower import TextEncoder, TextEncoderConfig


class CountingEncoder(TextEncoder):
    """The real encoder, remembering which texts it was asked to encode."""

    def __init__(self, config: TextEncoderConfig | None = None) -> None:
        super().__init__(config)
        self.seen: list[str] = []

    def encode(self, texts, progress=False):
        self.seen += list(texts)
        return super().encode(texts, progress)


def test_catalog_text_is_the_prepared_text_of_this_version() -> None:
    # Changing Catalog.text changes every cached vector's meaning: bump TEXT_PREP_VERSION with it.
    cat = Catalog.from_items([Item("a", "Red shoe", "Soft.", "Shoes > Casual", "Altura", 3.0, ("red",))])
    assert (TEXT_PREP_VERSION, cat.text(0)) == (1, "Red shoe. Altura. Shoes > Casual. Soft.")


def test_hashes_are_sha256_of_the_utf8_text() -> None:
    import hashlib

    h = text_hashes(["abc", "é", "abc"])
    assert h.shape == (3, 32) and h.dtype == np.uint8
    assert bytes(h[1]) == hashlib.sha256("é".encode()).digest() and np.array_equal(h[0], h[2])


@pytest.fixture(scope="module")
def earlier() -> TextCache:
    enc = TextEncoder()
    cache, report = reuse_vectors(enc, ["red shoe", "blue shirt", "green hat"], None)
    assert report.encoded == 3 and report.reused == 0
    return cache


def test_only_new_or_changed_texts_are_encoded(earlier, tmp_path) -> None:
    (tmp_path / "sources/text").mkdir(parents=True)
    np.save(tmp_path / "sources/text/text_vectors.npy", earlier.vectors)
    earlier.save(tmp_path)
    loaded = TextCache.load(tmp_path)
    assert loaded is not None and loaded.identity == earlier.identity
    enc = CountingEncoder()
    texts = ["green hat", "red shoe", "red shoe, now in size 44", "purple scarf", "blue shirt"]
    cache, report = reuse_vectors(enc, texts, loaded)
    assert enc.seen == ["red shoe, now in size 44", "purple scarf"]
    assert (report.reused, report.encoded, report.full_reason) == (3, 2, None)
    assert np.array_equal(cache.vectors[[0, 1, 4]], earlier.vectors[[2, 0, 1]])
    np.testing.assert_allclose(cache.vectors[[2, 3]], TextEncoder().encode(texts[2:4]), atol=1e-6)


def test_another_encoder_identity_encodes_everything(earlier) -> None:
    enc = CountingEncoder(TextEncoderConfig(max_seq_length=64))
    cache, report = reuse_vectors(enc, ["red shoe", "blue shirt"], earlier)
    assert enc.seen == ["red shoe", "blue shirt"] and report.reused == 0
    assert "max_seq_length: 128 -> 64" in report.full_reason
    changed = dict(earlier.identity, text_prep=0)
    _, report = reuse_vectors(CountingEncoder(), ["red shoe"], TextCache(earlier.hashes, earlier.vectors, changed))
    assert report.reused == 0 and "text_prep: 0 -> 1" in report.full_reason


def test_a_local_model_folder_is_fingerprinted(tmp_path) -> None:
    import shutil

    from tandem.retrieval.text_tower import default_model_path

    model = tmp_path / "m"
    shutil.copytree(default_model_path(), model)
    a = encoder_identity(TextEncoder(TextEncoderConfig(model_path=str(model))))
    (model / "config.json").write_text((model / "config.json").read_text() + " ")
    b = encoder_identity(TextEncoder(TextEncoderConfig(model_path=str(model))))
    assert a["model"] == b["model"] and a["fingerprint"] != b["fingerprint"]
