"""Pipeline step 4, respond: business filters and diversity caps over the ranked list, a
popularity backfill when filters leave too few, explanations, and the plain response."""

from __future__ import annotations

import numpy as np

from tandem.ranking.api import Explanation, Filters, Response, ScoredItem, SourceHit
from tandem.ranking.filters import FilterIndex, apply_filters
from tandem.ranking.item_table import ItemTable
from tandem.ranking.ranker import Ranker
from tandem.ranking.rerank import Ranked
from tandem.retrieval.base import IdSet
from tandem.retrieval.data import Catalog

__all__ = ["Responder", "CALLER_SOURCE"]

#: The source an explanation names for an item the caller sent (Search's ``candidate_item_ids``);
#: its rank is the item's 1-based position in the caller's list.
CALLER_SOURCE = "candidates"


class Responder:
    """The catalog side of one bundle: item ids and titles, the filter index, popularity."""

    def __init__(self, catalog: Catalog, table: ItemTable, explain_features: int = 3,
                 removed: np.ndarray | None = None) -> None:
        self.catalog = catalog
        self.table = table
        self.explain_features = explain_features
        self.filter_index = FilterIndex(catalog, removed)

    def respond(self, ranked: Ranked, filters: Filters, k: int, explain: bool, exclude: IdSet | None,
                cold: bool, ranker: Ranker | None, version: str, *, backfill: bool = True) -> Response:
        """The top ``k`` of ``ranked`` that pass ``filters`` and are not in ``exclude``; with
        ``backfill`` (not for the caller's own candidates), popular items that pass the filters
        fill up a list the filters left short."""
        pos = apply_filters(self.filter_index, ranked.items, filters, k, exclude)
        items = ranked.items[pos]
        scores = ranked.scores[pos]
        if backfill and len(items) < k and filters != Filters():
            # restrictive filters emptied the candidate list: fill up with the most popular items
            # that pass them, ranked below everything retrieval found
            by_pop = np.argsort(-self.table.log_pop, kind="stable")
            taken = items if exclude is None else np.concatenate([items, np.flatnonzero(exclude.table[:-1])])
            extra = apply_filters(self.filter_index, by_pop, filters, k - len(items), taken)
            filled = by_pop[extra]
            floor = float(scores.min()) if len(scores) else 0.0
            items = np.concatenate([items, filled])
            scores = np.concatenate([scores, (floor - 1.0 - np.arange(len(filled))).astype(np.float32)])
        explanations: list[Explanation | None] = [None] * len(items)
        if explain and len(pos):
            fpos = ranked.order[pos]
            top: list[tuple] = [()] * len(items)
            if ranked.features is not None and ranker is not None:
                top = ranker.explain(ranked.features[fpos], top=self.explain_features)
            fused = ranked.fused
            for j, p in enumerate(fpos):
                hits = tuple(
                    SourceHit(src, int(fused.ranks[s, p]), float(fused.source_scores[s, p]))
                    for s, src in enumerate(fused.sources) if fused.ranks[s, p] > 0
                )
                if ranked.given is not None:
                    hits = (SourceHit(CALLER_SOURCE, int(ranked.given[p]), 0.0), *hits)
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
        return Response(items=out, bundle_version=version, cold_start=cold)
