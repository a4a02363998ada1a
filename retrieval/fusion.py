"""Candidate fusion: reciprocal-rank or weighted-score, with per-source quotas.

Every fused candidate keeps where each source put it (rank and raw score), so the ranker can
use them as features and the explanation can name the sources.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from retrieval.base import Candidates

__all__ = ["FusionConfig", "Fused", "fuse"]


@dataclass(frozen=True)
class FusionConfig:
    """``method``: "rrf" (sum of w / (rrf_k + rank)) or "weighted" (sum of w x min-max
    normalised score). ``weights`` per source name (default 1); ``quotas``: the top-q of a
    source always make the fused top-k."""

    method: str = "rrf"
    rrf_k: float = 60.0
    weights: Mapping[str, float] = field(default_factory=dict)
    quotas: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in ("rrf", "weighted"):
            raise ValueError(f"fusion.method must be 'rrf' or 'weighted', got {self.method!r}")
        if self.rrf_k < 0:
            raise ValueError(f"fusion.rrf_k must be >= 0, got {self.rrf_k}")
        for name, w in self.weights.items():
            if w < 0:
                raise ValueError(f"fusion.weights.{name} must be >= 0, got {w}")
        for name, q in self.quotas.items():
            if q < 0:
                raise ValueError(f"fusion.quotas.{name} must be >= 0, got {q}")


@dataclass
class Fused:
    """``items`` int64 (m,) best first; ``scores`` float32 (m,) fused scores; ``ranks`` int32
    (n_sources, m) 1-based rank in each input list (0 = absent); ``source_scores`` float32
    (n_sources, m) raw scores (NaN = absent); ``sources`` one name per input list, in input
    order, empty lists included."""

    items: np.ndarray
    scores: np.ndarray
    ranks: np.ndarray
    source_scores: np.ndarray
    sources: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.items.shape[0])


def fuse(lists: Sequence[Candidates], k: int, config: FusionConfig | None = None) -> Fused:
    """Fuse candidate lists into at most ``k`` unique items."""
    config = config or FusionConfig()
    sources = tuple(c.source for c in lists)
    n_src = len(lists)
    all_items = np.concatenate([c.items for c in lists]) if lists else np.zeros(0, np.int64)
    universe, inverse = np.unique(all_items.astype(np.int64), return_inverse=True)
    m = universe.shape[0]
    ranks = np.zeros((n_src, m), dtype=np.int32)
    raw = np.full((n_src, m), np.nan, dtype=np.float32)
    fused = np.zeros(m, dtype=np.float64)
    offset = 0
    for s, cand in enumerate(lists):
        n = len(cand)
        if n == 0:
            continue
        pos = inverse[offset : offset + n]
        offset += n
        # a source may (wrongly) repeat an item: keep its best (first) rank
        first = np.ones(n, dtype=bool)
        _, idx = np.unique(pos, return_index=True)
        first[:] = False
        first[idx] = True
        pos, r = pos[first], np.arange(1, n + 1)[first]
        sc = np.asarray(cand.scores, dtype=np.float32)[first]
        ranks[s, pos] = r
        raw[s, pos] = sc
        w = float(config.weights.get(cand.source, 1.0))
        if config.method == "rrf":
            fused[pos] += w / (config.rrf_k + r)
        else:
            lo, hi = float(sc.min()), float(sc.max())
            norm = (sc - lo) / (hi - lo) if hi > lo else np.ones_like(sc)
            fused[pos] += w * norm
    order = np.lexsort((universe, -fused))  # best fused score first, ties by item id
    keep = order[: max(0, k)]
    if config.quotas and m:
        must = []
        for s, cand in enumerate(lists):
            q = int(config.quotas.get(cand.source, 0))
            if q:
                must.append(np.flatnonzero((ranks[s] > 0) & (ranks[s] <= q)))
        if must:
            required = np.unique(np.concatenate(must))
            missing = required[~np.isin(required, keep)]
            if missing.size:
                room = max(0, k - missing.size)
                keep_set = keep[:room]
                chosen = np.concatenate([keep_set, missing])
                keep = chosen[np.lexsort((universe[chosen], -fused[chosen]))][:k]
    return Fused(
        items=universe[keep],
        scores=fused[keep].astype(np.float32),
        ranks=ranks[:, keep],
        source_scores=raw[:, keep],
        sources=sources,
    )
