"""One request's summary for the ranking features: the user's history (text, item-CF,
category, brand, tag and price summaries, computed once per history and kept in the request's
memo), the user and query vectors and the request time."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tandem.ranking.item_table import ItemTable
from tandem.retrieval.sparse import row_entries

__all__ = ["HistorySummary", "RequestContext", "summarise_history", "request_context", "MEMO_KEY"]


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


def _recent_weights(h: int, half_life: float = 3.0) -> np.ndarray:
    """Recency weights for a history of length h (oldest first), summing to 1."""
    w = np.power(0.5, np.arange(h - 1, -1, -1, dtype=np.float32) / half_life)
    return w / w.sum()
