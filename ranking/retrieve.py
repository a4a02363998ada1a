"""Pipeline step 1, retrieve: ask each configured source of a request kind for candidates and
fuse their lists into one."""

from __future__ import annotations

import time
from collections.abc import Mapping

from tandem.ranking.pipeline_config import PipelineConfig
from tandem.retrieval.base import Candidates, CandidateSource, RetrievalRequest
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
