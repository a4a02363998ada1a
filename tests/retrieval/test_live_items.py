"""Growing ANN indexes for live catalog changes, against a brute-force oracle (retrieval.live_items)."""

import numpy as np
import pytest

from tandem.retrieval.ann import AnnConfig, AnnIndex
from tandem.retrieval.live_items import _pad_csr, grow_index


def _unit(rng, n, d):
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf_sq8"])
@pytest.mark.parametrize("change_existing", [False, True])
def test_a_grown_index_finds_new_and_changed_rows_like_exact_search(kind, change_existing):
    rng = np.random.default_rng(3)
    n, d, extra = 400, 16, 30
    base = _unit(rng, n, d)
    ann = AnnIndex.build(base, AnnConfig(kind=kind, ivf_nlist=8, n_tune_queries=50, recall_target=0.99))
    vectors = np.concatenate([base, _unit(rng, extra, d)])
    changed = np.array([5, 17, 250], dtype=np.int64) if change_existing else np.zeros(0, dtype=np.int64)
    vectors[changed] = _unit(rng, changed.size, d)
    grown = grow_index(ann, vectors, np.concatenate([changed, np.arange(n, n + extra)]))
    assert len(grown) == n + extra and len(ann) == n  # the old index is untouched (copy-on-write)
    queries = vectors[np.concatenate([changed, np.arange(n, n + extra)])]  # each row finds itself
    _, ids = grown.search(queries, 10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth, strict=True)])
    assert (ids[:, 0] == np.concatenate([changed, np.arange(n, n + extra)])).all()
    assert recall >= (1.0 if kind == "flat" else 0.9)
    if change_existing:  # no stale vector is left: every score is the query's product with the row's new vector
        old_q = base[changed]
        scores, ids_old = grown.search(old_q, 5)
        rescored = np.einsum("qd,qkd->qk", old_q, vectors[ids_old])
        assert np.allclose(scores, rescored, atol=0.02)  # SQ8 codes are approximate
        assert not (scores[:, 0] > 0.999).any()  # the old vectors themselves would score 1


def test_padding_a_sparse_matrix_keeps_its_rows_and_adds_empty_ones():
    import scipy.sparse as sp

    m = sp.random(5, 5, density=0.4, format="csr", random_state=1, dtype=np.float32)
    p = _pad_csr(m, 8, 8)
    assert p.shape == (8, 8) and (p[:5, :5] != m).nnz == 0 and p[5:].nnz == 0 and p[:, 5:].nnz == 0


def _catalog(titles):
    from tandem.retrieval.data import Catalog, Item

    return Catalog.from_items(Item(f"i{n}", t) for n, t in enumerate(titles))


def test_lexical_growth_matches_a_refit_where_it_matters():
    from tandem.retrieval.lexical import Lexical
    from tandem.retrieval.live_items import _grow_lexical

    rng = np.random.default_rng(5)
    words = [f"{a}{b}" for a in ("bal", "cor", "dem", "fil", "gar", "hon", "jut", "kel") for b in ("ax", "eb", "ic",
                                                                                                    "od", "um")]
    titles = [" ".join(rng.choice(words, size=rng.integers(3, 8))) for _ in range(300)]
    base = Lexical().fit(_catalog(titles))
    grown_titles = list(titles)
    grown_titles[7] = "zanzibarite replacement text"  # a changed document
    grown_titles += ["quixotic newcomer balax", "another quixotic item coreb", "unrelated filic thing"]
    catalog = _catalog(grown_titles)
    rows = np.array([7, 300, 301, 302], dtype=np.int64)
    grown = _grow_lexical(base, catalog, rows, rows, np.zeros((0, 0)))
    refit = Lexical().fit(catalog)
    assert grown.n_items == 303 and base.n_items == 300  # the old index is untouched
    for query, first in (("quixotic newcomer", 300), ("zanzibarite", 7), ("unrelated thing", 302)):
        assert int(np.argmax(grown.scores(query))) == first == int(np.argmax(refit.scores(query)))
    old_words = set(titles[7].split()) - set(grown_titles[7].split())
    for w in old_words:  # the changed document's old terms no longer find it ...
        assert grown.scores(w)[7] == 0
    unchanged = np.setdiff1d(np.arange(300), [7])
    q = " ".join(words[:6])
    assert np.array_equal(grown.scores(q)[unchanged], base.scores(q)[unchanged])  # ... the others keep theirs
    for q in (" ".join(rng.choice(words, 3)) for _ in range(20)):  # and rankings stay close to a refit's
        a, b = np.argsort(-grown.scores(q))[:10], np.argsort(-refit.scores(q))[:10]
        assert len(set(a) & set(b)) >= 8
