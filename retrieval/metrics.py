"""Top-K ranking metrics and full-catalog ranking with history exclusion.

Conventions shared by every metric:

* ``ranked`` is int64 of shape (u, K): each user's recommended item indices, best first,
  unique within a row, padded with -1 when fewer than K were returned.
* ``targets`` is either int64 (u,) with one target item per user, a CSR pair
  ``(indptr int64 (u + 1,), items int64 (t,))``, or any object with ``indptr`` and ``items``
  attributes in that layout. Target items are unique within a user.
* Ranks are 1-based. A metric at ``k`` looks at ``ranked[:, :k]``; if K < k the missing
  positions count as misses.
* The returned value is the mean over users that have at least one target (and, for graded
  NDCG, a non-zero ideal DCG); with ``per_user=True`` the (u,) float64 array is returned, NaN
  for users left out of the mean. The mean of no users is NaN.

:func:`top_k_excluding` turns a dense score matrix into ``ranked`` the way the S3-Rec
full-ranking protocol does: every catalog item is a candidate except the user's history.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "recall_at_k",
    "ndcg_at_k",
    "mrr_at_k",
    "hit_rate_at_k",
    "catalog_coverage",
    "ranking_metrics",
    "top_k_excluding",
]


def _as_csr(targets: Any, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(targets, tuple):
        indptr, items = targets
    elif hasattr(targets, "indptr") and hasattr(targets, "items"):
        indptr, items = targets.indptr, targets.items
    else:
        items = np.asarray(targets)
        if items.shape != (n_rows,):
            raise ValueError(f"targets: one item per user needs shape ({n_rows},), got {items.shape}; "
                             "pass (indptr, items) for several targets per user")
        indptr = np.arange(n_rows + 1)
    indptr = np.asarray(indptr, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if indptr.shape != (n_rows + 1,) or indptr[0] != 0 or indptr[-1] != items.shape[0] \
            or np.any(np.diff(indptr) < 0):
        raise ValueError(f"targets: indptr must be non-decreasing of shape ({n_rows + 1},) from 0 to "
                         f"len(items)={items.shape[0]}; got shape {indptr.shape}")
    if items.size and items.min() < 0:
        raise ValueError("targets: item indices must be >= 0")
    return indptr, items


def _check_ranked(ranked: np.ndarray) -> np.ndarray:
    ranked = np.asarray(ranked)
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise ValueError(f"ranked must be an integer array of shape (users, K), got {ranked.dtype} "
                         f"{ranked.shape}")
    if ranked.shape[1] > 1:
        s = np.sort(ranked, axis=1)
        dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0)
        if dup.any():
            row = int(np.flatnonzero(dup.any(axis=1))[0])
            raise ValueError(f"ranked row {row} lists an item twice; deduplicate before scoring")
    return ranked.astype(np.int64, copy=False)


class _Hits:
    """Which ranked positions hit a target, and the gain of the target hit.

    ``hit`` bool (u, k), ``gain`` float64 (u, k) (0 where no hit), ``n_targets`` int64 (u,),
    ``ideal`` float64 (u,) the ideal DCG at k (NaN for users without targets or gain).
    """

    def __init__(self, ranked: np.ndarray, targets: Any, k: int, gains: np.ndarray | None) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        ranked = _check_ranked(ranked)
        u = ranked.shape[0]
        indptr, items = _as_csr(targets, u)
        if gains is None:
            g = np.ones(items.shape[0], dtype=np.float64)
        else:
            g = np.asarray(gains, dtype=np.float64)
            if g.shape != items.shape:
                raise ValueError(f"gains must align with the target items: shape {items.shape}, got {g.shape}")
        self.n_targets = np.diff(indptr)
        t_rows = np.repeat(np.arange(u, dtype=np.int64), self.n_targets)
        top = ranked[:, :k]
        if top.shape[1] < k:  # fewer positions than k: the rest are misses
            top = np.concatenate([top, np.full((u, k - top.shape[1]), -1, dtype=np.int64)], axis=1)
        width = int(max(items.max(initial=0), top.max(initial=0))) + 1
        t_keys = t_rows * width + items
        order = np.argsort(t_keys, kind="stable")
        t_keys = t_keys[order]
        if np.any(t_keys[1:] == t_keys[:-1]):
            raise ValueError("targets list an item twice for one user; deduplicate them")
        r_keys = np.arange(u, dtype=np.int64)[:, None] * width + top
        pos = np.minimum(np.searchsorted(t_keys, r_keys), max(t_keys.shape[0] - 1, 0))
        if t_keys.shape[0]:
            self.hit = (top >= 0) & (t_keys[pos] == r_keys)
            self.gain = np.where(self.hit, np.exp2(g[order][pos]) - 1.0, 0.0)
        else:
            self.hit = np.zeros(top.shape, dtype=bool)
            self.gain = np.zeros(top.shape)
        # ideal DCG: each user's gains sorted descending, discounted over the first min(k, |T|) ranks
        by_gain = np.lexsort((-g, t_rows))
        rank0 = np.arange(items.shape[0]) - indptr[t_rows[by_gain]]
        keep = rank0 < k
        ideal = np.bincount(t_rows[by_gain][keep], minlength=u,
                            weights=(np.exp2(g[by_gain][keep]) - 1.0) / np.log2(rank0[keep] + 2.0))
        self.ideal = np.where(ideal > 0, ideal, np.nan)
        self.discount = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))

    def finish(self, values: np.ndarray, per_user: bool, need_ideal: bool = False) -> float | np.ndarray:
        valid = self.n_targets > 0
        if need_ideal:
            valid &= ~np.isnan(self.ideal)
        values = np.where(valid, values, np.nan)
        if per_user:
            return values
        return float(values[valid].mean()) if valid.any() else float("nan")


def _recall(h: _Hits) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return h.hit.sum(axis=1) / h.n_targets


def _ndcg(h: _Hits) -> np.ndarray:
    return (h.gain * h.discount).sum(axis=1) / h.ideal


def _mrr(h: _Hits) -> np.ndarray:
    first = h.hit.argmax(axis=1)
    return np.where(h.hit.any(axis=1), 1.0 / (first + 1.0), 0.0)


def _hit_rate(h: _Hits) -> np.ndarray:
    return h.hit.any(axis=1).astype(np.float64)


def recall_at_k(ranked: np.ndarray, targets: Any, k: int, *, per_user: bool = False) -> float | np.ndarray:
    """Share of a user's targets found in the top ``k``: |hits| / |targets|."""
    return (h := _Hits(ranked, targets, k, None)).finish(_recall(h), per_user)


def ndcg_at_k(ranked: np.ndarray, targets: Any, k: int, *, gains: np.ndarray | None = None,
              per_user: bool = False) -> float | np.ndarray:
    """NDCG at ``k``: DCG = sum over hits of (2^g - 1) / log2(rank + 1), over the ideal DCG.

    ``gains`` float (t,) aligned with the target items (None: binary relevance, g = 1, so a hit
    at rank r is worth 1 / log2(r + 1)). The ideal DCG places the user's largest gains at ranks
    1 .. min(k, |targets|); users whose ideal DCG is 0 are left out.
    """
    return (h := _Hits(ranked, targets, k, gains)).finish(_ndcg(h), per_user, need_ideal=True)


def mrr_at_k(ranked: np.ndarray, targets: Any, k: int, *, per_user: bool = False) -> float | np.ndarray:
    """Reciprocal rank of the first target in the top ``k`` (0 when none is there)."""
    return (h := _Hits(ranked, targets, k, None)).finish(_mrr(h), per_user)


def hit_rate_at_k(ranked: np.ndarray, targets: Any, k: int, *, per_user: bool = False) -> float | np.ndarray:
    """1 when at least one target is in the top ``k``, else 0 (HR@k)."""
    return (h := _Hits(ranked, targets, k, None)).finish(_hit_rate(h), per_user)


def catalog_coverage(ranked: np.ndarray, n_items: int, k: int | None = None) -> float:
    """Share of the ``n_items`` catalog recommended to at least one user in the top ``k`` (all K if None)."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    top = np.asarray(ranked)[:, :k] if k is not None else np.asarray(ranked)
    seen = np.unique(top[top >= 0])
    if seen.size and seen[-1] >= n_items:
        raise ValueError(f"ranked holds item {int(seen[-1])} but the catalog has only {n_items} items")
    return seen.shape[0] / n_items


def ranking_metrics(ranked: np.ndarray, targets: Any, ks: Sequence[int], *, n_items: int | None = None,
                    coverage_k: int = 10, gains: np.ndarray | None = None) -> dict[str, float]:
    """recall@k, ndcg@k, mrr@k and hit_rate@k for every k in ``ks`` (and coverage@coverage_k
    when ``n_items`` is given), as ``{"recall@10": ..., ...}``; NDCG is graded when ``gains`` is set."""
    out: dict[str, float] = {}
    for k in sorted(set(int(k) for k in ks)):
        h = _Hits(ranked, targets, k, gains)
        out[f"recall@{k}"] = h.finish(_recall(h), False)  # type: ignore[assignment]
        out[f"ndcg@{k}"] = h.finish(_ndcg(h), False, need_ideal=True)  # type: ignore[assignment]
        out[f"mrr@{k}"] = h.finish(_mrr(h), False)  # type: ignore[assignment]
        out[f"hit_rate@{k}"] = h.finish(_hit_rate(h), False)  # type: ignore[assignment]
    if n_items is not None:
        out[f"coverage@{coverage_k}"] = catalog_coverage(ranked, n_items, coverage_k)
    return out


def top_k_excluding(scores: np.ndarray, exclude: Any, k: int, *, batch_size: int = 1024) -> np.ndarray:
    """Each row's ``k`` best items over the whole catalog, never one of the row's excluded items.

    ``scores`` float (u, n_items); NaN counts as -inf. ``exclude`` is a CSR pair
    ``(indptr int64 (u + 1,), items int64)`` (or an object with ``indptr``/``items``) of the
    items to leave out per row (typically the history; repeats are fine), or None. Returns int64
    (u, k), best first; equal scores are ordered by lower item index, so the result is
    deterministic. Positions beyond the row's finite, non-excluded items are -1. Rows are
    processed ``batch_size`` at a time, so memory stays at a few (batch, n_items) arrays.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must have shape (users, n_items), got {scores.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    u, n = scores.shape
    if exclude is None:
        indptr, items = np.zeros(u + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    else:
        indptr, items = _as_csr(exclude, u)
        if items.size and items.max() >= n:
            raise ValueError(f"exclude holds item {int(items.max())} but scores have only {n} columns")
    out = np.full((u, k), -1, dtype=np.int64)
    for lo in range(0, u, batch_size):
        hi = min(lo + batch_size, u)
        s = np.array(scores[lo:hi], dtype=np.float32, copy=True)
        s[np.isnan(s)] = -np.inf
        a, b = indptr[lo], indptr[hi]
        rows = np.repeat(np.arange(hi - lo), np.diff(indptr[lo:hi + 1]))
        s[rows, items[a:b]] = -np.inf
        out[lo:hi, : min(k, n)] = _top_k_rows(s, min(k, n))
    return out


def _top_k_rows(s: np.ndarray, k: int) -> np.ndarray:
    """Top ``k`` columns of each row of ``s`` (float32 (b, n), k <= n), ties by lower index, -inf -> -1."""
    b, n = s.shape
    if k == n:
        idx = np.argsort(-s, axis=1, kind="stable")
    else:
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(s, part, axis=1).min(axis=1, keepdims=True)
        above = s > kth
        tied = s == kth
        # argpartition picks arbitrary members of a tie at the k-th score; take the lowest indices
        room = k - above.sum(axis=1)
        chosen = above | tied
        straddle = np.flatnonzero(tied.sum(axis=1) > room)
        if straddle.size:
            t = tied[straddle]
            chosen[straddle] = above[straddle] | (t & (np.cumsum(t, axis=1, dtype=np.int32)
                                                       <= room[straddle, None]))
        idx = np.nonzero(chosen)[1].reshape(b, k)  # row-major: ascending item index in each row
        vals = np.take_along_axis(s, idx, axis=1)
        idx = np.take_along_axis(idx, np.argsort(-vals, axis=1, kind="stable"), axis=1)
    vals = np.take_along_axis(s, idx, axis=1)
    return np.where(np.isneginf(vals), -1, idx).astype(np.int64)
