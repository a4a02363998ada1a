"""Lexical (BM25) source: field weighting, stemming, empty queries, persistence, BM25 oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Catalog, Item
from tandem.retrieval.lexical import Lexical, LexicalConfig, plural_stem


def _catalog() -> Catalog:
    return Catalog.from_items([
        Item("a", "Vitamin C serum", description="brightening face serum with vitamin c", brand="Glow"),
        Item("b", "Hydrating face cream", description="rich cream, contains a little serum", brand="Aqua"),
        Item("c", "Nail polish red", description="long lasting lacquer", category="Nails"),
        Item("d", "Hair brush", description="boar bristle brushes for detangling", brand="Mane"),
        Item("e", "Lip balm", description="cherry flavoured", tags=("berries", "lips")),
        Item("f", "Shampoo", description="gentle daily shampoo"),
    ])


@pytest.fixture(scope="module")
def lexical() -> Lexical:
    return Lexical().fit(_catalog())


def test_title_outranks_description(lexical):
    got = lexical.retrieve(RetrievalRequest(query="serum"), 10)
    assert got.items.tolist()[:2] == [0, 1]  # title + description beats description only
    assert np.all(np.diff(got.scores) <= 0) and got.source == "lexical"


def test_plural_stemming_matches_either_number(lexical):
    assert lexical.retrieve(RetrievalRequest(query="serums"), 3).items[0] == 0
    assert lexical.retrieve(RetrievalRequest(query="brush"), 3).items[0] == 3
    assert lexical.retrieve(RetrievalRequest(query="berry"), 3).items.tolist() == [4]
    assert lexical.retrieve(RetrievalRequest(query="hair brushes"), 3).items[0] == 3
    words = ("serums", "brushes", "berries", "glass", "glasses", "boxes", "cactus", "shoes", "curves")
    assert [plural_stem(w) for w in words] == \
        ["serum", "brush", "berry", "glass", "glass", "box", "cactus", "shoe", "curve"]


def test_nothing_to_match(lexical):
    for q in (None, "", "   ", "the and of", "zzzunknown"):
        assert len(lexical.retrieve(RetrievalRequest(query=q), 5)) == 0
    # only matching items come back, never a zero-score filler
    assert lexical.retrieve(RetrievalRequest(query="shampoo"), 5).items.tolist() == [5]


def test_brand_category_and_history(lexical):
    assert lexical.retrieve(RetrievalRequest(query="nails"), 3).items.tolist() == [2]
    assert lexical.retrieve(RetrievalRequest(query="glow"), 3).items.tolist() == [0]
    got = lexical.retrieve(RetrievalRequest(query="serum", history=np.array([0])), 5)
    assert 0 not in got.items.tolist() and got.items.tolist() == [1]


def test_matches_bm25_formula():
    """Lucene BM25 by hand on a corpus without stemming or repetition."""
    cat = Catalog.from_items([Item(str(i), t) for i, t in enumerate(
        ["red apple pie", "green apple", "red red wine", "blue cheese plate"])])
    lex = Lexical(LexicalConfig(title_weight=1, stemmer="none", k1=1.2, b=0.75)).fit(cat)
    docs = [["red", "apple", "pie"], ["green", "apple"], ["red", "red", "wine"], ["blue", "cheese", "plate"]]
    avgdl = np.mean([len(d) for d in docs])

    def bm25(term: str, doc: list[str]) -> float:
        df = sum(term in d for d in docs)
        idf = math.log(1 + (len(docs) - df + 0.5) / (df + 0.5))
        tf = doc.count(term)
        return idf * tf / (tf + 1.2 * (1 - 0.75 + 0.75 * len(doc) / avgdl))

    expected = [bm25("red", d) + bm25("apple", d) for d in docs]
    np.testing.assert_allclose(lex.scores("red apple"), expected, rtol=1e-5)


def test_save_load_round_trip(tmp_path, lexical):
    files = lexical.save(tmp_path)
    assert all(f.exists() for f in files)
    assert not [f for f in files if f.suffix in (".pkl", ".pickle")]
    loaded = Lexical.load(tmp_path, _catalog())
    for q in ("serum", "red nail polish", "brushes hair"):
        a, b = lexical.retrieve(RetrievalRequest(query=q), 4), loaded.retrieve(RetrievalRequest(query=q), 4)
        np.testing.assert_array_equal(a.items, b.items)
        np.testing.assert_array_equal(a.scores, b.scores)
    with pytest.raises(ValueError, match="catalog"):
        Lexical.load(tmp_path, _catalog().subset(np.arange(3)))


def test_config_validation():
    with pytest.raises(ValueError, match="stemmer"):
        LexicalConfig(stemmer="porter")
    with pytest.raises(ValueError, match="title_weight"):
        LexicalConfig(title_weight=0)


def test_index_files_do_not_depend_on_string_hashing(tmp_path):
    # bm25s numbers tokens in set order; two processes with other hash seeds must still write
    # the same bytes, so that two builds of one catalog give the same bundle checksums
    import os
    import subprocess
    import sys

    script = (
        "import sys, pathlib\n"
        "from retrieval.data import Catalog, Item\n"
        "from retrieval.lexical import Lexical\n"
        "words = 'red blue green shoe hat lamp desk chair mug kettle phone cable'.split()\n"
        "cat = Catalog.from_items(Item(f'i{i}', ' '.join(words[(i * j) % 12] for j in range(1, 5)),"
        " description=words[i % 12] + ' gift') for i in range(40))\n"
        "Lexical().fit(cat).save(pathlib.Path(sys.argv[1]))\n"
    )
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        subprocess.run([sys.executable, "-c", script, str(out)], check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        outs.append({p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    assert outs[0].keys() == outs[1].keys() and outs[0] == outs[1]


def test_a_catalog_of_stop_words_only_scores_zero_and_round_trips(tmp_path):
    cat = Catalog.from_items(Item(f"i{i}", "the a", description="of and") for i in range(5))
    lx = Lexical().fit(cat)  # used to fail inside bm25s with "max() arg is an empty sequence"
    assert not lx.scores("the red shoe").any()
    assert len(lx.retrieve(RetrievalRequest(query="red"), 3)) == 0
    lx.save(tmp_path)
    back = Lexical.load(tmp_path, cat)
    assert not back.scores("red").any() and back.n_items == 5
