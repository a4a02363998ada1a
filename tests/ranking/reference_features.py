"""A plain numpy implementation of ``ranking.features.compute_features`` (the one the compiled
loop replaced): the oracle that ``test_features.py`` holds the compiled loop to."""

from __future__ import annotations

import numpy as np

from tandem.ranking.features import _C, _OTHER_COLUMNS
from tandem.ranking.item_table import ItemTable
from tandem.ranking.request_context import RequestContext, summarise_history
from tandem.retrieval.sparse import row_entries, rows_values


def _lookup(ids: np.ndarray, values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """``values`` of the sorted ``ids`` at ``keys`` (any shape), 0 where absent."""
    if ids.shape[0] == 0:
        return np.zeros(keys.shape, np.float32)
    at = np.minimum(np.searchsorted(ids, keys), ids.shape[0] - 1)
    return np.where(ids[at] == keys, values[at], 0.0).astype(np.float32)


def _discount(ranks: np.ndarray) -> np.ndarray:
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r > 0, 1.0 / np.log2(np.maximum(r, 1) + 1.0), 0.0).astype(np.float32)


def reference_features(table: ItemTable, ctx: RequestContext, items, fused_scores, ranks, source_scores,
                       recent: int = 5) -> np.ndarray:
    items = np.asarray(items, dtype=np.int64)
    m = items.shape[0]
    n_src = ranks.shape[0]
    hs = ctx.summary if ctx.summary is not None else summarise_history(table, ctx.history, recent)
    out = np.zeros((3 * n_src + len(_OTHER_COLUMNS), m), dtype=np.float32)
    found = ranks > 0
    src = out[: 3 * n_src].reshape(n_src, 3, m)
    src[:, 0] = found
    src[:, 1] = _discount(ranks)
    src[:, 2] = np.where(found, source_scores, 0.0)
    fused_rank = np.empty(m, dtype=np.int64)
    fused_rank[np.argsort(-fused_scores, kind="stable")] = np.arange(1, m + 1)
    o = out[3 * n_src :]
    o[_C["fused_score"]] = fused_scores
    o[_C["fused_rank_inv"]] = _discount(fused_rank)
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
    if hs.cf_cols is not None:
        o[_C["cf_last"]] = _lookup(hs.cf_cols, hs.cf_last, items)
        o[_C["cf_recent"]] = _lookup(hs.cf_cols, hs.cf_recent, items)
    if hs.cf_rev_cols is not None:
        o[_C["cf_reverse_last"]] = _lookup(hs.cf_rev_cols, hs.cf_rev, items)
    elif hs.length and table.cf is not None:
        o[_C["cf_reverse_last"]] = rows_values(table.cf, items, ctx.history[-1:])[:, 0]
    if hs.affinity is not None:
        ids = table.affinity_ids[items].T  # (3, m): leaf, top, brand
        o[_C["leaf_affinity"] : _C["leaf_affinity"] + 3] = _lookup(*hs.affinity, ids)
    if hs.length:
        if hs.tags is not None:
            t_rows, t_cols, t_vals = row_entries(table.tag_sets, items)
            overlap = np.bincount(t_rows, weights=t_vals * _lookup(*hs.tags, t_cols), minlength=m)
            o[_C["tag_overlap"]] = overlap / max(1.0, float(hs.n_recent))
        o[_C["same_leaf_last"]] = (table.leaf[items] == hs.last_leaf) & (hs.last_leaf >= 0)
    cp = table.log_price[items]
    has_price = ~np.isnan(cp)
    if not np.isnan(hs.median_log_price):
        o[_C["price_gap"]] = np.where(has_price, cp - np.float32(hs.median_log_price), 0.0)
        o[_C["price_gap_abs"]] = np.abs(o[_C["price_gap"]])
    o[_C["has_price"]] = has_price
    o[_C["log_pop"]] = table.log_pop[items]
    o[_C["log_trend"]] = table.log_trend[items]
    fs = table.first_seen[items]
    o[_C["log_age_days"]] = np.log1p(np.where(fs >= 0, np.maximum(ctx.now - fs, 0) / 86400.0, 0.0))
    o[_C["log_history_len"]] = np.log1p(hs.length)
    o[_C["is_search"]] = float(ctx.is_search)
    out[~np.isfinite(out)] = 0.0
    return out.T
