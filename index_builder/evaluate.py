"""Offline evaluation of candidate sources and pipelines on a split.

Every stage of the engine (popularity, two-tower, item-CF, fused candidates, the final ranked
pipeline) is measured the same way: for each target user of a split stage, a request carrying
the history the model may see is answered with a top-K list, the history is never counted
(it is excluded, as in the S3-Rec full-ranking protocol), and the list is scored against the
held-out items with :func:`retrieval.metrics.ranking_metrics`.

A stage is any of, tried in this order:

* an object with ``score_all(requests) -> float32 (b, n_items)``: full ranking of the catalog
  with :func:`retrieval.metrics.top_k_excluding`, in batches;
* a :class:`retrieval.base.CandidateSource`: ``retrieve(request, max(ks) + len(history))``,
  history items dropped;
* a plain callable ``rank(requests, k) -> int64 (b, k)`` (-1 padded), which should leave the
  history out itself (as the serving pipeline does); history items it returns are dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tandem.index_builder.splits import Split, Targets, make_split
from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Catalog, Interactions
from tandem.retrieval.metrics import ranking_metrics, top_k_excluding
from tandem.retrieval.popularity import Popularity
from tandem.retrieval.progress import Progress

__all__ = [
    "DEFAULT_KS",
    "FIT_ON",
    "Ranker",
    "StageFactory",
    "rank_targets",
    "evaluate_source",
    "evaluate_together",
    "evaluate_stages",
    "format_table",
    "evaluate_dataset",
]

log = logging.getLogger(__name__)

DEFAULT_KS: tuple[int, ...] = (10, 50, 200)
#: A ranking function: requests and a list length in, int64 (len(requests), k) item indices out.
Ranker = Callable[[Sequence[RetrievalRequest], int], np.ndarray]
#: Builds a fitted stage from the split and the interactions it may be fitted on.
StageFactory = Callable[[Split, Interactions], Any]
#: What stages are fitted on in :func:`evaluate_dataset`.
FIT_ON: tuple[str, ...] = ("train", "train+valid")


def _stage_targets(split: Split, targets: str) -> Targets:
    if targets not in ("test", "valid"):
        raise ValueError(f"targets must be 'test' or 'valid', got {targets!r}")
    t = split.test if targets == "test" else split.valid
    if len(t) == 0:
        raise ValueError(f"the {split.protocol['name']!r} split has no {targets} targets; evaluate on a "
                         "leave-last-out or temporal split (and check the data has users with 3+ items)")
    return t


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(sorted(set(int(k) for k in ks)))
    if not out or out[0] < 1:
        raise ValueError(f"ks must be positive list lengths, e.g. 10,50,200; got {list(ks)}")
    return out


def _drop_history(rows: np.ndarray, t: Targets, lo: int, k: int) -> np.ndarray:
    """Remove each row's history items (keeping order), cut to ``k``, pad with -1."""
    out = np.full((rows.shape[0], k), -1, dtype=np.int64)
    for r in range(rows.shape[0]):
        row = rows[r][rows[r] >= 0]
        row = row[~np.isin(row, t.history(lo + r))][:k]
        out[r, : row.shape[0]] = row
    return out


def rank_targets(stage: Any, targets: Targets, n_items: int, k: int, *, batch_size: int = 1024,
                 desc: str | None = None) -> np.ndarray:
    """Top-``k`` lists for every row of ``targets``: int64 (len(targets), k), -1 padded,
    never containing the row's history. See the module docstring for what ``stage`` may be.
    ``desc`` names the progress bar (or periodic log line) shown while it runs."""
    u = len(targets)
    out = np.full((u, k), -1, dtype=np.int64)
    bar = Progress(desc or f"rank {_stage_name(stage)}", u, unit="user", logger=log)
    for lo in range(0, u, batch_size):
        hi = min(lo + batch_size, u)
        _rank_batch(stage, targets, n_items, k, lo, hi, out, batch_size)
        bar.update(hi - lo)
    bar.close()
    return out


def _stage_name(stage: Any) -> str:
    return str(getattr(stage, "name", type(stage).__name__))


def _rank_batch(stage: Any, targets: Targets, n_items: int, k: int, lo: int, hi: int, out: np.ndarray,
                batch_size: int) -> None:
    reqs = targets.requests(lo, hi)
    if hasattr(stage, "score_all"):
        scores = np.asarray(stage.score_all(reqs))
        if scores.shape != (hi - lo, n_items):
            raise ValueError(f"{type(stage).__name__}.score_all returned shape {scores.shape}, expected "
                             f"({hi - lo}, {n_items}) (one row per request, one column per item)")
        ptr = targets.history_indptr[lo:hi + 1]
        hist = (ptr - ptr[0], targets.history_items[ptr[0]:ptr[-1]])
        out[lo:hi] = top_k_excluding(scores, hist, k, batch_size=batch_size)
    elif hasattr(stage, "retrieve"):
        for r, req in enumerate(reqs):
            c = stage.retrieve(req, k + np.unique(req.history).shape[0])
            items = np.asarray(c.items, dtype=np.int64)
            items = items[~np.isin(items, req.history)][:k]
            out[lo + r, : items.shape[0]] = items
    elif callable(stage):
        got = np.asarray(stage(reqs, k))
        if got.ndim != 2 or got.shape[0] != hi - lo or not np.issubdtype(got.dtype, np.integer):
            raise ValueError(f"the ranking callable returned {got.dtype} {got.shape}; expected int64 "
                             f"({hi - lo}, <= {k}) item indices padded with -1")
        out[lo:hi] = _drop_history(got[:, :k], targets, lo, k)
    else:
        raise TypeError(f"cannot evaluate {type(stage).__name__}: give an object with score_all(requests) "
                        "or retrieve(request, k), or a callable rank(requests, k)")


def evaluate_source(source: Any, split: Split, n_items: int, ks: Sequence[int] = DEFAULT_KS,
                    targets: str = "test", *, batch_size: int = 1024, coverage_k: int = 10,
                    desc: str | None = None) -> dict[str, float]:
    """recall@K, ndcg@K, mrr@K and hit_rate@K for every K in ``ks`` plus coverage@``coverage_k``
    of one stage on ``split.test`` (``targets="test"``) or ``split.valid``, and ``users``: the
    number of users measured. The stage must already be fitted (on ``split.train``, or on
    ``split.train_and_valid`` for a refit before the test stage)."""
    ks = _check_ks(ks)
    t = _stage_targets(split, targets)
    t0 = time.perf_counter()
    ranked = rank_targets(source, t, n_items, max(max(ks), coverage_k), batch_size=batch_size,
                          desc=f"eval {desc or _stage_name(source)} on {targets}")
    out = ranking_metrics(ranked, t, ks, n_items=n_items, coverage_k=coverage_k)
    out["users"] = float(len(t))
    log.info("evaluated %s on %d %s users in %.1fs", desc or _stage_name(source), len(t), targets,
             time.perf_counter() - t0)
    return out


def evaluate_together(rank: Callable[[Sequence[RetrievalRequest], int], tuple[np.ndarray, ...]],
                      names: Sequence[str], split: Split, n_items: int, ks: Sequence[int] = DEFAULT_KS,
                      targets: str = "test", *, batch_size: int = 1024, coverage_k: int = 10,
                      desc: str | None = None) -> dict[str, dict[str, float]]:
    """:func:`evaluate_source` for several stages that one call ranks together: ``rank(requests,
    k)`` returns one int64 (len(requests), k) array per name of ``names`` (-1 padded; history
    items are dropped here as for a plain callable). Used for the fused and the final list, which
    one pass of the pipeline gives both of (the fused list is the re-ranker's input): ranking the
    test users once instead of twice."""
    ks = _check_ks(ks)
    t = _stage_targets(split, targets)
    k = max(max(ks), coverage_k)
    u = len(t)
    ranked = [np.full((u, k), -1, dtype=np.int64) for _ in names]
    t0 = time.perf_counter()
    bar = Progress(f"eval {desc or ' + '.join(names)} on {targets}", u, unit="user", logger=log)
    for lo in range(0, u, batch_size):
        hi = min(lo + batch_size, u)
        got = rank(t.requests(lo, hi), k)
        if len(got) != len(names):
            raise ValueError(f"the ranking callable returned {len(got)} arrays, expected one per stage {list(names)}")
        for out, g in zip(ranked, got, strict=True):
            g = np.asarray(g)
            if g.ndim != 2 or g.shape[0] != hi - lo or not np.issubdtype(g.dtype, np.integer):
                raise ValueError(f"the ranking callable returned {g.dtype} {g.shape}; expected int64 "
                                 f"({hi - lo}, <= {k}) item indices padded with -1")
            out[lo:hi] = _drop_history(g[:, :k], t, lo, k)
        bar.update(hi - lo)
    bar.close()
    metrics = {}
    for name, r in zip(names, ranked, strict=True):
        metrics[name] = ranking_metrics(r, t, ks, n_items=n_items, coverage_k=coverage_k)
        metrics[name]["users"] = float(u)
    log.info("evaluated %s on %d %s users in %.1fs", " + ".join(names), u, targets, time.perf_counter() - t0)
    return metrics


def evaluate_stages(stages: Mapping[str, Any], split: Split, n_items: int, ks: Sequence[int] = DEFAULT_KS,
                    targets: str = "test", *, batch_size: int = 1024) -> dict[str, dict[str, float]]:
    """:func:`evaluate_source` for each named stage, in order: ``{stage name: metrics}``."""
    return {name: evaluate_source(stage, split, n_items, ks, targets, batch_size=batch_size, desc=name)
            for name, stage in stages.items()}


#: rows of :func:`format_table` that count what was measured (printed last, as integers)
_COUNTS = ("users", "queries")


def format_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """A plain-text table: one row per metric, one column per stage."""
    stages = list(metrics)
    names: list[str] = []
    for m in metrics.values():
        names += [n for n in m if n not in names and n not in _COUNTS]
    counts = [n for n in _COUNTS if any(n in m for m in metrics.values())] or ["users"]
    width = max([len(n) for n in names + counts])
    cols = [max(len(s), 8) for s in stages]
    lines = ["  ".join([f"{'metric':<{width}}"] + [f"{s:>{c}}" for s, c in zip(stages, cols, strict=True)])]
    for n in names + counts:
        cells = []
        for s, c in zip(stages, cols, strict=True):
            v = metrics[s].get(n)
            cells.append(f"{'-':>{c}}" if v is None else
                         f"{int(v):>{c}d}" if n in _COUNTS else f"{v:>{c}.4f}")
        lines.append("  ".join([f"{n:<{width}}"] + cells))
    return "\n".join(lines)


def evaluate_dataset(catalog: Catalog, interactions: Interactions, protocol: str = "leave-last-out",
                     ks: Sequence[int] = DEFAULT_KS, targets: str = "test", *,
                     split_parameters: Mapping[str, Any] | None = None, fit_on: str = "train",
                     stages: Mapping[str, StageFactory] | None = None) -> dict[str, Any]:
    """Split the data, fit and evaluate each stage, and return the JSON-able report
    ``{"protocol": {...}, "data": {...}, "ks": [...], "metrics": {stage: {metric: value}}}``.

    ``stages`` maps a stage name to a factory ``(split, fit_interactions) -> fitted stage``
    (default: ``{"popularity": ...}``). ``fit_interactions`` is ``split.train`` when ``fit_on``
    is ``"train"`` (every stage sees the same training data; the usual protocol) or
    ``split.train_and_valid`` for ``"train+valid"`` (a refit before the test stage).
    """
    ks = _check_ks(ks)
    if fit_on not in FIT_ON:
        raise ValueError(f"fit_on must be one of {', '.join(FIT_ON)}, got {fit_on!r}")
    split = make_split(interactions, protocol, **dict(split_parameters or {}))
    _stage_targets(split, targets)  # fail before fitting anything
    fit = split.train if fit_on == "train" else split.train_and_valid
    if stages is None:
        stages = {"popularity": lambda s, train: Popularity().fit(catalog, train)}
    metrics = {name: evaluate_source(factory(split, fit), split, len(catalog), ks, targets)
               for name, factory in stages.items()}
    return {
        "protocol": {**split.protocol, "targets": targets, "fit_on": fit_on, "counts": split.counts()},
        "data": {"users": interactions.n_users, "items": len(catalog), "events": len(interactions)},
        "ks": list(ks),
        "metrics": metrics,
    }
