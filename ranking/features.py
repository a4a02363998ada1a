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
    "HistorySummary",
    "build_item_table",
    "request_context",
    "summarise_history",
    "feature_names",
    "compute_features",
    "save_item_table",
    "load_item_table",
]

_DAY = 86400.0

#: Item-CF matrices up to this many entries also keep a transposed copy for the reverse-similarity
#: feature (8 bytes an entry; 4M entries on the 100k-item synthetic shop = 33 MB).
CF_TRANSPOSE_MAX_NNZ = 50_000_000
#: Items with up to this many tags keep them as a padded int32 row too (see ``ItemTable.tag_rows``).
MAX_PADDED_TAGS = 64
#: Id spaces (tags; categories and brands) up to this size are looked up through a dense
#: per-request table; larger ones by binary search.
MAX_DENSE_LOOKUP = 1 << 16


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
        # leaf, top-level category and brand ids in one id space (leaf ids, then top-level ids, then
        # brand ids; unknown = the space's size), so the three affinity features are one look-up
        sizes = [int(a.max()) + 1 if a.size else 0 for a in (self.leaf, self.top, self.brand)]
        self.affinity_space = sum(sizes)
        ids = np.stack([self.leaf, self.top, self.brand], axis=1).astype(np.int64) + np.cumsum([0] + sizes[:2])
        known = np.stack([self.leaf, self.top, self.brand], axis=1) >= 0
        self.affinity_ids = np.where(known, ids, self.affinity_space).astype(np.int32)
        # each item's tags as a padded row (padding = the number of tags) when the tag matrix is binary
        # and rows are short: the tag-overlap feature then gathers rows instead of walking the csr arrays
        self.tag_rows: np.ndarray | None = None
        tags = self.tag_sets
        lengths = np.diff(tags.indptr)
        if tags.nnz and lengths.max() <= MAX_PADDED_TAGS and np.all(tags.data == 1):
            rows = np.full((tags.shape[0], int(lengths.max())), tags.shape[1], dtype=np.int32)
            at = np.arange(tags.nnz) - np.repeat(tags.indptr[:-1], lengths)
            rows[np.repeat(np.arange(tags.shape[0]), lengths), at] = tags.indices
            self.tag_rows = rows

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
class HistorySummary:
    """What the features need of a history, whatever the candidates: computed once per history
    (and kept in the request's memo across requests while the history is unchanged).

    ``text_recent`` / ``text_last`` float32 (d2,) or None: the recency-weighted text vector of
    the last ``recent`` items and the last item's; ``cf_cols`` int32 sorted with ``cf_last`` and
    ``cf_recent`` float32: the item-CF row of the last item and the recency-weighted rows of the
    last ``recent`` items over the union of their columns; ``cf_rev_cols`` / ``cf_rev`` the
    last item's column of the CF matrix (who points at it), None without a transposed copy;
    ``affinity`` the history's leaf, top-level and brand ids (``ItemTable.affinity_ids``,
    sorted) and each one's share of the history's known ids of its kind; ``tags`` the recent
    items' tags (sorted) and their counts; ``last_leaf`` the last item's leaf id;
    ``median_log_price`` NaN when no price is known. Everything is sparse, so a summary stays a
    few kilobytes whatever the catalog's size.
    """

    length: int
    n_recent: int
    text_recent: np.ndarray | None = None
    text_last: np.ndarray | None = None
    cf_cols: np.ndarray | None = None
    cf_last: np.ndarray | None = None
    cf_recent: np.ndarray | None = None
    cf_rev_cols: np.ndarray | None = None
    cf_rev: np.ndarray | None = None
    affinity: tuple[np.ndarray, np.ndarray] | None = None
    tags: tuple[np.ndarray, np.ndarray] | None = None
    last_leaf: int = -1
    median_log_price: float = float("nan")


def summarise_history(table: ItemTable, history: np.ndarray, recent: int = 5) -> HistorySummary:
    """The candidate-independent part of :func:`compute_features` for ``history`` (oldest first)."""
    hist = np.asarray(history, dtype=np.int64)
    h = hist.shape[0]
    if h == 0:
        return HistorySummary(length=0, n_recent=0)
    last = hist[-recent:]
    w = _recent_weights(last.shape[0])
    out = HistorySummary(length=h, n_recent=int(last.shape[0]), last_leaf=int(table.leaf[hist[-1]]))
    if table.text_vecs is not None:
        out.text_recent = w @ table.text_vecs[last]
        out.text_last = table.text_vecs[hist[-1]]
    if table.cf is not None:
        at_row, at_col, vals = row_entries(table.cf, last)
        cols, inv = np.unique(at_col, return_inverse=True)
        is_last = at_row == last.shape[0] - 1
        out.cf_cols = cols.astype(np.int32)
        out.cf_last = np.bincount(inv[is_last], weights=vals[is_last], minlength=cols.shape[0]).astype(np.float32)
        out.cf_recent = np.bincount(inv, weights=w[at_row] * vals, minlength=cols.shape[0]).astype(np.float32)
        if table.cf_t is not None:  # views of one row of the transposed copy: nothing copied
            s, e = table.cf_t.indptr[hist[-1]], table.cf_t.indptr[hist[-1] + 1]
            out.cf_rev_cols, out.cf_rev = table.cf_t.indices[s:e], table.cf_t.data[s:e]
    keys = table.affinity_ids[hist]  # (h, 3)
    kinds = []
    for kind in range(3):
        ids, counts = np.unique(keys[:, kind][keys[:, kind] < table.affinity_space], return_counts=True)
        kinds.append((ids, counts.astype(np.float32) / max(1, int(counts.sum()))))
    out.affinity = (np.concatenate([k for k, _ in kinds]), np.concatenate([v for _, v in kinds]))
    _, t_cols, t_vals = row_entries(table.tag_sets, last)
    tags, inv = np.unique(t_cols, return_inverse=True)
    out.tags = (tags.astype(np.int32), np.bincount(inv, weights=t_vals, minlength=tags.shape[0]).astype(np.float32))
    hp = table.log_price[hist]
    hp = hp[~np.isnan(hp)]
    if hp.size:
        out.median_log_price = float(np.median(hp))
    return out


@dataclass
class RequestContext:
    """One request's summary: ``history`` int64 (h,) oldest first, ``user_vec`` float32 (d1,)
    or None, ``query_vec`` float32 (d2,) or None, ``now`` epoch seconds, ``summary`` the
    history's :class:`HistorySummary` (computed on first use when None)."""

    history: np.ndarray
    user_vec: np.ndarray | None
    query_vec: np.ndarray | None
    now: int
    is_search: bool
    summary: HistorySummary | None = None


#: The key of the history summary in a request's memo (see ``RetrievalRequest.memo``).
MEMO_KEY = "features.history"


def request_context(
    table: ItemTable,
    history: np.ndarray,
    *,
    user_vec: np.ndarray | None = None,
    query_vec: np.ndarray | None = None,
    now: int | None = None,
    is_search: bool = False,
    memo: dict | None = None,
) -> RequestContext:
    """A request's context; with ``memo``, the history summary is taken from it or stored in it."""
    history = np.asarray(history, dtype=np.int64)
    summary = memo.get(MEMO_KEY) if memo is not None else None
    if summary is None:
        summary = summarise_history(table, history)
        if memo is not None:
            memo[MEMO_KEY] = summary
    return RequestContext(
        history=history,
        user_vec=user_vec,
        query_vec=query_vec,
        now=table.now if now is None else int(now),
        is_search=is_search,
        summary=summary,
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


_C = {name: i for i, name in enumerate(_OTHER_COLUMNS)}


def feature_names(sources: Sequence[str]) -> list[str]:
    """Column names of :func:`compute_features` for a given source order."""
    names = [f"{s}_{c}" for s in sources for c in _SOURCE_COLUMNS]
    return names + list(_OTHER_COLUMNS)


def _recent_weights(h: int, half_life: float = 3.0) -> np.ndarray:
    """Recency weights for a history of length h (oldest first), summing to 1."""
    w = np.power(0.5, np.arange(h - 1, -1, -1, dtype=np.float32) / half_life)
    return w / w.sum()


def _find(cols: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where ``keys`` (any shape) sit in the sorted non-empty ``cols``: (found bool, position),
    the position clipped to a valid index where not found."""
    at = np.minimum(np.searchsorted(cols, keys), cols.shape[0] - 1)
    return cols[at] == keys, at


def _values_at(ids: np.ndarray, values: np.ndarray, at: np.ndarray, space: int) -> np.ndarray:
    """float32 shaped like ``at``: ``values`` of the sorted ``ids`` found in ``at``, 0 elsewhere
    (``at`` holds ids below ``space``, or ``space`` itself for none)."""
    if space <= MAX_DENSE_LOOKUP:
        dense = np.zeros(space + 1, dtype=np.float32)
        dense[ids] = values
        return dense[at]
    hit, pos = _find(ids, at)
    return np.where(hit, values[pos], 0.0).astype(np.float32)


#: 1 / log2(rank + 1) for ranks 0..n (0 = not found reads 0); grown on demand.
_DISCOUNT = np.concatenate([[0.0], 1.0 / np.log2(np.arange(1, 1025, dtype=np.float32) + 1.0)]).astype(np.float32)


def _rank_discount(ranks: np.ndarray) -> np.ndarray:
    global _DISCOUNT
    top = int(ranks.max()) if ranks.size else 0
    if top >= _DISCOUNT.shape[0]:
        grown = np.arange(1, 2 * top + 1, dtype=np.float32)
        _DISCOUNT = np.concatenate([[0.0], 1.0 / np.log2(grown + 1.0)]).astype(np.float32)
    return _DISCOUNT[np.maximum(ranks, 0)]


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
    :func:`feature_names`. The history's part comes from ``ctx.summary`` (computed here with
    ``recent`` when the context has none).
    """
    items = np.asarray(items, dtype=np.int64)
    m = items.shape[0]
    n_src = ranks.shape[0]
    hs = ctx.summary if ctx.summary is not None else summarise_history(table, ctx.history, recent)
    out = np.zeros((3 * n_src + len(_OTHER_COLUMNS), m), dtype=np.float32)  # one row per feature
    found = ranks > 0
    src = out[: 3 * n_src].reshape(n_src, 3, m)
    src[:, 0] = found
    src[:, 1] = _rank_discount(ranks)
    src[:, 2] = source_scores
    np.copyto(src[:, 2], 0.0, where=~found)
    order = np.argsort(-fused_scores, kind="stable")
    fused_rank = np.empty(m, dtype=np.int64)
    fused_rank[order] = np.arange(1, m + 1)
    o = out[3 * n_src :]
    o[_C["fused_score"]] = fused_scores
    o[_C["fused_rank_inv"]] = _rank_discount(fused_rank)
    o[_C["n_sources"]] = found.sum(0)

    if table.tt_vecs is not None and ctx.user_vec is not None:
        o[_C["tt_dot"]] = table.tt_vecs[items] @ ctx.user_vec
    if table.text_vecs is not None:
        tv = table.text_vecs[items]
        if hs.text_recent is not None:
            o[_C["text_user"]] = tv @ hs.text_recent
            o[_C["text_last"]] = tv @ hs.text_last
        if ctx.query_vec is not None:
            o[_C["text_query"]] = tv @ ctx.query_vec
    items32 = items.astype(np.int32)  # the csr column dtype: searches without converting
    if hs.cf_cols is not None and hs.cf_cols.shape[0]:
        hit, at = _find(hs.cf_cols, items32)
        o[_C["cf_last"]] = np.where(hit, hs.cf_last[at], 0.0)
        o[_C["cf_recent"]] = np.where(hit, hs.cf_recent[at], 0.0)
    if hs.cf_rev_cols is not None and hs.cf_rev_cols.shape[0]:
        hit, at = _find(hs.cf_rev_cols, items32)  # a search: a dense table over the catalog costs more
        o[_C["cf_reverse_last"]] = np.where(hit, hs.cf_rev[at], 0.0)
    elif hs.length and table.cf is not None and table.cf_t is None:  # the candidates' own rows
        o[_C["cf_reverse_last"]] = rows_values(table.cf, items, ctx.history[-1:])[:, 0]

    if hs.affinity is not None and hs.affinity[0].shape[0]:
        ids = table.affinity_ids[items].T  # (3, m): leaf, top, brand
        o[_C["leaf_affinity"] : _C["leaf_affinity"] + 3] = _values_at(*hs.affinity, ids, table.affinity_space)
    if hs.length:
        if hs.tags is not None and hs.tags[0].shape[0]:
            n_tags = table.tag_sets.shape[1]
            if table.tag_rows is not None:
                overlap = _values_at(*hs.tags, table.tag_rows[items], n_tags).sum(1)
            else:
                t_rows, t_cols, t_vals = row_entries(table.tag_sets, items)
                overlap = np.bincount(t_rows, weights=t_vals * _values_at(*hs.tags, t_cols, n_tags), minlength=m)
            o[_C["tag_overlap"]] = overlap / max(1.0, float(hs.n_recent))
        o[_C["same_leaf_last"]] = (table.leaf[items] == hs.last_leaf) & (hs.last_leaf >= 0)
    cp = table.log_price[items]
    has_price = ~np.isnan(cp)
    if not np.isnan(hs.median_log_price) and has_price.any():
        gap = np.where(has_price, cp - np.float32(hs.median_log_price), 0.0)
        o[_C["price_gap"]] = gap
        o[_C["price_gap_abs"]] = np.abs(gap)
    o[_C["has_price"]] = has_price
    o[_C["log_pop"]] = table.log_pop[items]
    o[_C["log_trend"]] = table.log_trend[items]
    fs = table.first_seen[items]
    o[_C["log_age_days"]] = np.log1p(np.where(fs >= 0, np.maximum(ctx.now - fs, 0) / _DAY, 0.0))
    o[_C["log_history_len"]] = np.log1p(hs.length)
    o[_C["is_search"]] = float(ctx.is_search)
    bad = ~np.isfinite(out)
    if bad.any():
        out[bad] = 0.0
    return out.T


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
