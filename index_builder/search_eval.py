"""Search quality on graded queries: lexical only, dense only, hybrid, and the served search.

The protocol (issue #13, shared with the independent scorer ``shared/tools/searcheval.py``):

* queries are normalised (lower case, runs of white space to one space) and grouped by that
  text; a (query, item) pair judged twice keeps its highest grade;
* a query is in the **evaluation half** when ``int(sha1(text).hexdigest(), 16)`` is even. Training,
  tuning and model selection (the search ranker) use only the other half; reported numbers only
  this one. The split depends on the text alone, so any tool can recompute it;
* over the evaluation half: graded NDCG@10 over the whole catalog (gain 2^grade - 1, unjudged
  items count 0), condensed NDCG@10 (unjudged items dropped from the list first, for data sets
  whose judgements are incomplete) and Recall@100 of the items graded 2 or more. NDCG is averaged
  over every query (one whose judgements are all 0 scores 0), recall over the queries with at
  least one item graded 2 or more.

Judgements on items missing from the catalog are dropped when the queries are read
(:func:`tandem.index_builder.cleaning.load_queries`), so they count in neither the ideal DCG nor recall.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from tandem.ranking.api import SearchRequest
from tandem.ranking.features import compute_features
from tandem.ranking.pipeline import Pipeline
from tandem.ranking.ranker import RankingLists
from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Catalog, Query

__all__ = ["QuerySet", "normalize_query", "in_eval_half", "group_queries", "split_queries", "search_lists",
           "search_metrics", "evaluate_search"]

#: list length of every evaluated stage (Recall@100) and of the dump
SEARCH_K = 100


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


def normalize_query(text: str) -> str:
    """The protocol's query text: lower case, runs of white space to one space, no ends."""
    return " ".join(text.split()).lower()


def in_eval_half(text: str) -> bool:
    """True when the (normalised) query is in the evaluation half: its SHA-1 is even."""
    return int(hashlib.sha1(normalize_query(text).encode("utf-8")).hexdigest(), 16) % 2 == 0


def group_queries(queries: Sequence[Query], catalog: Catalog) -> QuerySet:
    """One row per normalised query text (its first query id and user id), with the highest
    grade of each judged catalog item; judgements on items outside ``catalog`` are dropped."""
    by_text: dict[str, list[Query]] = {}
    for q in queries:
        if q.item_id in catalog.index:
            by_text.setdefault(normalize_query(q.query), []).append(q)
    ids, texts, users, ptr, items, grades = [], [], [], [0], [], []
    for text, rows in by_text.items():
        ids.append(rows[0].query_id)
        texts.append(text)
        users.append(rows[0].user_id)
        seen: dict[int, float] = {}
        for q in rows:
            seen[catalog.index[q.item_id]] = max(seen.get(catalog.index[q.item_id], 0.0), float(q.grade))
        items += list(seen)
        grades += list(seen.values())
        ptr.append(len(items))
    return QuerySet(ids, texts, users, np.array(ptr, np.int64), np.array(items, np.int64),
                    np.array(grades, np.float32))


def split_queries(qs: QuerySet) -> tuple[QuerySet, QuerySet]:
    """(training half, evaluation half) by the protocol's hash of the normalised text (:func:`in_eval_half`)."""
    train, evaluate = [], []
    for i, text in enumerate(qs.texts):
        (evaluate if in_eval_half(text) else train).append(i)
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


def _dcg(grades: Sequence[float]) -> float:
    return sum((2.0 ** g - 1.0) / np.log2(r + 2) for r, g in enumerate(grades))


def search_metrics(ranked: Sequence[np.ndarray], qs: QuerySet, k: int = 10) -> dict[str, float]:
    """The protocol's metrics of ``ranked[i]`` (int64 catalog rows, best first) for query ``i``:
    ``ndcg@k`` (graded, unjudged = 0), ``ndcg@k_condensed`` (unjudged dropped first),
    ``recall@100`` (of items graded >= 2) and ``queries``."""
    full = cond = 0.0
    recalls = []
    for i, row in enumerate(ranked):
        s, e = qs.indptr[i], qs.indptr[i + 1]
        rel = dict(zip(qs.items[s:e].tolist(), qs.grades[s:e].tolist(), strict=True))
        row = [int(x) for x in row if x >= 0]
        ideal = _dcg(sorted(rel.values(), reverse=True)[:k]) or 1.0
        full += _dcg([rel.get(x, 0.0) for x in row[:k]]) / ideal
        cond += _dcg([rel[x] for x in row if x in rel][:k]) / ideal
        good = {x for x, g in rel.items() if g >= 2}
        if good:
            recalls.append(len(good & set(row[:SEARCH_K])) / len(good))
    n = max(1, len(ranked))
    return {f"ndcg@{k}": full / n, f"ndcg@{k}_condensed": cond / n,
            f"recall@{SEARCH_K}": sum(recalls) / max(1, len(recalls)), "queries": float(len(ranked))}


def _served(pipeline: Pipeline, qs: QuerySet, i: int) -> np.ndarray:
    """The top 100 of query ``i`` as the server answers it: :meth:`Pipeline.search` with the
    query text, its user id (if any) and nothing else."""
    response = pipeline.search(SearchRequest(query=qs.texts[i], user_id=qs.user_ids[i], k=SEARCH_K))
    index = pipeline.catalog.index
    return np.array([index[it.item_id] for it in response.items], dtype=np.int64)


def evaluate_search(pipeline: Pipeline, qs: QuerySet, k: int = 10,
                    dump: Path | None = None) -> dict[str, dict[str, Any]]:
    """The protocol's metrics (:func:`search_metrics`) of each stage over ``qs`` (the evaluation
    half): ``lexical`` and ``dense`` (each source alone), ``hybrid`` (the fused list, no ranker)
    and ``final`` (what :meth:`Pipeline.search` serves, ranker and all). ``dump``: write the
    final top 100 of every query there as JSONL ``{"query": text, "items": [item_id, ...]}``
    (plus ``"user_id"`` when the query has one), the run format ``searcheval.py score`` reads."""
    stages = {}
    if "lexical" in pipeline.sources:
        stages["lexical"] = lambda i: pipeline.sources["lexical"].retrieve(qs.request(i), SEARCH_K).items
    if "text" in pipeline.sources:
        stages["dense"] = lambda i: pipeline.sources["text"].retrieve(
            RetrievalRequest(query=qs.texts[i]), SEARCH_K).items
    stages["hybrid"] = lambda i: pipeline.rank(pipeline.user_request(qs.user_ids[i], qs.texts[i])[0], "search",
                                               use_ranker=False).items[:SEARCH_K]
    stages["final"] = lambda i: _served(pipeline, qs, i)
    ranked: dict[str, list[np.ndarray]] = {name: [] for name in stages}
    for i in range(len(qs)):  # query by query: the text source's query cache serves every stage after the first
        for name, fn in stages.items():
            ranked[name].append(np.asarray(fn(i), dtype=np.int64)[:SEARCH_K])
    out = {name: search_metrics(rows, qs, k) for name, rows in ranked.items()}
    if dump is not None:
        dump.parent.mkdir(parents=True, exist_ok=True)
        tmp = dump.with_name(dump.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            _write_dump(f, pipeline, qs, ranked["final"])
        tmp.replace(dump)
    return out


def _write_dump(f: TextIO, pipeline: Pipeline, qs: QuerySet, ranked: Sequence[np.ndarray]) -> None:
    ids = pipeline.catalog.item_ids
    for i, row in enumerate(ranked):
        line: dict[str, Any] = {"query": qs.texts[i], "items": [ids[int(x)] for x in row if x >= 0]}
        if qs.user_ids[i] is not None:
            line["user_id"] = qs.user_ids[i]
        f.write(json.dumps(line) + "\n")
