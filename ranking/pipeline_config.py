"""Which candidate sources answer which request kind, list sizes and fusion."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from tandem.retrieval.fusion import FusionConfig
from tandem.retrieval.registry import check_source_names

__all__ = ["PipelineConfig", "KINDS"]

KINDS = ("recommend", "search", "similar")


@dataclass(frozen=True)
class PipelineConfig:
    """Which sources answer which request kind, list sizes and fusion.

    ``per_source_k``: candidates asked of each source; ``fused_k``: candidates kept after
    fusion and handed to the ranker (the ranker's ceiling is recall@fused_k of the fused list).
    """

    recommend_sources: tuple[str, ...] = ("two_tower", "item_cf", "text", "popularity")
    search_sources: tuple[str, ...] = ("lexical", "text")
    similar_sources: tuple[str, ...] = ("item_cf", "text", "two_tower")
    per_source_k: int = 200
    fused_k: int = 300
    fusion_method: str = "rrf"
    rrf_k: int = 60
    source_weights: Mapping[str, float] = field(default_factory=dict)
    explain_features: int = 3

    def __post_init__(self) -> None:
        if self.per_source_k < 1 or self.fused_k < 1:
            raise ValueError("pipeline.per_source_k and pipeline.fused_k must be >= 1")
        if self.fusion_method not in ("rrf", "weighted"):
            raise ValueError(f"pipeline.fusion_method must be 'rrf' or 'weighted', got {self.fusion_method!r}")
        for kind in KINDS:
            if not self.sources_for(kind):
                raise ValueError(f"pipeline.{kind}_sources must name at least one source")
            check_source_names(self.sources_for(kind), f"pipeline.{kind}_sources")
        check_source_names(self.source_weights, "pipeline.source_weights")

    def sources_for(self, kind: str) -> tuple[str, ...]:
        return getattr(self, f"{kind}_sources")

    def fusion(self) -> FusionConfig:
        return FusionConfig(method=self.fusion_method, rrf_k=self.rrf_k, weights=dict(self.source_weights))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["source_weights"] = dict(self.source_weights)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PipelineConfig:
        d = dict(d)
        for key in ("recommend_sources", "search_sources", "similar_sources"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)
