"""Search queries with graded judgements from the synthetic shop's own truth.

A query is made from a source item: one of its leaf's nouns, up to two of its attribute values,
maybe one of its features, maybe its brand ("voltix 128GB smartphone 5G"). Grades follow from the
generator's truth, not from text matching:

* 3 exact: the source item, and items of the same leaf that match every attribute, the feature
  and the brand the query names;
* 2 substitute: other items of the same leaf;
* 1 complement: items of a leaf that complements the query's leaf;
* 0 irrelevant: items of other leaves (half of them from the same top category, the hard ones).

Each query judges 1 + up to 5 exact, up to 10 substitutes, up to 5 complements and 6 irrelevant items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tandem.index_builder.synthetic_catalog import SyntheticCatalog, item_id
from tandem.index_builder.synthetic_vocab import Vocabulary
from tandem.retrieval.data import Query

__all__ = ["QueryTruth", "make_queries", "JUDGED_PER_GRADE"]

#: At most this many judged items per grade (3, 2, 1, 0) besides the source item.
JUDGED_PER_GRADE = (5, 10, 5, 6)


@dataclass(frozen=True)
class QueryTruth:
    """How one query was made: its leaf path, the brand it names (or None), the attribute values
    and feature it names (``terms``, words found in the items' tags) and the source item index."""

    query_id: str
    query: str
    leaf: str
    brand: str | None
    terms: tuple[str, ...]
    source: int

    def to_dict(self) -> dict:
        return {"query_id": self.query_id, "query": self.query, "leaf": self.leaf, "brand": self.brand,
                "terms": list(self.terms), "source_item": item_id(self.source)}


def _pick(rng: np.random.Generator, rows: np.ndarray, k: int) -> np.ndarray:
    return rows if len(rows) <= k else rng.choice(rows, k, replace=False)


def _pick_other(rng: np.random.Generator, rows: np.ndarray, leaf: np.ndarray, leaves: list[int],
                taken: np.ndarray, k: int) -> np.ndarray:
    """Up to ``k`` distinct items of ``rows`` outside ``leaves`` and ``taken``; by rejection, so the
    cost does not grow with the catalog."""
    out: list[int] = []
    for _ in range(20):
        for i in rows[rng.integers(0, len(rows), 4 * k)].tolist():
            if len(out) < k and leaf[i] not in leaves and i not in taken and i not in out:
                out.append(i)
        if len(out) == k:
            break
    return np.array(out, dtype=np.int64)


def make_queries(rng: np.random.Generator, catalog: SyntheticCatalog, vocab: Vocabulary, n_queries: int,
                 judgeable: np.ndarray) -> tuple[list[Query], list[QueryTruth]]:
    """``n_queries`` queries with their judgements (Query rows, grouped by query, grade descending).

    ``judgeable`` bool (n_items,) marks items that may be judged (the caller leaves out items that
    cleaning may drop); sources are drawn from them by popularity.
    """
    leaf = catalog.leaf.astype(np.int64)
    ok = np.flatnonzero(judgeable)
    by_leaf = [ok[leaf[ok] == lf] for lf in range(vocab.n_leaves)]
    tops = np.array([lf.top for lf in vocab.leaves])
    p = catalog.weight[ok] ** 0.5  # flatter than purchases: people search for the long tail too
    sources = rng.choice(ok, n_queries, p=p / p.sum())
    rows: list[Query] = []
    truths: list[QueryTruth] = []
    for q, s in enumerate(sources.tolist()):
        lf = vocab.leaves[leaf[s]]
        qid = f"q{q + 1:05d}"
        n_dims = len(lf.attributes)
        k_attr = min(n_dims, int(rng.choice(3, p=[0.3, 0.5, 0.2])))
        dims = np.sort(rng.choice(n_dims, k_attr, replace=False)) if k_attr else np.zeros(0, dtype=np.int64)
        feat = int(catalog.features[s, rng.integers(0, 2)]) if rng.random() < 0.5 else -1
        with_brand = rng.random() < 0.25
        terms = [lf.attributes[d][1][catalog.attrs[s, d]] for d in dims.tolist()]
        if feat >= 0:
            terms.append(lf.features[feat])
        noun = lf.nouns[int(rng.integers(0, len(lf.nouns)))]
        words = ([catalog.brand_names[catalog.brand[s]]] if with_brand else []) + terms[:k_attr] + [noun]
        words += terms[k_attr:]
        text = " ".join(words).lower()

        same = by_leaf[lf.index]
        match = np.ones(len(same), dtype=bool)
        for d in dims.tolist():
            match &= catalog.attrs[same, d] == catalog.attrs[s, d]
        if feat >= 0:
            match &= (catalog.features[same] == feat).any(axis=1)
        if with_brand:
            match &= catalog.brand[same] == catalog.brand[s]
        exact = same[match & (same != s)]
        subst = same[~match]
        comp_leaves = list(vocab.complements[lf.index])
        comp = np.concatenate([by_leaf[c] for c in comp_leaves]) if comp_leaves else np.zeros(0, dtype=np.int64)
        related = comp_leaves + [lf.index]
        hard_leaves = [x for x in range(vocab.n_leaves) if tops[x] == lf.top and x not in related]
        hard = np.concatenate([by_leaf[x] for x in hard_leaves]) if hard_leaves else np.zeros(0, dtype=np.int64)
        n_irr = JUDGED_PER_GRADE[3]
        hard_pick = _pick(rng, hard, n_irr // 2)
        irr = np.concatenate([hard_pick, _pick_other(rng, ok, leaf, related, hard_pick, n_irr - len(hard_pick))])
        judged = [(s, 3)]
        for grade, cand, k in ((3, exact, JUDGED_PER_GRADE[0]), (2, subst, JUDGED_PER_GRADE[1]),
                               (1, comp, JUDGED_PER_GRADE[2]), (0, irr, len(irr))):
            judged += [(int(i), grade) for i in np.sort(_pick(rng, cand, k)).tolist()]
        rows += [Query(qid, text, item_id(i), g) for i, g in judged]
        truths.append(QueryTruth(qid, text, lf.path, catalog.brand_names[catalog.brand[s]] if with_brand else None,
                                 tuple(terms), s))
    return rows, truths
