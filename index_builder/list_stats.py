"""What the engine's recommendation lists look like on a sample of users: how much the sources'
candidate lists overlap, how much of the catalog the lists cover, and how popular the
recommended items are compared with what users actually interact with.

The sample is drawn (seeded) from the bundle's own users with a history, and each is answered
the way the server answers a Recommend: the stored history, every source's candidates, the fused
list and the re-ranked final list, the history left out of every list (as in the offline
evaluation). It costs two retrievals and one ranking per sampled user (about 500 x 20 ms on a
100k-item shop). Coverage depends on the sample size: 500 users x 10 slots cannot cover more
than 5,000 items, so compare coverages measured with the same ``users`` and ``k`` only.

Popularity is the item's training interaction count as the bundle's item table holds it
(``log_pop``), turned into a percentile of the catalog (0 = the least popular item, 100 = the
most popular; ties share their mean rank). "Popularity bias" is then the mean percentile of the
recommended items against that of a reference: the sampled users' own history items, or, when
given, the purchase events of the data folder.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from tandem.ranking.pipeline import Pipeline
from tandem.retrieval.base import IdSet

__all__ = ["DEFAULT_SAMPLE_USERS", "popularity_percentiles", "list_statistics"]

log = logging.getLogger(__name__)

DEFAULT_SAMPLE_USERS = 500


def popularity_percentiles(log_pop: np.ndarray) -> np.ndarray:
    """float64 (n,) percentile in [0, 100] of each item's popularity among the catalog's items
    (``log_pop`` float (n,), any monotone transform of the counts); ties get their mean rank."""
    n = log_pop.shape[0]
    if n < 2:
        return np.full(n, 50.0)
    return (rankdata(log_pop, method="average") - 1.0) / (n - 1) * 100.0


def _sample_users(pipeline: Pipeline, users: int, seed: int) -> list[str]:
    known = pipeline.histories.user_ids
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(known))
    out: list[str] = []
    for i in order:  # users without a stored history get popularity alone: not what is measured here
        if len(pipeline.histories.get(known[int(i)])):
            out.append(known[int(i)])
            if len(out) == users:
                break
    return out


def list_statistics(pipeline: Pipeline, *, users: int = DEFAULT_SAMPLE_USERS, k: int = 10, seed: int = 0,
                    reference_items: np.ndarray | None = None,
                    reference_label: str = "items in the sampled users' histories") -> dict[str, Any]:
    """Overlap, coverage and popularity statistics of up to ``users`` sampled users' lists.

    ``reference_items`` int64 (e,): catalog indices (one per event) the recommended items'
    popularity is compared with; default: the sampled users' history items. Returns a JSON-able
    dict: ``users``, ``k``, ``sources`` (names), ``overlap`` (``jaccard`` square matrix over
    ``sources``, ``unique_share`` and ``list_length`` per source, ``final_from`` per source: the
    share of final top-k items that source retrieved), ``coverage`` and ``popularity`` (per
    stage: each source's own top-k, ``fused`` and ``final``), with the percentiles of every
    recommended and reference item for plotting.
    """
    if users < 1 or k < 1:
        raise ValueError(f"list statistics need users >= 1 and k >= 1, got users={users}, k={k}")
    sample = _sample_users(pipeline, users, seed)
    if not sample:
        raise ValueError("the bundle has no user with a history: there are no recommendation lists to describe")
    names = list(pipeline.available("recommend"))
    n = pipeline.n_items
    pct = popularity_percentiles(np.asarray(pipeline.table.log_pop, dtype=np.float64))
    lists: dict[str, list[np.ndarray]] = {name: [] for name in names}
    tops: dict[str, list[np.ndarray]] = {name: [] for name in [*names, "fused", "final"]}
    history_items: list[np.ndarray] = []
    final_from = np.zeros(len(names))
    final_slots = 0
    for user in sample:
        req, _ = pipeline.user_request(user)
        seen = IdSet(req.history, n)
        history_items.append(np.asarray(req.history, dtype=np.int64))
        cands, _ = pipeline.retrieve(req, "recommend")
        by_name = {c.source: c.items[~seen.contains(c.items)] for c in cands}
        for name in names:
            got = by_name.get(name, np.zeros(0, np.int64))
            lists[name].append(got)
            tops[name].append(got[:k])
        ranked = pipeline.rank(req, "recommend")
        fused = ranked.fused
        tops["fused"].append(fused.items[~seen.contains(fused.items)][:k])
        keep = ~seen.contains(ranked.items)
        final = ranked.items[keep][:k]
        tops["final"].append(final)
        # which sources retrieved each final item: fused.ranks is (sources, m) in fused order
        pos = ranked.order[keep][:k]
        rows = [fused.sources.index(name) for name in names if name in fused.sources]
        if rows and pos.size:
            found = fused.ranks[rows][:, pos] > 0
            final_from[[names.index(fused.sources[r]) for r in rows]] += found.sum(1)
        final_slots += final.size
    reference = (np.concatenate(history_items) if reference_items is None
                 else np.asarray(reference_items, dtype=np.int64))
    return {
        "users": len(sample),
        "k": k,
        "seed": seed,
        "n_items": n,
        "sources": names,
        "overlap": _overlap(names, lists, final_from / max(final_slots, 1)),
        "coverage": {stage: _coverage(rows, n) for stage, rows in tops.items()},
        "popularity": {
            "reference_label": reference_label,
            "reference_events": int(reference.size),
            "reference_mean_percentile": float(pct[reference].mean()) if reference.size else None,
            "mean_percentile": {stage: _mean(pct, rows) for stage, rows in tops.items()},
            "final_percentiles": pct[np.concatenate(tops["final"])].round(2).tolist(),
            "reference_percentiles": pct[reference].round(2).tolist(),
        },
    }


def _overlap(names: Sequence[str], lists: dict[str, list[np.ndarray]], final_from: np.ndarray) -> dict[str, Any]:
    m = len(names)
    jac = np.eye(m)
    for a, b in itertools.combinations(range(m), 2):
        vals = []
        for x, y in zip(lists[names[a]], lists[names[b]], strict=True):
            union = np.union1d(x, y).size
            if union:
                vals.append(np.intersect1d(x, y).size / union)
        jac[a, b] = jac[b, a] = float(np.mean(vals)) if vals else 0.0
    unique = {}
    for a, name in enumerate(names):
        shares = []
        for u, x in enumerate(lists[name]):
            if x.size:
                others = [lists[names[b]][u] for b in range(m) if b != a]
                rest = np.concatenate(others) if others else np.zeros(0, np.int64)
                shares.append(float((~np.isin(x, rest)).mean()))
        unique[name] = float(np.mean(shares)) if shares else 0.0
    return {
        "jaccard": jac.tolist(),
        "unique_share": unique,
        "list_length": {name: float(np.mean([x.size for x in lists[name]])) for name in names},
        "final_from": {name: float(v) for name, v in zip(names, final_from, strict=True)},
    }


def _coverage(rows: list[np.ndarray], n: int) -> dict[str, float]:
    items = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    distinct = np.unique(items).size
    return {"items": int(distinct), "share": distinct / max(n, 1), "slots": int(items.size)}


def _mean(pct: np.ndarray, rows: list[np.ndarray]) -> float | None:
    items = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    return float(pct[items].mean()) if items.size else None
