"""The assembled search / recommend / similar-items pipeline.

Four steps, one module each: retrieve (several sources, fused; :mod:`tandem.ranking.retrieve`) ->
featurize (:mod:`tandem.ranking.featurize`) -> rerank (neural ranker; :mod:`tandem.ranking.rerank`) ->
respond (business filters and diversity, explanations; :mod:`tandem.ranking.respond`). A search
that names its candidates (``candidate_item_ids``) skips retrieval: step 1 scores those items in
every source instead, and steps 2-4 run as usual on them (no popularity backfill). The server
calls one :class:`Pipeline`; the evaluator calls the very same object through
:meth:`Pipeline.rank_requests`, so reported numbers come from the code that serves.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from tandem.ranking.api import (
    CannotAnswerError,
    Filters,
    RecommendRequest,
    Response,
    SearchRequest,
    SimilarRequest,
    UnknownItemError,
)
from tandem.ranking.features import feature_names
from tandem.ranking.featurize import Featurizer
from tandem.ranking.history import DEFAULT_USER_MEMOS, HistoryStore, UserHistory, UserMemos
from tandem.ranking.item_table import ItemTable
from tandem.ranking.live_catalog import CatalogChange, apply_catalog_changes
from tandem.ranking.pipeline_config import KINDS, PipelineConfig
from tandem.ranking.ranker import Ranker
from tandem.ranking.request_context import RequestContext
from tandem.ranking.rerank import Ranked, rerank
from tandem.ranking.respond import Responder
from tandem.ranking.retrieve import Retriever
from tandem.retrieval.base import (
    Candidates,
    CandidateSource,
    HistoryMemo,
    IdSet,
    RetrievalRequest,
    UserEncoder,
)
from tandem.retrieval.data import EVENT_CODE, Catalog, Event, Item
from tandem.retrieval.fusion import Fused
from tandem.retrieval.item_cf import ItemCF
from tandem.retrieval.item_cf_live import DEFAULT_LIVE_ENTRIES, LiveEvent, LiveItemCF, live_supported
from tandem.retrieval.registry import behavioural

__all__ = ["PipelineConfig", "Pipeline", "Ranked", "KINDS"]

log = logging.getLogger(__name__)


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
        removed: np.ndarray | None = None,
    ) -> None:
        self.catalog = catalog
        #: bool (n_items,) rows deleted by live catalog changes (ranking.live_catalog), or None
        self.removed = removed
        self.sources = dict(sources)
        self.table = table
        self.histories = histories
        self.rankers = dict(rankers or {})
        self.config = config or PipelineConfig()
        self.version = version
        self.built_at = int(built_at)
        self.memos = UserMemos(user_memos)
        self.retriever = Retriever(self.sources, self.config)
        self._search_only = not behavioural(self.sources)
        self.featurizer = Featurizer(table, self.sources)
        self.responder = Responder(catalog, table, self.config.explain_features, removed)
        self.filter_index = self.responder.filter_index
        self._local = threading.local()  # per-thread request stats (see ``stats``)
        #: cap of the live item-CF's sequence entries (retrieval/item_cf_live.py); 0: item-CF stays the bundle's
        self.item_cf_live_entries = DEFAULT_LIVE_ENTRIES
        self._live_lock = threading.Lock()
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
        applied = self.histories.record(events, self.catalog)
        live = self.live_item_cf()
        if live is not None:
            index = self.catalog.index
            live.record(LiveEvent(e.user_id, i, int(e.ts)) for e in events
                        if (i := index.get(e.item_id)) is not None)
        return applied

    def live_item_cf_stats(self) -> dict[str, int] | None:
        """The live item-CF's counters (:meth:`LiveItemCF.stats`), or None before its first event."""
        live = getattr(self.sources.get("item_cf"), "live", None)
        return None if live is None else live.stats()

    def live_item_cf(self) -> LiveItemCF | None:
        """The item-CF source's live updater (made on first use, over the bundle's histories; shared
        by the copies :meth:`with_config` and :meth:`variant` make), or None: no transition item-CF,
        or :attr:`item_cf_live_entries` is 0."""
        source = self.sources.get("item_cf")
        if not isinstance(source, ItemCF) or source.similarity is None or self.item_cf_live_entries == 0:
            return None
        live = source.live
        if live is None:
            with self._live_lock:
                live = source.live
                if live is None:
                    reason = live_supported(source.config)
                    if reason is not None:
                        log.info("item-CF of bundle %s stays as built: %s", self.version, reason)
                        self.item_cf_live_entries = 0
                        return None
                    user_index, indptr, items, ts = self.histories.base_arrays()
                    live = source.live = LiveItemCF(source, user_index, indptr, items, ts, self.item_cf_live_entries)
        return live

    def apply_catalog(self, changes: Sequence[CatalogChange]) -> tuple[Pipeline, dict[str, int]]:
        """A new pipeline serving this one's catalog with ``changes`` applied in order (this one is
        left as it is: requests holding it finish on it); see :mod:`tandem.ranking.live_catalog`."""
        return apply_catalog_changes(self, changes)

    def adopt(self, previous: Pipeline) -> None:
        """Take over ``previous``'s live state once this pipeline, made from it by
        :meth:`apply_catalog`, replaces it: the live item-CF's cap, and the live updater itself, which
        publishes into this pipeline's item-CF source (with rows for the items the change added) from
        now on. Call it when the swap is committed (the server: under its ingestion lock, after the
        change is logged), not before: a change that fails to log leaves ``previous`` serving."""
        self.item_cf_live_entries = previous.item_cf_live_entries
        old, new = previous.sources.get("item_cf"), self.sources.get("item_cf")
        live = getattr(old, "live", None)
        if live is not None and isinstance(new, ItemCF) and new is not old:
            live.rebind(new)

    def user_request(self, user_id: str | None, query: str | None = None,
                     context: Sequence[Event] = ()) -> tuple[RetrievalRequest, bool]:
        """The retrieval request for a user's stored history (plus ``context`` events sent with
        the request, on known items), and whether that history is empty. Only the stored history
        gets the user's memo: a history extended by the request is nobody else's."""
        hist, version = self.histories.get_versioned(user_id)
        newer = len(hist) and int(hist.items.max()) >= self.n_items
        if newer:  # an item a live catalog change added after this engine was replaced (shared histories)
            known = hist.items < self.n_items
            hist = UserHistory(hist.items[known], hist.ts[known], hist.events[known])
        ctx_items = [self.catalog.index.get(e.item_id) for e in context]
        keep = [(i, e) for i, e in zip(ctx_items, context, strict=True) if i is not None]
        if keep:
            hist = hist.extend(
                np.array([i for i, _ in keep], dtype=np.int64),
                np.array([e.ts for _, e in keep], dtype=np.int64),
                np.array([EVENT_CODE.get(e.event, 3) for _, e in keep], dtype=np.int8),
            )
        memo = (self.memos.get(user_id, version) if user_id is not None and len(hist) and not keep and not newer
                else None)
        req = RetrievalRequest(history=hist.items, history_ts=hist.ts, history_events=hist.events, query=query,
                               user_id=user_id, now=self._now(hist), memo=memo)
        return req, len(hist) == 0

    @property
    def search_only(self) -> bool:
        """True when no source learnt from events (the bundle was built without any): Search and
        SimilarItems answer from the catalog's text; Recommend needs the user's history."""
        return self._search_only

    def recommend(self, request: RecommendRequest) -> Response:
        req, cold = self.user_request(request.user_id, context=request.context)
        if self._search_only and (cold or not self.available("recommend")):
            # an empty list would read as "nothing to recommend"; the truth is "nothing to go on"
            built = f"search-only bundle {self.version} (built without events: no popularity, item-CF or two-tower source)"
            if cold:
                raise CannotAnswerError(
                    f"{built} cannot recommend to a user without history; send the session's events as "
                    "context, record events for the user, or build with events")
            raise CannotAnswerError(f"{built} has none of pipeline.recommend_sources "
                                    f"({', '.join(self.config.recommend_sources)}); add text to them or build with events")
        ranked = self.rank(req, "recommend")
        exclude = req.excluded(self.n_items) if request.exclude_seen else None  # the history
        return self._respond(ranked, request.filters, request.k, request.explain, exclude, cold, "recommend")

    def search(self, request: SearchRequest) -> Response:
        req, empty = self.user_request(request.user_id, query=request.query)
        cold = request.user_id is not None and empty
        if request.candidate_item_ids:
            return self._search_candidates(request, req, cold)
        ranked = self.rank(req, "search")
        return self._respond(ranked, request.filters, request.k, request.explain, None, cold, "search")

    def _search_candidates(self, request: SearchRequest, req: RetrievalRequest, cold: bool) -> Response:
        """Search re-ranking the caller's candidates: the known ones (a repeated id counts
        once), scored by every search source, featurized and re-ranked as retrieved candidates
        are; filters and the user's history apply, nothing else is ever added."""
        first: dict[int, int] = {}  # catalog index -> 1-based position in the caller's list
        unknown = 0
        for pos, item_id in enumerate(request.candidate_item_ids, 1):
            i = self.catalog.index.get(item_id)
            if i is None:
                unknown += 1
            else:
                first.setdefault(i, pos)
        items = np.fromiter(first, dtype=np.int64, count=len(first))
        stats = self.stats
        stats.clear()
        fused, order = self.retriever.score_candidates(req, "search", items, stats)
        given = np.fromiter(first.values(), dtype=np.int32, count=len(first))[order]
        ranker = self.rankers.get("search")
        ranked = replace(rerank(req, "search", fused, ranker, self.featurizer, stats), given=given)
        response = self.responder.respond(ranked, request.filters, request.k, request.explain,
                                          req.excluded(self.n_items), cold, ranker, self.version, backfill=False)
        return replace(response, unknown_candidates=unknown)

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
        self.live_item_cf()  # its sequences now, not on the first RecordEvents' clock
        n = self.memos.capacity
        users = self.histories.most_recent_users(n)
        first = users[:1] or self.histories.most_recent_users(1)
        if first:
            self.rank(self.user_request(first[0])[0], "recommend")
        encoders = [s for s in self.sources.values() if isinstance(s, UserEncoder)]
        memos = [s for s in self.sources.values() if isinstance(s, HistoryMemo)]
        for s in range(0, len(users), batch):
            reqs = [self.user_request(user)[0] for user in users[s : s + batch]]
            for encoder in encoders:
                encoder.encode_users(reqs)  # keeps each vector in its memo
            for req in reqs:
                self.context(req, "recommend")
                for source in memos:
                    source.remember(req)
        return len(users)

    # -- core -----------------------------------------------------------------------------
    def _now(self, hist: UserHistory) -> int:
        newest = int(hist.ts.max()) if len(hist) else 0
        return max(self.table.now, newest)

    def available(self, kind: str) -> tuple[str, ...]:
        """The configured sources of ``kind`` that this bundle has, in configured order."""
        return self.retriever.available(kind)

    def retrieve(self, req: RetrievalRequest, kind: str) -> tuple[list[Candidates], Fused]:
        """Step 1: every available source's candidates and their fusion (starts the thread's ``stats``)."""
        stats = self.stats
        stats.clear()
        return self.retriever.retrieve(req, kind, stats)

    def context(self, req: RetrievalRequest, kind: str) -> RequestContext:
        """Step 2's request side: the history summary and the user's and query's vectors."""
        return self.featurizer.context(req, kind)

    def rank(self, req: RetrievalRequest, kind: str, *, use_ranker: bool = True) -> Ranked:
        """Retrieve, fuse and (when a ranker for ``kind`` exists) featurize and re-rank one request."""
        _, fused = self.retrieve(req, kind)
        ranker = self.rankers.get(kind) if use_ranker else None
        if kind == "recommend" and len(req.history) == 0:
            ranker = None  # cold start: the ranker learnt from users with a history; popularity's order stands
        return rerank(req, kind, fused, ranker, self.featurizer, self.stats)

    def rank_requests(self, requests: Sequence[RetrievalRequest], k: int, *, kind: str = "recommend",
                      use_ranker: bool = True) -> np.ndarray:
        """int64 (b, k) top-k per request, history excluded, -1 padded: the evaluator's entry."""
        out = np.full((len(requests), k), -1, dtype=np.int64)
        for r, req in enumerate(requests):
            self._put_row(out, r, self.rank(req, kind, use_ranker=use_ranker).items, req)
        return out

    def rank_requests_fused_and_final(self, requests: Sequence[RetrievalRequest], k: int, *,
                                      kind: str = "recommend") -> tuple[np.ndarray, np.ndarray]:
        """:meth:`rank_requests` without and with the ranker, from one retrieval per request (the
        ranker's input is the fused list): what a build evaluates, at the cost of one pass."""
        fused = np.full((len(requests), k), -1, dtype=np.int64)
        final = np.full((len(requests), k), -1, dtype=np.int64)
        for r, req in enumerate(requests):
            ranked = self.rank(req, kind)
            self._put_row(fused, r, ranked.fused.items, req)
            self._put_row(final, r, ranked.items, req)
        return fused, final

    def _put_row(self, out: np.ndarray, r: int, items: np.ndarray, req: RetrievalRequest) -> None:
        """Row ``r`` of ``out``: ``items`` without the request's history, cut to the row's width."""
        if len(req.history):
            items = items[~IdSet(req.history, self.n_items).contains(items)]
        items = items[: out.shape[1]]
        out[r, : items.shape[0]] = items

    def _respond(self, ranked: Ranked, filters: Filters, k: int, explain: bool, exclude: IdSet | None,
                 cold: bool, kind: str) -> Response:
        """Step 4: filters, backfill and explanations."""
        return self.responder.respond(ranked, filters, k, explain, exclude, cold, self.rankers.get(kind),
                                      self.version)

    def with_config(self, **changes: Any) -> Pipeline:
        """A copy answering with a changed :class:`PipelineConfig` (shares the loaded models)."""
        out = Pipeline(self.catalog, self.sources, self.table, self.histories, self.rankers,
                       replace(self.config, **changes), version=self.version, built_at=self.built_at,
                       user_memos=self.memos.capacity, removed=self.removed)
        out.item_cf_live_entries = self.item_cf_live_entries
        return out

    def variant(self, changes: Mapping[str, Any], *, use_ranker: bool = True) -> Pipeline:
        """A copy answering with ``changes`` to its :class:`PipelineConfig` and, unless ``use_ranker``,
        without its rankers (an A/B experiment's arm). It shares the loaded models and the user
        histories, so events recorded into either are seen by both, and the per-user memos (what
        the sources derive from a history alone, whatever the config)."""
        out = Pipeline(self.catalog, self.sources, self.table, self.histories, self.rankers if use_ranker else {},
                       replace(self.config, **changes), version=self.version, built_at=self.built_at, user_memos=0,
                       removed=self.removed)
        out.memos = self.memos
        out.item_cf_live_entries = self.item_cf_live_entries
        return out

    def describe(self) -> dict:
        return {"version": self.version, "built_at": self.built_at, "sources": sorted(self.sources),
                "search_only": self.search_only,
                "rankers": sorted(self.rankers), "config": self.config.to_dict(),
                "item_cf_live": self.live_item_cf_stats()}

    def __repr__(self) -> str:
        return f"Pipeline({json.dumps(self.describe())})"
