"""The assembled search / recommend / similar-items pipeline.

retrieve (several sources) -> fuse -> re-rank (neural ranker) -> business filters and
diversity -> items with scores and explanations. The server calls one :class:`Pipeline`; the
evaluator calls the very same object through :meth:`Pipeline.rank_requests`, so reported
numbers come from the code that serves.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from ranking.api import (
    Explanation,
    Filters,
    RecommendRequest,
    Response,
    ScoredItem,
    SearchRequest,
    SimilarRequest,
    SourceHit,
    UnknownItemError,
)
from ranking.features import ItemTable, RequestContext, compute_features, feature_names, request_context
from ranking.filters import FilterIndex, apply_filters
from ranking.history import DEFAULT_USER_MEMOS, HistoryStore, UserHistory, UserMemos
from ranking.ranker import Ranker
from retrieval.base import Candidates, CandidateSource, IdSet, RetrievalRequest
from retrieval.data import EVENT_CODE, Catalog, Event, Item
from retrieval.fusion import Fused, FusionConfig, fuse

__all__ = ["PipelineConfig", "Pipeline", "Ranked", "KINDS"]

log = logging.getLogger(__name__)

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


@dataclass
class Ranked:
    """One request's ranked candidates before filtering.

    ``items`` int64 (m,) best first, ``scores`` float32 (m,) final scores, ``fused`` the
    fusion result (its own order), ``order`` int64 (m,) positions into ``fused``,
    ``features`` float32 (m, F) in ``fused`` order or None, ``ranker_scores`` float32 (m,)
    in ``fused`` order or None."""

    items: np.ndarray
    scores: np.ndarray
    fused: Fused
    order: np.ndarray
    features: np.ndarray | None
    ranker_scores: np.ndarray | None


class Pipeline:
    """One loaded bundle, ready to answer. Thread-safe for concurrent requests."""

    def __init__(
        self,
        catalog: Catalog,
        sources: Mapping[str, CandidateSource],
        table: ItemTable,
        histories: HistoryStore,
        rankers: Mapping[str, Ranker] | None = None,
        config: PipelineConfig | None = None,
        *,
        version: str = "dev",
        built_at: int = 0,
        user_memos: int = DEFAULT_USER_MEMOS,
    ) -> None:
        self.catalog = catalog
        self.sources = dict(sources)
        self.table = table
        self.histories = histories
        self.rankers = dict(rankers or {})
        self.config = config or PipelineConfig()
        self._fusion = self.config.fusion()  # validated once, not per request
        self.version = version
        self.built_at = int(built_at)
        self.filter_index = FilterIndex(catalog)
        self.memos = UserMemos(user_memos)
        self._lock = threading.Lock()
        self._local = threading.local()  # per-thread request stats (see ``stats``)
        for kind, ranker in self.rankers.items():
            expected = feature_names(self.available(kind))
            if list(ranker.feature_names) != expected:
                raise ValueError(
                    f"the {kind} ranker was trained on features {ranker.feature_names[:4]}..., but this "
                    f"pipeline computes {expected[:4]}...: rebuild the bundle"
                )

    @property
    def stats(self) -> dict[str, float]:
        """The calling thread's last request: ``<source>_seconds``, ``<source>_candidates`` and
        ``ranker_seconds`` (the server's metrics read them right after the call). Per thread,
        so concurrent requests never mix their numbers; cleared when a request starts."""
        stats = getattr(self._local, "stats", None)
        if stats is None:
            stats = self._local.stats = {}
        return stats

    # -- Engine protocol ------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        return len(self.catalog)

    @property
    def n_users(self) -> int:
        return self.histories.n_users

    def get_item(self, item_id: str) -> Item:
        i = self.catalog.index.get(item_id)
        if i is None:
            raise UnknownItemError(item_id)
        return self.catalog.item(i)

    def record_events(self, events: Sequence[Event]) -> int:
        return self.histories.record(events, self.catalog)

    def user_request(self, user_id: str | None, query: str | None = None,
                     context: Sequence[Event] = ()) -> tuple[RetrievalRequest, bool]:
        """The retrieval request for a user's stored history (plus ``context`` events sent with
        the request, on known items), and whether that history is empty. Only the stored history
        gets the user's memo: a history extended by the request is nobody else's."""
        hist, version = self.histories.get_versioned(user_id)
        ctx_items = [self.catalog.index.get(e.item_id) for e in context]
        keep = [(i, e) for i, e in zip(ctx_items, context, strict=True) if i is not None]
        if keep:
            hist = hist.extend(
                np.array([i for i, _ in keep], dtype=np.int64),
                np.array([e.ts for _, e in keep], dtype=np.int64),
                np.array([EVENT_CODE.get(e.event, 3) for _, e in keep], dtype=np.int8),
            )
        memo = self.memos.get(user_id, version) if user_id is not None and len(hist) and not keep else None
        req = RetrievalRequest(history=hist.items, history_ts=hist.ts, history_events=hist.events, query=query,
                               user_id=user_id, now=self._now(hist), memo=memo)
        return req, len(hist) == 0

    def recommend(self, request: RecommendRequest) -> Response:
        req, cold = self.user_request(request.user_id, context=request.context)
        ranked = self.rank(req, "recommend")
        exclude = req.excluded(self.n_items) if request.exclude_seen else None  # the history
        return self._respond(ranked, request.filters, request.k, request.explain, exclude, cold, "recommend")

    def search(self, request: SearchRequest) -> Response:
        req, empty = self.user_request(request.user_id, query=request.query)
        ranked = self.rank(req, "search")
        cold = request.user_id is not None and empty
        return self._respond(ranked, request.filters, request.k, request.explain, None, cold, "search")

    def similar_items(self, request: SimilarRequest) -> Response:
        i = self.catalog.index.get(request.item_id)
        if i is None:
            raise UnknownItemError(request.item_id)
        req = RetrievalRequest(item=i)
        ranked = self.rank(req, "similar")
        return self._respond(ranked, request.filters, request.k, request.explain, req.excluded(self.n_items), False,
                             "similar")

    def warm(self, users: int | None = None, batch: int = 256) -> int:
        """Keep the memos of up to ``users`` users from now on (default: the current capacity;
        0 keeps none) and fill those of the most recently active ones, so that their first
        request after loading skips the user tower and the history summary too. Two-tower
        vectors are encoded in batches. Also runs one Recommend of the most recent user, which
        compiles (or loads from numba's cache) the request path's compiled loops, so that no
        client request waits for that. Returns how many users were warmed."""
        if users is not None:
            self.memos.resize(users)
        n = self.memos.capacity
        users = self.histories.most_recent_users(n)
        first = users[:1] or self.histories.most_recent_users(1)
        if first:
            self.rank(self.user_request(first[0])[0], "recommend")
        tt = self.sources.get("two_tower")
        for s in range(0, len(users), batch):
            reqs = [self.user_request(user)[0] for user in users[s : s + batch]]
            if tt is not None:
                tt.encode_users(reqs)  # type: ignore[attr-defined]  # keeps each vector in its memo
            for req in reqs:
                self.context(req, "recommend")
                for source in self.sources.values():
                    remember = getattr(source, "remember", None)
                    if remember is not None:
                        remember(req)
        return len(users)

    # -- core -----------------------------------------------------------------------------
    def _now(self, hist: UserHistory) -> int:
        newest = int(hist.ts.max()) if len(hist) else 0
        return max(self.table.now, newest)

    def available(self, kind: str) -> tuple[str, ...]:
        """The configured sources of ``kind`` that this bundle has, in configured order."""
        return tuple(s for s in self.config.sources_for(kind) if s in self.sources)

    def retrieve(self, req: RetrievalRequest, kind: str) -> tuple[list[Candidates], Fused]:
        names = self.available(kind)
        lists = []
        stats = self.stats
        stats.clear()
        for name in names:
            t0 = time.perf_counter()
            lists.append(self.sources[name].retrieve(req, self.config.per_source_k))
            stats[f"{name}_seconds"] = time.perf_counter() - t0
            stats[f"{name}_candidates"] = float(len(lists[-1]))
        if kind == "recommend" and not any(len(c) for c in lists) and "popularity" in self.sources \
                and "popularity" not in names:
            lists.append(self.sources["popularity"].retrieve(req, self.config.per_source_k))
        fused = fuse(lists, self.config.fused_k, self._fusion)
        return lists, fused

    def context(self, req: RetrievalRequest, kind: str) -> RequestContext:
        user_vec = None
        tt = self.sources.get("two_tower")
        if tt is not None and len(req.history):
            user_vec = tt.encode_users([req])[0]  # type: ignore[attr-defined]
        query_vec = None
        text = self.sources.get("text")
        if req.query and text is not None:
            query_vec = text.encode_query(req.query)  # type: ignore[attr-defined]
        history = req.history if len(req.history) else (
            np.array([req.item], dtype=np.int64) if req.item is not None else np.zeros(0, np.int64))
        return request_context(self.table, history, user_vec=user_vec, query_vec=query_vec, now=req.now,
                               is_search=kind == "search", memo=req.memo if len(req.history) else None)

    def rank(self, req: RetrievalRequest, kind: str, *, use_ranker: bool = True) -> Ranked:
        """Retrieve, fuse and (when a ranker for ``kind`` exists) re-rank one request."""
        _, fused = self.retrieve(req, kind)
        ranker = self.rankers.get(kind) if use_ranker else None
        if kind == "recommend" and len(req.history) == 0:
            ranker = None  # cold start: the ranker learnt from users with a history; popularity's order stands
        if ranker is None or len(fused.items) == 0:
            order = np.arange(len(fused.items))
            return Ranked(fused.items, fused.scores, fused, order, None, None)
        t0 = time.perf_counter()
        ctx = self.context(req, kind)
        feats = compute_features(self.table, ctx, fused.items, fused.scores, fused.ranks, fused.source_scores)
        scores = ranker.score(feats)
        order = np.argsort(-scores, kind="stable")
        self.stats["ranker_seconds"] = time.perf_counter() - t0
        return Ranked(fused.items[order], scores[order], fused, order, feats, scores)

    def rank_requests(self, requests: Sequence[RetrievalRequest], k: int, *, kind: str = "recommend",
                      use_ranker: bool = True) -> np.ndarray:
        """int64 (b, k) top-k per request, history excluded, -1 padded: the evaluator's entry."""
        out = np.full((len(requests), k), -1, dtype=np.int64)
        for r, req in enumerate(requests):
            items = self.rank(req, kind, use_ranker=use_ranker).items
            if len(req.history):
                items = items[~IdSet(req.history, self.n_items).contains(items)]
            items = items[:k]
            out[r, : items.shape[0]] = items
        return out

    def _respond(self, ranked: Ranked, filters: Filters, k: int, explain: bool, exclude: IdSet | None,
                 cold: bool, kind: str) -> Response:
        pos = apply_filters(self.filter_index, ranked.items, filters, k, exclude)
        items = ranked.items[pos]
        scores = ranked.scores[pos]
        backfill = np.zeros(0, dtype=np.int64)
        if len(items) < k and filters != Filters():
            # restrictive filters emptied the candidate list: fill up with the most popular items
            # that pass them, ranked below everything retrieval found
            by_pop = np.argsort(-self.table.log_pop, kind="stable")
            taken = items if exclude is None else np.concatenate([items, np.flatnonzero(exclude.table[:-1])])
            extra = apply_filters(self.filter_index, by_pop, filters, k - len(items), taken)
            backfill = by_pop[extra]
            floor = float(scores.min()) if len(scores) else 0.0
            items = np.concatenate([items, backfill])
            scores = np.concatenate([scores, (floor - 1.0 - np.arange(len(backfill))).astype(np.float32)])
        explanations: list[Explanation | None] = [None] * len(items)
        if explain and len(pos):
            fpos = ranked.order[pos]
            top: list[tuple] = [()] * len(items)
            ranker = self.rankers.get(kind)
            if ranked.features is not None and ranker is not None:
                top = ranker.explain(ranked.features[fpos], top=self.config.explain_features)
            fused = ranked.fused
            for j, p in enumerate(fpos):
                hits = tuple(
                    SourceHit(src, int(fused.ranks[s, p]), float(fused.source_scores[s, p]))
                    for s, src in enumerate(fused.sources) if fused.ranks[s, p] > 0
                )
                explanations[j] = Explanation(
                    sources=hits,
                    fused_score=float(fused.scores[p]),
                    ranker_score=None if ranked.ranker_scores is None else float(ranked.ranker_scores[p]),
                    top_features=tuple(top[j]),
                )
        if explain:
            for j in range(len(pos), len(items)):
                explanations[j] = Explanation(sources=(SourceHit("filter_backfill", j - len(pos) + 1,
                                                                 float(self.table.log_pop[items[j]])),),
                                              fused_score=0.0, ranker_score=None)
        out = tuple(
            ScoredItem(self.catalog.item_ids[int(i)], float(s), self.catalog.titles[int(i)], e)
            for i, s, e in zip(items, scores, explanations, strict=True)
        )
        return Response(items=out, bundle_version=self.version, cold_start=cold)

    def with_config(self, **changes: Any) -> Pipeline:
        """A copy answering with a changed :class:`PipelineConfig` (shares the loaded models)."""
        return Pipeline(self.catalog, self.sources, self.table, self.histories, self.rankers,
                        replace(self.config, **changes), version=self.version, built_at=self.built_at,
                        user_memos=self.memos.capacity)

    def describe(self) -> dict:
        return {"version": self.version, "built_at": self.built_at, "sources": sorted(self.sources),
                "rankers": sorted(self.rankers), "config": self.config.to_dict()}

    def __repr__(self) -> str:
        return f"Pipeline({json.dumps(self.describe())})"
