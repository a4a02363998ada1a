"""Ranking features for (request, candidate) pairs.

:class:`ItemTable` holds per-item arrays computed once per bundle (vectors, popularity,
category and brand ids, prices, release times, the item-CF neighbour matrix);
:func:`request_context` summarises one request (the user's history, the query);
:func:`compute_features` turns a fused candidate list into a float32 matrix (m, F) whose
columns are named by :func:`feature_names`. Everything is numpy; no torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from retrieval.data import Catalog, Interactions
from retrieval.sparse import row_entries, rows_values

__all__ = [
    "ItemTable",
    "RequestContext",
    "build_item_table",
    "request_context",
    "feature_names",
    "compute_features",
    "save_item_table",
    "load_item_table",
]

_DAY = 86400.0

#: Item-CF matrices up to this many entries also keep a transposed copy for the reverse-similarity
#: feature (8 bytes an entry; 4M entries on the 100k-item synthetic shop = 33 MB).
CF_TRANSPOSE_MAX_NNZ = 50_000_000


@dataclass
class ItemTable:
    """Per-item arrays, all with first dimension n_items.

    ``tt_vecs`` float32 (n, d1) two-tower item vectors (or None); ``text_vecs`` float32 (n, d2)
    L2-normalised text vectors (or None); ``cf`` csr (n, n) item-item similarity, row = the item
    a user had, column = the candidate (or None); ``log_pop`` / ``log_trend`` float32 (n,);
    ``leaf`` / ``top`` / ``brand`` int32 (n,) category-leaf, top-level-category and brand ids
    (-1 unknown); ``log_price`` float32 (n,) NaN unknown; ``first_seen`` int64 (n,) epoch seconds
    (-1 never seen); ``tag_sets`` csr (n, n_tags) binary.
    """

    tt_vecs: np.ndarray | None
    text_vecs: np.ndarray | None
    cf: sp.csr_matrix | None
    log_pop: np.ndarray
    log_trend: np.ndarray
    leaf: np.ndarray
    top: np.ndarray
    brand: np.ndarray
    log_price: np.ndarray
    first_seen: np.ndarray
    tag_sets: sp.csr_matrix
    now: int

    def __post_init__(self) -> None:
        self.cf_t: sp.csr_matrix | None = None
        if self.cf is not None:
            if not self.cf.has_sorted_indices:
                self.cf.sort_indices()  # the look-ups search within rows
            if self.cf.nnz <= CF_TRANSPOSE_MAX_NNZ:
                # column j of cf as a row: "how similar is each candidate to the last item?" reads one
                # contiguous row instead of searching 300 rows (~0.2 ms of cache misses per request)
                self.cf_t = self.cf.T.tocsr()
                self.cf_t.sort_indices()

    @property
    def n_items(self) -> int:
        return int(self.log_pop.shape[0])


def _intern(values: Sequence[str]) -> np.ndarray:
    index: dict[str, int] = {}
    out = np.empty(len(values), dtype=np.int32)
    for i, v in enumerate(values):
        out[i] = -1 if not v else index.setdefault(v, len(index))
    return out


def build_item_table(
    catalog: Catalog,
    interactions: Interactions,
    *,
    tt_vecs: np.ndarray | None = None,
    text_vecs: np.ndarray | None = None,
    cf: sp.csr_matrix | None = None,
    trend_half_life_days: float = 14.0,
) -> ItemTable:
    """Per-item feature arrays from the catalog and the training interactions."""
    n = len(catalog)
    counts = np.bincount(interactions.items, minlength=n).astype(np.float64)
    now = int(interactions.ts.max()) if len(interactions) else 0
    age_days = (now - interactions.ts) / _DAY
    decay = np.power(0.5, age_days / trend_half_life_days)
    trend = np.bincount(interactions.items, weights=decay, minlength=n)
    first_seen = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, interactions.items, interactions.ts)
    first_seen[first_seen == np.iinfo(np.int64).max] = -1
    leaf = _intern(catalog.categories)
    top = _intern([c.split(" > ")[0] if c else "" for c in catalog.categories])
    brand = _intern(catalog.brands)
    tag_index: dict[str, int] = {}
    rows, cols = [], []
    for i, tags in enumerate(catalog.tags):
        for t in tags:
            rows.append(i)
            cols.append(tag_index.setdefault(t, len(tag_index)))
    tag_sets = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, max(1, len(tag_index)))
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        log_price = np.where(catalog.prices > 0, np.log(catalog.prices), np.nan).astype(np.float32)
    return ItemTable(
        tt_vecs=tt_vecs,
        text_vecs=text_vecs,
        cf=cf.tocsr() if cf is not None else None,
        log_pop=np.log1p(counts).astype(np.float32),
        log_trend=np.log1p(trend).astype(np.float32),
        leaf=leaf,
        top=top,
        brand=brand,
        log_price=log_price,
        first_seen=first_seen,
        tag_sets=tag_sets.tocsr(),
        now=now,
    )


@dataclass
class RequestContext:
    """One request's summary: ``history`` int64 (h,) oldest first, ``user_vec`` float32 (d1,)
    or None, ``query_vec`` float32 (d2,) or None, ``now`` epoch seconds."""

    history: np.ndarray
    user_vec: np.ndarray | None
    query_vec: np.ndarray | None
    now: int
    is_search: bool


def request_context(
    table: ItemTable,
    history: np.ndarray,
    *,
    user_vec: np.ndarray | None = None,
    query_vec: np.ndarray | None = None,
    now: int | None = None,
    is_search: bool = False,
) -> RequestContext:
    return RequestContext(
        history=np.asarray(history, dtype=np.int64),
        user_vec=user_vec,
        query_vec=query_vec,
        now=table.now if now is None else int(now),
        is_search=is_search,
    )


_SOURCE_COLUMNS = ("found", "rank_inv", "score")
_OTHER_COLUMNS = (
    "fused_score",
    "fused_rank_inv",
    "n_sources",
    "tt_dot",
    "text_user",
    "text_last",
    "text_query",
    "cf_last",
    "cf_recent",
    "cf_reverse_last",
    "leaf_affinity",
    "top_affinity",
    "brand_affinity",
    "tag_overlap",
    "same_leaf_last",
    "price_gap",
    "price_gap_abs",
    "has_price",
    "log_pop",
    "log_trend",
    "log_age_days",
    "log_history_len",
    "is_search",
)


def feature_names(sources: Sequence[str]) -> list[str]:
    """Column names of :func:`compute_features` for a given source order."""
    names = [f"{s}_{c}" for s in sources for c in _SOURCE_COLUMNS]
    return names + list(_OTHER_COLUMNS)


def _recent_weights(h: int, half_life: float = 3.0) -> np.ndarray:
    """Recency weights for a history of length h (oldest first), summing to 1."""
    w = np.power(0.5, np.arange(h - 1, -1, -1, dtype=np.float32) / half_life)
    return w / w.sum()


def compute_features(
    table: ItemTable,
    ctx: RequestContext,
    items: np.ndarray,
    fused_scores: np.ndarray,
    ranks: np.ndarray,
    source_scores: np.ndarray,
    recent: int = 5,
) -> np.ndarray:
    """Feature matrix float32 (m, F) for candidates ``items`` int64 (m,).

    ``ranks`` int32 (n_sources, m) 1-based (0 = not found) and ``source_scores`` float32
    (n_sources, m) (NaN = not found) come from fusion, in the source order passed to
    :func:`feature_names`.
    """
    items = np.asarray(items, dtype=np.int64)
    m = items.shape[0]
    n_src = ranks.shape[0]
    cols: list[np.ndarray] = []
    found = ranks > 0
    rank_inv = np.where(found, 1.0 / np.log2(np.maximum(ranks, 1).astype(np.float32) + 1.0), 0.0)
    scores = np.nan_to_num(source_scores, nan=0.0)
    for s in range(n_src):
        cols += [found[s].astype(np.float32), rank_inv[s], scores[s]]
    order = np.argsort(-fused_scores, kind="stable")
    fused_rank = np.empty(m, dtype=np.float32)
    fused_rank[order] = np.arange(1, m + 1)
    cols += [fused_scores.astype(np.float32), 1.0 / np.log2(fused_rank + 1.0), found.sum(0).astype(np.float32)]

    hist = ctx.history
    h = hist.shape[0]
    last = hist[-recent:]
    zeros = np.zeros(m, dtype=np.float32)

    if table.tt_vecs is not None and ctx.user_vec is not None:
        cols.append(table.tt_vecs[items] @ ctx.user_vec)
    else:
        cols.append(zeros)
    if table.text_vecs is not None:
        tv = table.text_vecs[items]
        if h:
            w = _recent_weights(last.shape[0])
            cols.append(tv @ (w @ table.text_vecs[last]))
            cols.append(tv @ table.text_vecs[hist[-1]])
        else:
            cols += [zeros, zeros]
        cols.append(tv @ ctx.query_vec if ctx.query_vec is not None else zeros)
    else:
        cols += [zeros, zeros, zeros]

    if table.cf is not None and h:
        sub = rows_values(table.cf, last, items)  # (r, m)
        cols.append(sub[-1])
        cols.append(_recent_weights(last.shape[0]) @ sub)
        if table.cf_t is not None:  # column hist[-1] of cf = one row of its transpose
            cols.append(rows_values(table.cf_t, hist[-1:], items)[0])
        else:  # the candidates' own rows
            cols.append(rows_values(table.cf, items, hist[-1:])[:, 0])
    else:
        cols += [zeros, zeros, zeros]

    if h:
        def affinity(ids: np.ndarray) -> np.ndarray:
            hv = ids[hist]
            hv = hv[hv >= 0]
            if hv.size == 0:
                return zeros
            counts = np.bincount(hv).astype(np.float32) / hv.size
            counts = np.concatenate([counts, np.zeros(1, np.float32)])  # index -1 / unseen ids read 0
            c = np.minimum(ids[items], counts.shape[0] - 1)  # ids beyond the history's are unseen
            return counts[c]

        cols += [affinity(table.leaf), affinity(table.top), affinity(table.brand)]
        tags = table.tag_sets
        t_rows, t_cols, t_vals = row_entries(tags, last)
        hist_tags = np.bincount(t_cols, weights=t_vals, minlength=tags.shape[1])
        t_rows, t_cols, t_vals = row_entries(tags, items)
        overlap = np.bincount(t_rows, weights=t_vals * hist_tags[t_cols], minlength=m)
        cols.append(overlap.astype(np.float32) / max(1.0, float(last.shape[0])))
        lv = table.leaf[hist[-1]]
        cols.append(((table.leaf[items] == lv) & (lv >= 0)).astype(np.float32))
        hp = table.log_price[hist]
        hp = hp[~np.isnan(hp)]
    else:
        cols += [zeros] * 5
        hp = np.zeros(0, dtype=np.float32)
    cp = table.log_price[items]
    has_price = ~np.isnan(cp)
    if hp.size and has_price.any():
        gap = np.where(has_price, cp - np.median(hp), 0.0).astype(np.float32)
    else:
        gap = zeros
    cols += [gap, np.abs(gap), has_price.astype(np.float32)]
    cols += [table.log_pop[items], table.log_trend[items]]
    fs = table.first_seen[items]
    age = np.where(fs >= 0, np.maximum(ctx.now - fs, 0) / _DAY, 0.0)
    cols.append(np.log1p(age).astype(np.float32))
    cols.append(np.full(m, np.log1p(h), dtype=np.float32))
    cols.append(np.full(m, float(ctx.is_search), dtype=np.float32))
    out = np.stack([np.asarray(c, dtype=np.float32) for c in cols], axis=1)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def save_item_table(table: ItemTable, folder: Path) -> list[Path]:
    """Write the catalog-derived arrays (vectors and the CF matrix belong to their sources)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "item_table.npz"
    tags = table.tag_sets.tocsr()
    np.savez(path, log_pop=table.log_pop, log_trend=table.log_trend, leaf=table.leaf, top=table.top,
             brand=table.brand, log_price=table.log_price, first_seen=table.first_seen,
             tag_data=tags.data, tag_indices=tags.indices, tag_indptr=tags.indptr,
             tag_shape=np.array(tags.shape, dtype=np.int64), now=np.array(table.now, dtype=np.int64))
    return [path]


def load_item_table(folder: Path, *, tt_vecs: np.ndarray | None = None, text_vecs: np.ndarray | None = None,
                    cf: sp.csr_matrix | None = None) -> ItemTable:
    with np.load(Path(folder) / "item_table.npz", allow_pickle=False) as z:
        tag_sets = sp.csr_matrix((z["tag_data"], z["tag_indices"], z["tag_indptr"]), shape=tuple(z["tag_shape"]))
        return ItemTable(tt_vecs=tt_vecs, text_vecs=text_vecs, cf=cf.tocsr() if cf is not None else None,
                         log_pop=z["log_pop"], log_trend=z["log_trend"], leaf=z["leaf"], top=z["top"],
                         brand=z["brand"], log_price=z["log_price"], first_seen=z["first_seen"],
                         tag_sets=tag_sets, now=int(z["now"]))
