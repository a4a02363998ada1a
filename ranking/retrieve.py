"""Pipeline step 1, retrieve: ask each configured source of a request kind for candidates and
fuse their lists into one; or, when the caller names the candidates (Search's
``candidate_item_ids``), ask each source for its score and rank of those items only."""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from tandem.ranking.pipeline_config import PipelineConfig
from tandem.retrieval.base import Candidates, CandidateSource, ItemScorer, RetrievalRequest
from tandem.retrieval.fusion import Fused, fuse
from tandem.retrieval.registry import SOURCES

__all__ = ["Retriever"]


class Retriever:
    """The sources of one bundle and the config choosing among them. Stateless per request."""

    def __init__(self, sources: Mapping[str, CandidateSource], config: PipelineConfig) -> None:
        self.sources = dict(sources)
        self.config = config
        self._fusion = config.fusion()  # validated once, not per request
        #: sources every bundle has (popularity): a recommend request nothing else answered falls back on them
        self._fallbacks = tuple(name for name, entry in SOURCES.items() if entry.always and name in self.sources)

    def available(self, kind: str) -> tuple[str, ...]:
        """The configured sources of ``kind`` that this bundle has, in configured order."""
        return tuple(s for s in self.config.sources_for(kind) if s in self.sources)

    def retrieve(self, req: RetrievalRequest, kind: str, stats: dict[str, float]) -> tuple[list[Candidates], Fused]:
        """Every available source's list and their fusion; ``stats`` gets ``<source>_seconds`` and
        ``<source>_candidates``."""
        names = self.available(kind)
        k = self.config.per_source_k
        lists = []
        for name in names:
            t0 = time.perf_counter()
            lists.append(self.sources[name].retrieve(req, k))
            stats[f"{name}_seconds"] = time.perf_counter() - t0
            stats[f"{name}_candidates"] = float(len(lists[-1]))
        if kind == "recommend" and not any(len(c) for c in lists):
            lists += [self.sources[name].retrieve(req, k) for name in self._fallbacks if name not in names]
        return lists, fuse(lists, self.config.fused_k, self._fusion)

    def score_candidates(self, req: RetrievalRequest, kind: str, items: np.ndarray,
                         stats: dict[str, float]) -> tuple[Fused, np.ndarray]:
        """The caller's candidates ``items`` int64 (m,) (unique catalog indices, caller's order) as
        a fused list, with no retrieval: each available source gives its own score and the rank
        its retrieval would give each item (an :class:`ItemScorer`; a source that is not one
        finds none of them), and these are fused as retrieval's lists are (RRF over those ranks,
        or the weighted method over the scores of the candidates a source found). Every
        candidate is kept, found or not. Returns the list, best fused score first (ties: the
        order of ``items``), and int64 (m,) the positions into ``items`` of its entries.
        ``stats`` gets ``<source>_seconds`` and ``<source>_candidates`` (how many of the items
        the source would retrieve)."""
        names = self.available(kind)
        items = np.asarray(items, dtype=np.int64)
        m = items.shape[0]
        ranks = np.zeros((len(names), m), dtype=np.int32)
        scores = np.full((len(names), m), np.nan, dtype=np.float32)
        for s, name in enumerate(names):
            source = self.sources[name]
            t0 = time.perf_counter()
            if isinstance(source, ItemScorer):
                scores[s], ranks[s] = source.score_items(req, items)
            stats[f"{name}_seconds"] = time.perf_counter() - t0
            stats[f"{name}_candidates"] = float(np.count_nonzero(ranks[s]))
        fused = np.zeros(m, dtype=np.float64)
        fusion = self._fusion
        for s, name in enumerate(names):
            found = ranks[s] > 0
            w = fusion.weights.get(name, 1.0)
            if fusion.method == "rrf":
                fused[found] += w / (fusion.rrf_k + ranks[s][found])
            elif found.any():
                fused[found] += w * _normalised(scores[s][found])
        order = np.argsort(-fused, kind="stable")
        return Fused(items[order], fused[order].astype(np.float32), ranks[:, order], scores[:, order], names), order


def _normalised(scores: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1], as the weighted fusion normalises a source's list (all equal: 1)."""
    s = scores.astype(np.float64)
    lo, hi = s.min(), s.max()
    return np.ones_like(s) if hi == lo else (s - lo) / (hi - lo)
