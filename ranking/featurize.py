"""Pipeline step 2, featurize: a request's context (its history summary, the user's and the
query's vectors from the sources that encode them) and the feature matrix of its candidates."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tandem.ranking.features import compute_features
from tandem.ranking.item_table import ItemTable
from tandem.ranking.request_context import RequestContext, request_context
from tandem.retrieval.base import CandidateSource, QueryEncoder, RetrievalRequest, UserEncoder
from tandem.retrieval.fusion import Fused
from tandem.retrieval.registry import first_with

__all__ = ["Featurizer"]


class Featurizer:
    """The item table and the encoders of one bundle (found by capability, not by name)."""

    def __init__(self, table: ItemTable, sources: Mapping[str, CandidateSource]) -> None:
        self.table = table
        self.user_encoder: UserEncoder | None = first_with(UserEncoder, sources)  # type: ignore[assignment]
        self.query_encoder: QueryEncoder | None = first_with(QueryEncoder, sources)  # type: ignore[assignment]

    def context(self, req: RetrievalRequest, kind: str) -> RequestContext:
        """What the features need of the request; the history summary is kept in its memo."""
        user_vec = None
        if self.user_encoder is not None and len(req.history):
            user_vec = self.user_encoder.encode_users([req])[0]
        query_vec = None
        if req.query and self.query_encoder is not None:
            query_vec = self.query_encoder.encode_query(req.query)
        history = req.history if len(req.history) else (
            np.array([req.item], dtype=np.int64) if req.item is not None else np.zeros(0, np.int64))
        return request_context(self.table, history, user_vec=user_vec, query_vec=query_vec, now=req.now,
                               is_search=kind == "search", memo=req.memo if len(req.history) else None)

    def features(self, ctx: RequestContext, fused: Fused) -> np.ndarray:
        """float32 (m, F): the fused candidates' features, in fused order."""
        return compute_features(self.table, ctx, fused.items, fused.scores, fused.ranks, fused.source_scores)
