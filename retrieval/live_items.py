"""Candidate sources over a changed catalog, without a rebuild (live catalog updates).

:func:`grow_sources` returns new source objects for a catalog that is the old one with some rows
changed and new rows appended (row ``i`` stays item ``i``: histories, item-CF and every other
index keep their meaning). The old objects are never modified: requests that hold them finish on
a consistent snapshot, and the caller swaps the whole set at once (copy-on-write). Per source:

- ``text``: the changed rows' text vectors replace theirs, new rows are appended, and the ANN
  index grows (flat: rebuilt, a copy; HNSW: new vectors added to a clone, rebuilt when an
  existing item's text changed; IVF: clone, remove and re-add the changed ids).
- ``two_tower``: a content-only item vector (text projection + tag, category, brand and price
  embeddings of the trained item tower; the id embedding is absent for an item it never saw,
  kept for a known item whose attributes changed), then the same output layer as every item.
- ``lexical``: the BM25 matrix's entries of new and changed documents replaced (scored with the
  index's own statistics; see :func:`_grow_lexical`).
- ``item_cf``, ``user_cf``, ``popularity``: padded with empty rows / zeros (a new item has no
  behaviour yet; events recorded later reach it only through the user's history).

Each step costs O(catalog) memory copies; see docs/operations.md for the limits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp

from tandem.retrieval.ann import AnnIndex
from tandem.retrieval.base import CandidateSource
from tandem.retrieval.data import Catalog

__all__ = ["grow_sources", "grow_index", "LIVE_SOURCES"]

Encode = Callable[[list[str]], np.ndarray]


def grow_index(ann: AnnIndex, vectors: np.ndarray, changed: np.ndarray) -> AnnIndex:
    """A new index over float32 (n2, d) ``vectors`` where rows ``ann.n..n2-1`` are new and the
    existing rows ``changed`` (int64) have new vectors; ``ann`` itself is left as it is."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n2, d = vectors.shape
    changed = np.asarray(changed, dtype=np.int64)
    changed = changed[changed < ann.n]
    kind = ann.kind
    if kind.startswith("ivf"):
        index = faiss.clone_index(ann._index)
        if changed.size:
            index.remove_ids(changed)
        fresh = np.concatenate([changed, np.arange(ann.n, n2, dtype=np.int64)])
        if fresh.size:
            index.add_with_ids(vectors[fresh], fresh)
        kept = vectors
    elif kind == "hnsw" and not changed.size:
        index = faiss.clone_index(ann._index)
        index.add(vectors[ann.n:])
        kept = None
    else:  # flat (a plain copy), or an HNSW graph whose existing nodes cannot be moved: rebuilt
        index = faiss.index_factory(d, ann.factory, faiss.METRIC_INNER_PRODUCT)
        if kind == "hnsw":
            index.hnsw.efConstruction = max(40, int(ann.params.get("ef_search", 40)))
        index.add(vectors)
        kept = None
    return AnnIndex(index, kind, ann.factory, ann.params, n2, d, kept, ann._tuning)


def _grow_text(source: Any, catalog: Catalog, text_rows: np.ndarray, attr_rows: np.ndarray,
               text_vectors: np.ndarray) -> Any:
    n2 = len(catalog)
    old = source.vectors
    vectors = np.empty((n2, old.shape[1]), dtype=np.float32)
    vectors[: old.shape[0]] = old
    if text_rows.size:
        vectors[text_rows] = text_vectors
    new = copy.copy(source)
    new.vectors = vectors
    if source._index is not None:
        new._index = grow_index(source._index, vectors, text_rows)
    else:
        from tandem.retrieval.text_tower import _build_index

        new._index = _build_index(vectors, source.ann_config)
    return new  # the query cache (query -> vector) is shared: it does not depend on the items


_AVGDL_SAMPLE = 300  # documents tokenized to estimate the average length (the index does not keep it)


def _grow_lexical(source: Any, catalog: Catalog, text_rows: np.ndarray, attr_rows: np.ndarray,
                  text_vectors: np.ndarray) -> Any:
    """The BM25 matrix with the ``text_rows`` documents' entries replaced, in O(entries) numpy work
    (a refit would re-tokenize the whole catalog). New and changed documents are scored with the
    index's statistics: the Lucene IDF from its document frequencies (plus the new documents' own
    terms, new terms included) and an average length estimated once from a sample of documents;
    the other documents keep their scores. A rebuild recomputes every statistic."""
    n2 = len(catalog)
    if not text_rows.size and source.n_items == n2:
        return source
    bm25 = source._bm25
    if bm25 is None or not source._vocab or getattr(bm25, "method", "") != "lucene" or bm25.nonoccurrence_array is not None:
        return type(source)(source.config).fit(catalog)
    old = bm25.scores
    data, indices, indptr = np.asarray(old["data"]), np.asarray(old["indices"]), np.asarray(old["indptr"])
    n_old, n_vocab = int(old["num_docs"]), indptr.shape[0] - 1
    avgdl = getattr(source, "_avgdl", None)
    if avgdl is None:
        rng = np.random.default_rng(0)
        sample = rng.choice(n_old, min(n_old, _AVGDL_SAMPLE), replace=False) if n_old else []
        docs = source._tokenize([source.document(catalog, int(i)) for i in sample])
        avgdl = float(np.mean([len(d) for d in docs])) if len(docs) else 1.0
        source._avgdl = avgdl  # a cache only: later changes of the same index reuse the estimate
    vocab = dict(source._vocab)
    docs = source._tokenize([source.document(catalog, int(i)) for i in text_rows])
    rows, cols, tfs, lengths = [], [], [], []
    for row, tokens in zip(text_rows, docs, strict=True):
        counts: dict[int, int] = {}
        for t in tokens:
            tid = vocab.setdefault(t, len(vocab))
            counts[tid] = counts.get(tid, 0) + 1
        rows += [int(row)] * len(counts)
        cols += list(counts)
        tfs += list(counts.values())
        lengths += [len(tokens)] * len(counts)
    n_vocab2 = len(vocab)
    token_of = np.repeat(np.arange(n_vocab, dtype=np.int64), np.diff(indptr))
    keep = ~np.isin(indices, text_rows)  # a changed document's old entries go
    df = np.zeros(n_vocab2, dtype=np.float64)
    df[:n_vocab] = np.diff(indptr)
    df -= np.bincount(token_of[~keep], minlength=n_vocab2)
    cols_a = np.asarray(cols, dtype=np.int64)
    df += np.bincount(cols_a, minlength=n_vocab2)
    n_docs = float(n_old - np.unique(indices[~keep]).size + text_rows.size)
    idf = np.log(1.0 + (n_docs - df[cols_a] + 0.5) / (df[cols_a] + 0.5))
    tf = np.asarray(tfs, dtype=np.float64)
    k1, b = bm25.k1, bm25.b
    fresh = idf * tf / (tf + k1 * (1 - b + b * np.asarray(lengths, dtype=np.float64) / avgdl))
    matrix = sp.csc_matrix((np.concatenate([data[keep], fresh.astype(data.dtype)]),
                            (np.concatenate([indices[keep].astype(np.int64), np.asarray(rows, dtype=np.int64)]),
                             np.concatenate([token_of[keep], cols_a]))), shape=(n2, n_vocab2), dtype=data.dtype)
    matrix.sort_indices()
    grown = copy.copy(bm25)
    grown.scores = {"data": matrix.data, "indices": matrix.indices.astype(indices.dtype),
                    "indptr": matrix.indptr.astype(indptr.dtype), "num_docs": n2}
    grown.vocab_dict = vocab
    grown.unique_token_ids_set = set(vocab.values())
    new = copy.copy(source)
    new._bm25, new._vocab, new.n_items, new._avgdl = grown, dict(vocab), n2, avgdl
    return new


def _grow_popularity(source: Any, catalog: Catalog, text_rows: np.ndarray, attr_rows: np.ndarray,
                     text_vectors: np.ndarray) -> Any:
    new = copy.copy(source)
    new.scores = _pad(source._fitted(), len(catalog))
    new._order = None
    return new


def _grow_item_cf(source: Any, catalog: Catalog, text_rows: np.ndarray, attr_rows: np.ndarray,
                  text_vectors: np.ndarray) -> Any:
    new = copy.copy(source)
    new.similarity = _pad_csr(source._require(), len(catalog), len(catalog))
    new._scratch = None
    return new


def _grow_user_cf(source: Any, catalog: Catalog, text_rows: np.ndarray, attr_rows: np.ndarray,
                  text_vectors: np.ndarray) -> Any:
    new = copy.copy(source)
    users = source._require()
    new._set(_pad_csr(users, users.shape[0], len(catalog)))
    return new


def _grow_two_tower(source: Any, catalog: Catalog, text_rows: np.ndarray, attr_rows: np.ndarray,
                    text_vectors: np.ndarray) -> Any:
    """``text_vectors`` here are those of ``attr_rows`` (every row whose vector is recomputed)."""
    import torch

    from tandem.retrieval.two_tower_model import ItemFeatures, _masked_mean

    net = source._require()
    tower = net.items
    n_old, n2 = source.n_items, len(catalog)
    rows = np.asarray(attr_rows, dtype=np.int64)
    table_old = source._table_cache if source._table_cache is not None else source._table()
    with torch.no_grad():
        content = torch.zeros((rows.size, table_old.shape[1]), dtype=table_old.dtype)
        if rows.size and tower.use_features and source.features is not None:
            f = ItemFeatures.from_vocab(catalog.subset(rows), source.features.vocab)
            content += _masked_mean(tower.tag_emb, torch.from_numpy(f.tags[1:]))
            content += _masked_mean(tower.cat_emb, torch.from_numpy(f.categories[1:]))
            content += tower.brand_emb(torch.from_numpy(f.brands[1:])) + tower.price_emb(
                torch.from_numpy(f.price_buckets[1:]))
        if rows.size and tower.use_text:
            content += tower.text_proj(torch.from_numpy(np.ascontiguousarray(text_vectors, dtype=np.float32)))
        known = rows < tower.ids.num_embeddings - 1  # an item the model was trained on keeps its id part
        if known.any():
            content[torch.from_numpy(known)] += tower.ids(torch.from_numpy(rows[known] + 1))
        table = torch.empty((n2 + 1, table_old.shape[1]), dtype=table_old.dtype)
        table[: n_old + 1] = table_old
        table[torch.from_numpy(rows + 1)] = content
        vecs_old = source._item_vectors if source._item_vectors is not None else source.encode_items()
        vectors = np.empty((n2, vecs_old.shape[1]), dtype=np.float32)
        vectors[:n_old] = vecs_old
        if rows.size:
            vectors[rows] = net.item_out(content).numpy()
    new = copy.copy(source)
    new.n_items = n2
    new._table_cache = table
    new._item_vectors = np.ascontiguousarray(vectors)
    new._vectors_final = True  # encode_items answers these (the net's own tables cover the trained items)
    new._last_user = None
    new._index = grow_index(source._index, vectors, rows) if source._index is not None else None
    return new


#: source name -> how a fitted one is grown; a bundle with another source cannot take live changes
LIVE_SOURCES: dict[str, Callable[..., Any]] = {
    "text": _grow_text,
    "lexical": _grow_lexical,
    "popularity": _grow_popularity,
    "item_cf": _grow_item_cf,
    "user_cf": _grow_user_cf,
    "two_tower": _grow_two_tower,
}


def _pad(a: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, dtype=a.dtype)
    out[: a.shape[0]] = a
    return out


def _pad_csr(m: sp.csr_matrix, rows: int, cols: int) -> sp.csr_matrix:
    indptr = np.concatenate([m.indptr, np.full(rows - m.shape[0], m.indptr[-1], dtype=m.indptr.dtype)])
    out = sp.csr_matrix((m.data, m.indices, indptr), shape=(rows, cols))
    out.has_sorted_indices = m.has_sorted_indices
    return out


def grow_sources(sources: Mapping[str, CandidateSource], catalog: Catalog, text_rows: np.ndarray,
                 attr_rows: np.ndarray, encode: Encode | None) -> dict[str, CandidateSource]:
    """New sources for ``catalog``: ``text_rows`` (int64) are the rows whose text is new or changed
    (encoded with ``encode``, texts from :meth:`Catalog.text`, in one batch), ``attr_rows`` those
    whose item-tower input changed (a superset: price changes too). Raises ValueError naming a
    source that cannot take live changes, or when text must be encoded and ``encode`` is None."""
    unknown = sorted(set(sources) - set(LIVE_SOURCES))
    if unknown:
        raise ValueError(f"source(s) {', '.join(unknown)} cannot take live catalog changes; rebuild the bundle "
                         "to change its catalog")
    text_rows = np.asarray(text_rows, dtype=np.int64)
    attr_rows = np.asarray(attr_rows, dtype=np.int64)
    if text_rows.size and encode is None:
        raise ValueError("this bundle has no text encoder to encode new item texts with")
    text_vectors = (encode([catalog.text(int(i)) for i in text_rows]) if text_rows.size
                    else np.zeros((0, 0), dtype=np.float32))
    out = {}
    for name, source in sources.items():
        if name == "two_tower":
            continue
        out[name] = LIVE_SOURCES[name](source, catalog, text_rows, attr_rows, text_vectors)
    if "two_tower" in sources:
        tt = sources["two_tower"]
        attr_vectors = None
        if tt.text_dim is not None and attr_rows.size:
            text = out.get("text")
            if text is not None and text.vectors.shape[1] == tt.text_dim:
                attr_vectors = text.vectors[attr_rows]
            elif encode is not None:
                attr_vectors = encode([catalog.text(int(i)) for i in attr_rows])
            else:
                raise ValueError("the two-tower model reads text vectors and this bundle has no text encoder")
        out["two_tower"] = _grow_two_tower(tt, catalog, text_rows, attr_rows, attr_vectors)
    return {name: out[name] for name in sources}
