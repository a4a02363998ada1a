"""Search quality on graded queries: lexical only, dense only, hybrid, hybrid + ranker.

Queries are grouped by ``query_id``; judged items carry grades 0..3 and unjudged items count
as grade 0. NDCG@K uses gains 2^g - 1 (so grade-0 judgements add nothing). Queries are split
deterministically by a hash of their id into a training part (for the search ranker) and an
evaluation part, so the reported numbers never come from queries the ranker learned from.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tandem.ranking.features import compute_features
from tandem.ranking.pipeline import Pipeline
from tandem.ranking.ranker import RankingLists
from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Catalog, Query
from tandem.retrieval.metrics import ndcg_at_k, recall_at_k

__all__ = ["QuerySet", "group_queries", "split_queries", "search_lists", "evaluate_search"]


@dataclass
class QuerySet:
    """``texts[i]`` with judged catalog items ``items[indptr[i]:indptr[i+1]]`` and ``grades`` (same rows)."""

    ids: list[str]
    texts: list[str]
    user_ids: list[str | None]
    indptr: np.ndarray
    items: np.ndarray
    grades: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: Sequence[int]) -> QuerySet:
        items, grades, ptr = [], [], [0]
        for r in rows:
            s, e = self.indptr[r], self.indptr[r + 1]
            items.append(self.items[s:e])
            grades.append(self.grades[s:e])
            ptr.append(ptr[-1] + e - s)
        cat = (lambda a, dt: np.concatenate(a).astype(dt) if a else np.zeros(0, dt))  # noqa: E731
        return QuerySet([self.ids[r] for r in rows], [self.texts[r] for r in rows],
                        [self.user_ids[r] for r in rows], np.array(ptr, dtype=np.int64),
                        cat(items, np.int64), cat(grades, np.float32))

    def request(self, i: int, pipeline: Pipeline | None = None) -> RetrievalRequest:
        user = self.user_ids[i]
        if pipeline is not None and user is not None:
            h = pipeline.histories.get(user)
            return RetrievalRequest(history=h.items, history_ts=h.ts, history_events=h.events,
                                    query=self.texts[i], user_id=user)
        return RetrievalRequest(query=self.texts[i], user_id=user)


def group_queries(queries: Sequence[Query], catalog: Catalog) -> QuerySet:
    by_id: dict[str, list[Query]] = {}
    for q in queries:
        if q.item_id in catalog.index:
            by_id.setdefault(q.query_id, []).append(q)
    ids, texts, users, ptr, items, grades = [], [], [], [0], [], []
    for qid, rows in by_id.items():
        ids.append(qid)
        texts.append(rows[0].query)
        users.append(rows[0].user_id)
        seen: dict[int, float] = {}
        for q in rows:
            seen[catalog.index[q.item_id]] = max(seen.get(catalog.index[q.item_id], 0.0), float(q.grade))
        items += list(seen)
        grades += list(seen.values())
        ptr.append(len(items))
    return QuerySet(ids, texts, users, np.array(ptr, np.int64), np.array(items, np.int64),
                    np.array(grades, np.float32))


def split_queries(qs: QuerySet, train_fraction: float = 0.5) -> tuple[QuerySet, QuerySet]:
    """(train, eval) by a stable hash of the query id."""
    train, evaluate = [], []
    for i, qid in enumerate(qs.ids):
        h = int.from_bytes(hashlib.sha256(qid.encode()).digest()[:4], "big") / 2**32
        (train if h < train_fraction else evaluate).append(i)
    return qs.take(train), qs.take(evaluate)


def search_lists(pipeline: Pipeline, qs: QuerySet) -> RankingLists:
    """Featurised hybrid candidate lists of each query, labelled with their grades."""
    feats, labels = [], []
    for i in range(len(qs)):
        req = qs.request(i, pipeline)
        fused = pipeline.rank(req, "search", use_ranker=False).fused
        if len(fused.items) == 0:
            continue
        ctx = pipeline.context(req, "search")
        feats.append(compute_features(pipeline.table, ctx, fused.items, fused.scores, fused.ranks,
                                      fused.source_scores))
        s, e = qs.indptr[i], qs.indptr[i + 1]
        gain = dict(zip(qs.items[s:e].tolist(), (2.0 ** qs.grades[s:e] - 1.0).tolist(), strict=True))
        labels.append(np.array([gain.get(int(x), 0.0) for x in fused.items], dtype=np.float32))
    return RankingLists.from_lists(feats, labels, max_list=pipeline.config.fused_k)


def evaluate_search(pipeline: Pipeline, qs: QuerySet, k: int = 10) -> dict[str, dict[str, float]]:
    """Graded NDCG@k and recall of grade>=2 items at 100, per stage, over ``qs``."""
    stages = {}
    if "lexical" in pipeline.sources:
        stages["lexical"] = lambda req: pipeline.sources["lexical"].retrieve(req, 100).items
    if "text" in pipeline.sources:
        stages["dense"] = lambda req: pipeline.sources["text"].retrieve(
            RetrievalRequest(query=req.query), 100).items
    stages["hybrid"] = lambda req: pipeline.rank(req, "search", use_ranker=False).items[:100]
    if "search" in pipeline.rankers:
        stages["hybrid_ranker"] = lambda req: pipeline.rank(req, "search").items[:100]
    gains = qs.grades
    relevant = qs.grades >= 2
    rel_ptr = np.concatenate([[0], np.cumsum([relevant[qs.indptr[i]:qs.indptr[i + 1]].sum()
                                              for i in range(len(qs))])]).astype(np.int64)
    out: dict[str, dict[str, float]] = {}
    for name, fn in stages.items():
        ranked = np.full((len(qs), 100), -1, dtype=np.int64)
        for i in range(len(qs)):
            got = np.asarray(fn(qs.request(i, pipeline)), dtype=np.int64)[:100]
            ranked[i, : got.shape[0]] = got
        out[name] = {
            f"ndcg@{k}": float(ndcg_at_k(ranked, (qs.indptr, qs.items), k, gains=gains)),
            "recall@100": float(recall_at_k(ranked, (rel_ptr, qs.items[relevant]), 100)),
            "queries": float(len(qs)),
        }
    return out
