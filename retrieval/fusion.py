"""Fusing the candidate lists of several sources into one list.

Two methods:

* ``rrf`` (reciprocal rank fusion): an item scores ``sum_s w_s / (rrf_k + rank_s)`` over the
  sources that returned it (ranks 1-based). Needs no score calibration across sources.
* ``weighted``: each list's scores are min-max normalised to [0, 1] (a list whose scores are all
  equal gives 1), then ``sum_s w_s * norm_s``; a source that did not return the item adds 0.

``w_s`` is ``weights.get(source, 1.0)``. Per-source ``quotas`` guarantee the top ``q`` items of a
source a place in the fused top ``k`` (if the guaranteed items alone exceed ``k``, the best of them
by fused score are kept); the rest of the list is filled by fused score. The answer is ordered by
fused score (ties: better best rank, then lower item index) and keeps, per item, the rank and raw
score it had in every source, which the ranker uses as features.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from retrieval.base import Candidates

__all__ = ["FUSION_METHODS", "FusionConfig", "Fused", "fuse"]

#: Methods :attr:`FusionConfig.method` accepts.
FUSION_METHODS: tuple[str, ...] = ("rrf", "weighted")


@dataclass(frozen=True)
class FusionConfig:
    """How :func:`fuse` combines lists; see the module docstring."""

    method: str = "rrf"
    rrf_k: float = 60.0
    weights: Mapping[str, float] = field(default_factory=dict)
    quotas: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in FUSION_METHODS:
            raise ValueError(f"FusionConfig.method must be one of {', '.join(FUSION_METHODS)}; got {self.method!r}")
        if not (isinstance(self.rrf_k, numbers.Real) and not isinstance(self.rrf_k, bool)
                and math.isfinite(self.rrf_k) and self.rrf_k > 0):
            raise ValueError(f"FusionConfig.rrf_k must be a positive number, got {self.rrf_k}")
        for name, w in self.weights.items():
            if isinstance(w, bool) or not (isinstance(w, numbers.Real) and math.isfinite(w) and w >= 0):
                raise ValueError(f"FusionConfig.weights[{name!r}] must be a non-negative number, got {w!r}")
        for name, q in self.quotas.items():
            if isinstance(q, bool) or not isinstance(q, numbers.Integral) or q < 0:
                raise ValueError(f"FusionConfig.quotas[{name!r}] must be a non-negative integer, got {q!r}")
        object.__setattr__(self, "rrf_k", float(self.rrf_k))
        object.__setattr__(self, "weights", {str(k): float(v) for k, v in self.weights.items()})
        object.__setattr__(self, "quotas", {str(k): int(v) for k, v in self.quotas.items()})


@dataclass(frozen=True)
class Fused:
    """A fused list of ``m`` items, best first.

    ``items`` int64 (m,) unique catalog indices; ``scores`` float32 (m,) non-increasing fused
    scores; ``ranks`` int32 (n_sources, m): the item's 1-based rank in each source's list, 0 where
    the source did not return it; ``source_scores`` float32 (n_sources, m): the source's own score,
    NaN where not returned; ``sources`` the source names, in input order (row order of the two).
    """

    items: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    source_scores: np.ndarray
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.items.shape[0])


def _normalised(scores: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] (float64); a constant list maps to 1, non-finite scores to 0."""
    s = np.asarray(scores, dtype=np.float64)
    finite = np.isfinite(s)
    if not finite.any():
        return np.zeros_like(s)
    lo, hi = s[finite].min(), s[finite].max()
    out = np.ones_like(s) if hi == lo else (s - lo) / (hi - lo)
    return np.where(finite, out, 0.0)


def fuse(lists: Sequence[Candidates], k: int, config: FusionConfig | None = None) -> Fused:
    """Fuse the sources' candidate lists into at most ``k`` items (see the module docstring)."""
    config = config or FusionConfig()
    sources = tuple(c.source for c in lists)
    n_src = len(lists)
    sizes = np.array([len(c) for c in lists], dtype=np.int64)
    total = int(sizes.sum())
    if k <= 0 or total == 0:
        return Fused(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32),
                     np.zeros((n_src, 0), dtype=np.int32), np.zeros((n_src, 0), dtype=np.float32), sources)

    src = np.repeat(np.arange(n_src), sizes)
    items = np.concatenate([np.asarray(c.items, dtype=np.int64) for c in lists])
    raw = np.concatenate([np.asarray(c.scores, dtype=np.float32) for c in lists])
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.arange(total) - np.repeat(starts, sizes) + 1
    weight = np.array([config.weights.get(s, 1.0) for s in sources], dtype=np.float64)
    if config.method == "rrf":
        contrib = weight[src] / (config.rrf_k + rank)
    else:
        norm = np.concatenate([_normalised(c.scores) for c in lists])
        contrib = weight[src] * norm

    universe, col = np.unique(items, return_inverse=True)
    m = universe.shape[0]
    ranks = np.zeros((n_src, m), dtype=np.int32)
    ranks[src, col] = rank
    if np.count_nonzero(ranks) != total:
        # a source repeated an item (sources should not): count it once, at its best (first) rank
        _, first = np.unique(src * m + col, return_index=True)
        src, col, raw, rank, contrib = src[first], col[first], raw[first], rank[first], contrib[first]
        ranks[:] = 0
        ranks[src, col] = rank
    source_scores = np.full((n_src, m), np.nan, dtype=np.float32)
    source_scores[src, col] = raw
    fused = np.bincount(col, weights=contrib, minlength=m)
    best_rank = (ranks - 1).astype(np.uint32).min(axis=0)  # 0 (not found) wraps to the largest value
    order = np.lexsort((universe, best_rank, -fused))  # best first

    quota = np.array([config.quotas.get(s, 0) for s in sources], dtype=np.int64)
    if not quota.any():
        take = order[:k]
    else:
        guaranteed = ((ranks > 0) & (ranks <= quota[:, None])).any(axis=0)
        take = order[guaranteed[order]][:k]
        room = k - take.shape[0]
        if room > 0:
            take = np.concatenate([take, order[~guaranteed[order]][:room]])
        take = take[np.argsort(_positions(order)[take], kind="stable")]  # back to fused order
    return Fused(universe[take].astype(np.int64), fused[take].astype(np.float32), ranks[:, take],
                 source_scores[:, take], sources)


def _positions(order: np.ndarray) -> np.ndarray:
    """Inverse permutation: position of each index in ``order``."""
    pos = np.empty_like(order)
    pos[order] = np.arange(order.shape[0])
    return pos
