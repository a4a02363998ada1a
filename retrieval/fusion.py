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
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numba as nb
import numpy as np

from tandem.retrieval.base import Candidates, ScratchTables

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


@nb.njit(nogil=True, cache=True)
def _fuse_entries(positions, n_src, items, raw, sizes, weight, rrf_k, norm):  # pragma: no cover - compiled
    """The entries of every list (concatenated, in source order) merged per item: the universe
    of items (first-seen order), their fused scores (float64, summed in entry order), ranks
    (int32 (n_src, m), 0 = absent), source scores (NaN = absent), and the order best first:
    fused score descending, then best rank, then item index. A source's repeat of an item
    counts once, at its first rank. ``norm`` empty means RRF, else the weighted method's
    normalised scores. ``positions`` maps item -> column and is left all -1 again."""
    total = items.shape[0]
    universe = np.empty(total, dtype=np.int64)
    fused = np.zeros(total, dtype=np.float64)
    best = np.full(total, np.iinfo(np.int64).max, dtype=np.int64)
    ranks = np.zeros((n_src, total), dtype=np.int32)
    scores = np.full((n_src, total), np.nan, dtype=np.float32)
    rrf = norm.shape[0] == 0
    m = 0
    e = 0
    for s in range(n_src):
        for r in range(sizes[s]):
            item = items[e]
            col = positions[item]
            if col < 0:
                col = m
                positions[item] = m
                universe[m] = item
                m += 1
            if ranks[s, col] == 0:  # a repeat within one source counts once, at its first rank
                ranks[s, col] = r + 1
                scores[s, col] = raw[e]
                fused[col] += weight[s] / (rrf_k + (r + 1)) if rrf else weight[s] * norm[e]
                if r < best[col]:
                    best[col] = r
            e += 1
    for c in range(m):
        positions[universe[c]] = -1
    universe, fused, best = universe[:m], fused[:m], best[:m]
    order = np.argsort(-fused, kind="mergesort")
    # equal fused scores (common with RRF: the same ranks in different sources): better best
    # rank first, then the lower item index; runs are short, so insertion sort
    start = 0
    while start < m:
        end = start + 1
        while end < m and fused[order[end]] == fused[order[start]]:
            end += 1
        for a in range(start + 1, end):
            x = order[a]
            b = a - 1
            while b >= start and (best[order[b]] > best[x] or
                                  (best[order[b]] == best[x] and universe[order[b]] > universe[x])):
                order[b + 1] = order[b]
                b -= 1
            order[b + 1] = x
        start = end
    return universe, fused, ranks[:, :m].copy(), scores[:, :m].copy(), order


# item -> column maps for _fuse_entries, grown to the largest item index seen
_POSITIONS = ScratchTables(0)
_POSITIONS_LOCK = threading.Lock()


def _position_tables(top: int) -> ScratchTables:
    global _POSITIONS
    with _POSITIONS_LOCK:
        if top >= _POSITIONS.n:
            _POSITIONS = ScratchTables(max(top + 1, 2 * _POSITIONS.n), np.int32, -1)
        return _POSITIONS


def fuse(lists: Sequence[Candidates], k: int, config: FusionConfig | None = None) -> Fused:
    """Fuse the sources' candidate lists into at most ``k`` items (see the module docstring).
    The merge is one compiled pass (``_fuse_entries``); ``tests/retrieval/test_fusion.py``
    holds it to a dictionary oracle."""
    config = config or FusionConfig()
    sources = tuple(c.source for c in lists)
    n_src = len(lists)
    sizes = np.array([len(c) for c in lists], dtype=np.int64)
    total = int(sizes.sum())
    if k <= 0 or total == 0:
        return Fused(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32),
                     np.zeros((n_src, 0), dtype=np.int32), np.zeros((n_src, 0), dtype=np.float32), sources)

    items = np.concatenate([np.asarray(c.items, dtype=np.int64) for c in lists])
    raw = np.concatenate([np.asarray(c.scores, dtype=np.float32) for c in lists])
    lo, hi = int(items.min()), int(items.max())
    if lo < 0:
        raise ValueError(f"fuse: candidate items must be catalog indices >= 0, got {lo}")
    weight = np.array([config.weights.get(s, 1.0) for s in sources], dtype=np.float64)
    if config.method == "rrf":
        norm = _NO_NORM
    else:
        norm = np.concatenate([_normalised(c.scores) for c in lists])
    with _position_tables(hi).borrow() as positions:
        universe, fused, ranks, source_scores, order = _fuse_entries(
            positions, n_src, items, raw, sizes, weight, config.rrf_k, norm)

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
    return Fused(universe[take], fused[take].astype(np.float32), ranks[:, take], source_scores[:, take], sources)


_NO_NORM = np.zeros(0, dtype=np.float64)


def _positions(order: np.ndarray) -> np.ndarray:
    """Inverse permutation: position of each index in ``order``."""
    pos = np.empty_like(order)
    pos[order] = np.arange(order.shape[0])
    return pos
