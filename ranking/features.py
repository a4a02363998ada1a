"""Ranking features for (request, candidate) pairs.

:func:`compute_features` turns a fused candidate list into a float32 matrix (m, F) whose
columns are named by :func:`feature_names`, from the bundle's :class:`~ranking.item_table.ItemTable`
and the request's :class:`~ranking.request_context.RequestContext`. The loop over the candidates
is compiled with numba (``nogil``, cached on disk after the first compile). No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numba as nb
import numpy as np

from tandem.ranking.item_table import ItemTable
from tandem.ranking.request_context import RequestContext, summarise_history
from tandem.retrieval.sparse import rows_values

__all__ = ["feature_names", "compute_features"]


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
