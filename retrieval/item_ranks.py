"""The rank a source's retrieval would give named items, without sorting the catalog.

:func:`rank_items` backs :meth:`~tandem.retrieval.base.ItemScorer.score_items`: a source that has
every catalog item's score for a request (BM25, an inner product with the query's vector, an
item-CF row, popularity) answers where each of the caller's ``m`` items would stand in its
retrieved list. One compiled pass over the catalog's ``n`` scores with a binary search among the
``m`` sorted candidates, O(n log m), instead of sorting all ``n`` (an ``argsort`` of 100,000
scores took ~30 ms on the 2-core machine of benchmarks/README.md; see the test for the oracle).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from tandem.retrieval.base import IdSet

__all__ = ["rank_items"]


@nb.njit(nogil=True, cache=True)
def _count_above(scores, ok, cand_scores, cand_items):  # pragma: no cover - compiled
    """For candidates sorted best first (``cand_scores`` float32 (m,) non-increasing; equal
    scores by ascending ``cand_items``): how many returnable catalog items come before each, i.e.
    score strictly higher, or equal with a lower item index. int64 (m,)."""
    m = cand_scores.shape[0]
    diff = np.zeros(m + 1, dtype=np.int64)
    for j in range(scores.shape[0]):
        if not ok[j]:
            continue
        x = scores[j]
        if x < cand_scores[m - 1]:  # below every candidate (most of a catalog): counts for none
            continue
        if x > cand_scores[0]:
            diff[0] += 1
            continue
        # e: the first candidate scoring <= x (scores non-increasing)
        lo, hi = 0, m
        while lo < hi:
            mid = (lo + hi) >> 1
            if cand_scores[mid] > x:
                lo = mid + 1
            else:
                hi = mid
        if lo < m and cand_scores[lo] == x:
            # x ties candidates [e, s): j comes before those of them with a higher item index
            e = lo
            hi = m
            while lo < hi:
                mid = (lo + hi) >> 1
                if cand_scores[mid] >= x:
                    lo = mid + 1
                else:
                    hi = mid
            lo, hi = e, lo
            while lo < hi:
                mid = (lo + hi) >> 1
                if cand_items[mid] <= j:
                    lo = mid + 1
                else:
                    hi = mid
        diff[lo] += 1  # j comes before every candidate from position lo on
    out = np.empty(m, dtype=np.int64)
    acc = 0
    for i in range(m):
        acc += diff[i]
        out[i] = acc
    return out


def rank_items(scores: np.ndarray, items: np.ndarray, exclude: IdSet | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``items``' scores and ranks in a retrieval over a dense score vector ``scores`` float (n,)
    (non-finite = never returned; ``exclude`` never returned either): float32 (m,) the items'
    scores, NaN where not returned, and int32 (m,) their 1-based ranks among the returnable items,
    best score first, ties to the lower item index (as ``Candidates.top_k`` breaks them), 0 where
    not returned. ``items`` int64 (m,) may repeat and may fall outside ``[0, n)`` (not returned)."""
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    items = np.asarray(items, dtype=np.int64)
    n = scores.shape[0]
    ok = np.isfinite(scores)
    if exclude is not None and exclude.size:
        ok &= ~exclude.table[:n]
    inside = (items >= 0) & (items < n)
    inside[inside] = ok[items[inside]]
    got = np.full(items.shape[0], np.nan, dtype=np.float32)
    ranks = np.zeros(items.shape[0], dtype=np.int32)
    if not inside.any():
        return got, ranks
    which = np.flatnonzero(inside)
    cand = items[which]
    order = np.lexsort((cand, -scores[cand]))
    above = _count_above(scores, ok, scores[cand[order]], cand[order])
    ranks[which[order]] = (above + 1).astype(np.int32)
    got[which] = scores[cand]
    return got, ranks
