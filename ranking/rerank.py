"""Pipeline step 3, rerank: order the fused candidates by the neural ranker's scores (or keep
the fused order when there is no ranker for the request)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from tandem.ranking.featurize import Featurizer
from tandem.ranking.ranker import Ranker
from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.fusion import Fused

__all__ = ["Ranked", "rerank"]


@dataclass
class Ranked:
    """One request's ranked candidates before filtering.

    ``items`` int64 (m,) best first, ``scores`` float32 (m,) final scores, ``fused`` the
    fusion result (its own order), ``order`` int64 (m,) positions into ``fused``,
    ``features`` float32 (m, F) in ``fused`` order or None, ``ranker_scores`` float32 (m,)
    in ``fused`` order or None; ``given`` int32 (m,) in ``fused`` order: each item's 1-based
    position in the caller's candidate list when the caller named the candidates, else None."""

    items: np.ndarray
    scores: np.ndarray
    fused: Fused
    order: np.ndarray
    features: np.ndarray | None
    ranker_scores: np.ndarray | None
    given: np.ndarray | None = None


def rerank(req: RetrievalRequest, kind: str, fused: Fused, ranker: Ranker | None, featurizer: Featurizer,
           stats: dict[str, float]) -> Ranked:
    """``fused`` re-ordered by ``ranker`` (None: the fused order stands); ``stats`` gets
    ``ranker_seconds`` when the ranker ran."""
    if ranker is None or len(fused.items) == 0:
        return Ranked(fused.items, fused.scores, fused, np.arange(len(fused.items)), None, None)
    t0 = time.perf_counter()
    feats = featurizer.features(featurizer.context(req, kind), fused)
    scores = ranker.score(feats)
    order = np.argsort(-scores, kind="stable")
    stats["ranker_seconds"] = time.perf_counter() - t0
    return Ranked(fused.items[order], scores[order], fused, order, feats, scores)
