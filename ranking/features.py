"""Ranking features for (request, candidate) pairs.

:class:`ItemTable` holds per-item arrays computed once per bundle (vectors, popularity,
category and brand ids, prices, release times, the item-CF neighbour matrix);
:func:`request_context` summarises one request (the user's history, the query);
:func:`compute_features` turns a fused candidate list into a float32 matrix (m, F) whose
columns are named by :func:`feature_names`. The history summary is numpy; the loop over the
candidates is compiled with numba (``nogil``, cached on disk after the first compile). No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numba as nb
import numpy as np
import scipy.sparse as sp

from retrieval.base import ScratchTables
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
        self._kernel: dict[str, np.ndarray] | None = None
        # per-request scratch of the compiled feature loop: item -> candidate position, and dense
        # value tables over the affinity and tag id spaces (see retrieval.base.ScratchTables)
        self.positions = ScratchTables(self.n_items, np.int32, -1)
        self.affinity_values = ScratchTables(self.affinity_space + 1, np.float32, 0.0)
        self.tag_values = ScratchTables(self.tag_sets.shape[1], np.float32, 0.0)

    def kernel_arrays(self) -> dict[str, np.ndarray]:
        """The arrays :func:`compute_features`' compiled loop reads, in the dtypes it was compiled
        for (converted once; views where they already are). Vectors absent read as (0, 0)."""
        if self._kernel is None:
            tags = self.tag_sets

            def vecs(v: np.ndarray | None) -> np.ndarray:
                return np.zeros((0, 0), np.float32) if v is None else np.ascontiguousarray(v, dtype=np.float32)

            self._kernel = {
                "tt_vecs": vecs(self.tt_vecs), "text_vecs": vecs(self.text_vecs),
                "tag_indptr": tags.indptr.astype(np.int64), "tag_indices": tags.indices.astype(np.int32),
                "tag_data": tags.data.astype(np.float32), "leaf": self.leaf.astype(np.int32),
                "log_price": self.log_price.astype(np.float32), "log_pop": self.log_pop.astype(np.float32),
                "log_trend": self.log_trend.astype(np.float32), "first_seen": self.first_seen.astype(np.int64),
            }
        return self._kernel

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


#: 1 / log2(rank + 1) for ranks 0..n (0 = not found reads 0); grown on demand.
_DISCOUNT = np.concatenate([[0.0], 1.0 / np.log2(np.arange(1, 1025, dtype=np.float32) + 1.0)]).astype(np.float32)


def _discount_table(top: int) -> np.ndarray:
    """:data:`_DISCOUNT`, grown to cover rank ``top``."""
    global _DISCOUNT
    if top >= _DISCOUNT.shape[0]:
        grown = np.arange(1, 2 * top + 1, dtype=np.float32)
        _DISCOUNT = np.concatenate([[0.0], 1.0 / np.log2(grown + 1.0)]).astype(np.float32)
    return _DISCOUNT


# Row of each column after the per-source ones: module constants, which numba compiles in.
_FUSED_SCORE, _FUSED_RANK_INV, _N_SOURCES = _C["fused_score"], _C["fused_rank_inv"], _C["n_sources"]
_TT_DOT, _TEXT_USER, _TEXT_LAST, _TEXT_QUERY = _C["tt_dot"], _C["text_user"], _C["text_last"], _C["text_query"]
_CF_LAST, _CF_RECENT, _CF_REVERSE_LAST = _C["cf_last"], _C["cf_recent"], _C["cf_reverse_last"]
_LEAF_AFFINITY, _TOP_AFFINITY, _BRAND_AFFINITY = _C["leaf_affinity"], _C["top_affinity"], _C["brand_affinity"]
_TAG_OVERLAP, _SAME_LEAF_LAST, _HAS_PRICE = _C["tag_overlap"], _C["same_leaf_last"], _C["has_price"]
_PRICE_GAP, _PRICE_GAP_ABS, _LOG_POP, _LOG_TREND = _C["price_gap"], _C["price_gap_abs"], _C["log_pop"], _C["log_trend"]
_LOG_AGE_DAYS, _LOG_HISTORY_LEN, _IS_SEARCH = _C["log_age_days"], _C["log_history_len"], _C["is_search"]


@nb.njit(nogil=True, cache=True)
def _position(ids, key) -> int:  # pragma: no cover - compiled
    """Index of ``key`` in the sorted ``ids``, -1 when absent."""
    lo, hi = 0, ids.shape[0]
    while lo < hi:
        mid = (lo + hi) >> 1
        if ids[mid] < key:
            lo = mid + 1
        else:
            hi = mid
    return lo if lo < ids.shape[0] and ids[lo] == key else -1


@nb.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _dot(a, b) -> float:  # pragma: no cover - compiled
    """Inner product of two float32 vectors (vectorised: the sum may be reassociated)."""
    acc = np.float32(0.0)
    for k in range(a.shape[0]):
        acc += a[k] * b[k]
    return acc


@nb.njit(nogil=True, cache=True)
def _fill_features(  # pragma: no cover - compiled
    out, positions, aff_dense, tag_dense, items, fused_scores, ranks, source_scores, discount,
    tt_vecs, user_vec, text_vecs, text_recent, text_last, query_vec,
    cf_cols, cf_last, cf_recent, cf_rev_cols, cf_rev, affinity_ids, aff_ids, aff_vals,
    tag_indptr, tag_indices, tag_data, tag_ids, tag_vals, n_recent, leaf, last_leaf,
    log_price, median_log_price, log_pop, log_trend, first_seen, now, history_len, is_search,
):
    """:func:`compute_features`' loop over the candidates; writes ``out`` (F, m), zeros on entry.
    An empty vector, id list or ``median_log_price`` NaN switches its features off (left 0)."""
    n_src, m = ranks.shape
    base = 3 * n_src
    in_order = True
    for j in range(1, m):
        if fused_scores[j] > fused_scores[j - 1]:
            in_order = False
            break
    fused_pos = np.arange(m) if in_order else np.argsort(-fused_scores, kind="mergesort")
    for p in range(m):
        out[base + _FUSED_RANK_INV, fused_pos[p]] = discount[p + 1]
    use_tt = user_vec.shape[0] > 0 and tt_vecs.shape[0] > 0
    use_text = text_vecs.shape[0] > 0
    use_recent = use_text and text_recent.shape[0] > 0
    use_query = use_text and query_vec.shape[0] > 0
    use_price = not np.isnan(median_log_price)
    log_len = np.float32(np.log1p(history_len))
    flag = np.float32(1.0 if is_search else 0.0)
    per_recent = np.float32(max(1.0, n_recent))
    o = base
    # one loop per feature group (as fast as one loop over everything, and easier to read)
    for j in range(m):
        found = 0
        for s in range(n_src):
            r = ranks[s, j]
            if r > 0:
                found += 1
                out[3 * s, j] = 1.0
                out[3 * s + 1, j] = discount[r]
                out[3 * s + 2, j] = source_scores[s, j]
        out[o + _FUSED_SCORE, j] = fused_scores[j]
        out[o + _N_SOURCES, j] = found
        out[o + _LOG_HISTORY_LEN, j] = log_len
        out[o + _IS_SEARCH, j] = flag
    for j in range(m):
        out[o + _LOG_POP, j] = log_pop[items[j]]
    for j in range(m):
        out[o + _LOG_TREND, j] = log_trend[items[j]]
    for j in range(m):
        fs = first_seen[items[j]]
        if fs >= 0:
            out[o + _LOG_AGE_DAYS, j] = np.log1p(max(now - fs, 0) / 86400.0)
    for j in range(m):
        cp = log_price[items[j]]
        if not np.isnan(cp):
            out[o + _HAS_PRICE, j] = 1.0
            if use_price:
                gap = cp - np.float32(median_log_price)
                out[o + _PRICE_GAP, j] = gap
                out[o + _PRICE_GAP_ABS, j] = abs(gap)
    if last_leaf >= 0:
        for j in range(m):
            if leaf[items[j]] == last_leaf:
                out[o + _SAME_LEAF_LAST, j] = 1.0
    if use_tt:
        for j in range(m):
            out[o + _TT_DOT, j] = _dot(tt_vecs[items[j]], user_vec)
    if use_recent:
        for j in range(m):
            row = text_vecs[items[j]]
            out[o + _TEXT_USER, j] = _dot(row, text_recent)
            out[o + _TEXT_LAST, j] = _dot(row, text_last)
    if use_query:
        for j in range(m):
            out[o + _TEXT_QUERY, j] = _dot(text_vecs[items[j]], query_vec)
    # the CF look-ups walk the history's CF entries (hundreds to thousands) through a map from
    # item to candidate position, filled for the candidates and cleared again; duplicate
    # candidates (not from fusion, but allowed) search instead
    unique = True
    for j in range(m):
        if positions[items[j]] >= 0:
            unique = False
        positions[items[j]] = j
    if unique:
        for e in range(cf_cols.shape[0]):
            j = positions[cf_cols[e]]
            if j >= 0:
                out[o + _CF_LAST, j] = cf_last[e]
                out[o + _CF_RECENT, j] = cf_recent[e]
        for e in range(cf_rev_cols.shape[0]):
            j = positions[cf_rev_cols[e]]
            if j >= 0:
                out[o + _CF_REVERSE_LAST, j] = cf_rev[e]
    for j in range(m):
        positions[items[j]] = -1
    if not unique and cf_cols.shape[0]:
        for j in range(m):
            at = _position(cf_cols, items[j])
            if at >= 0:
                out[o + _CF_LAST, j] = cf_last[at]
                out[o + _CF_RECENT, j] = cf_recent[at]
    if not unique and cf_rev_cols.shape[0]:
        for j in range(m):
            at = _position(cf_rev_cols, items[j])
            if at >= 0:
                out[o + _CF_REVERSE_LAST, j] = cf_rev[at]
    if aff_ids.shape[0]:  # dense over the (small) id space: no searches, no branches
        for e in range(aff_ids.shape[0]):
            aff_dense[aff_ids[e]] = aff_vals[e]
        for j in range(m):
            i = items[j]
            out[o + _LEAF_AFFINITY, j] = aff_dense[affinity_ids[i, 0]]
            out[o + _TOP_AFFINITY, j] = aff_dense[affinity_ids[i, 1]]
            out[o + _BRAND_AFFINITY, j] = aff_dense[affinity_ids[i, 2]]
        for e in range(aff_ids.shape[0]):
            aff_dense[aff_ids[e]] = 0.0
    if tag_ids.shape[0]:
        for e in range(tag_ids.shape[0]):
            tag_dense[tag_ids[e]] = tag_vals[e]
        for j in range(m):
            i = items[j]
            acc = np.float32(0.0)
            for e in range(tag_indptr[i], tag_indptr[i + 1]):
                acc += tag_data[e] * tag_dense[tag_indices[e]]
            out[o + _TAG_OVERLAP, j] = acc / per_recent
        for e in range(tag_ids.shape[0]):
            tag_dense[tag_ids[e]] = 0.0
    for f in range(out.shape[0]):  # features are finite: NaN or inf (a bad source score, say) reads 0
        for j in range(m):
            if not np.isfinite(out[f, j]):
                out[f, j] = 0.0


_NONE_F = np.zeros(0, dtype=np.float32)
_NONE_I = np.zeros(0, dtype=np.int32)


def _f32(a: np.ndarray | None) -> np.ndarray:
    return _NONE_F if a is None else np.ascontiguousarray(a, dtype=np.float32)


def _i32(a: np.ndarray | None) -> np.ndarray:
    return _NONE_I if a is None else np.ascontiguousarray(a, dtype=np.int32)


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
    ``recent`` when the context has none). The per-candidate work is one compiled loop
    (``_fill_features``); ``tests/ranking/test_features.py`` holds it equal to a numpy
    reference implementation.
    """
    items = np.ascontiguousarray(items, dtype=np.int64)
    m = items.shape[0]
    ranks = np.ascontiguousarray(ranks, dtype=np.int32)
    n_src = ranks.shape[0]
    hs = ctx.summary if ctx.summary is not None else summarise_history(table, ctx.history, recent)
    out = np.zeros((3 * n_src + len(_OTHER_COLUMNS), m), dtype=np.float32)  # one row per feature
    if m == 0:
        return out.T
    if (items.min() < 0 or items.max() >= table.n_items):
        raise IndexError(f"candidate items must be catalog indices in [0, {table.n_items}), "
                         f"got {int(items.min())}..{int(items.max())}")
    if ranks.shape[1] != m or np.shape(source_scores) != ranks.shape or np.shape(fused_scores) != (m,):
        raise ValueError(f"compute_features: {m} items need fused_scores ({m},) and ranks / source_scores "
                         f"(n_sources, {m}); got {np.shape(fused_scores)}, {ranks.shape}, {np.shape(source_scores)}")
    k = table.kernel_arrays()
    for name, vec, rows in (("user_vec", ctx.user_vec, k["tt_vecs"]), ("query_vec", ctx.query_vec, k["text_vecs"]),
                            ("text history vector", hs.text_recent, k["text_vecs"])):
        if vec is not None and rows.shape[0] and np.shape(vec) != (rows.shape[1],):
            raise ValueError(f"compute_features: {name} has shape {np.shape(vec)}, the item vectors "
                             f"{rows.shape[1]} dimensions")
    discount = _discount_table(max(m, int(ranks.max())))
    with_history = hs.length > 0
    rev_cols, rev = hs.cf_rev_cols, hs.cf_rev
    with table.positions.borrow() as positions, table.affinity_values.borrow() as aff_dense, \
            table.tag_values.borrow() as tag_dense:
        _fill_features(
            out, positions, aff_dense, tag_dense, items, _f32(fused_scores), ranks, _f32(source_scores), discount,
            k["tt_vecs"], _f32(ctx.user_vec), k["text_vecs"], _f32(hs.text_recent), _f32(hs.text_last),
            _f32(ctx.query_vec), _i32(hs.cf_cols), _f32(hs.cf_last), _f32(hs.cf_recent), _i32(rev_cols), _f32(rev),
            table.affinity_ids, *((_i32(hs.affinity[0]), _f32(hs.affinity[1])) if hs.affinity else (_NONE_I, _NONE_F)),
            k["tag_indptr"], k["tag_indices"], k["tag_data"],
            *((_i32(hs.tags[0]), _f32(hs.tags[1])) if with_history and hs.tags else (_NONE_I, _NONE_F)),
            float(hs.n_recent), k["leaf"], hs.last_leaf if with_history else -1, k["log_price"],
            float(hs.median_log_price), k["log_pop"], k["log_trend"], k["first_seen"], int(ctx.now), int(hs.length),
            bool(ctx.is_search),
        )
    if rev_cols is None and with_history and table.cf is not None and table.cf_t is None:
        # no transposed copy (a huge CF matrix): the candidates' own rows, searched for the last item
        col = 3 * n_src + _C["cf_reverse_last"]
        out[col] = rows_values(table.cf, items, ctx.history[-1:])[:, 0]
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
