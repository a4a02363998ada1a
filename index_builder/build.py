"""``tandem build``: cleaning -> split -> text encoding -> source training -> ranker training
-> evaluation -> one versioned bundle.

The ranker learns from the retrieval stage's own candidates: sources are fitted on the
training part, and each validation user's candidate list (their history = training events)
is labelled with the held-out item. With ``split = "none"`` the same happens on an internal
leave-last-out split, and the sources are then refitted on every event (``refit_on_all``).
"""

from __future__ import annotations

import logging
import math
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tandem.index_builder.cleaning import CleanResult, load_dataset, load_queries
from tandem.index_builder.config import BuildConfig, config_to_dict
from tandem.index_builder.evaluate import evaluate_source, evaluate_together
from tandem.index_builder.incremental import PreviousBundle, WarmStart, cold_schedule
from tandem.index_builder.splits import Split, Targets, leave_last_out, make_split
from tandem.index_builder.threads import threads_for_stage
from tandem.ranking.bootstrap import paired_bootstrap
from tandem.ranking.features import compute_features, feature_names
from tandem.ranking.history import HistoryStore
from tandem.ranking.item_table import build_item_table, item_table_inputs
from tandem.ranking.loader import save_pipeline
from tandem.ranking.pipeline import KINDS, Pipeline
from tandem.ranking.ranker import Ranker, RankingLists, ndcg_per_list
from tandem.retrieval.ann import AnnConfig
from tandem.retrieval.base import CandidateSource
from tandem.retrieval.bundle import write_bundle
from tandem.retrieval.data import Catalog, Event, Interactions
from tandem.retrieval.progress import Progress
from tandem.retrieval.registry import SOURCES, FitContext
from tandem.retrieval.text_cache import TEXT_SOURCE_VECTORS, TextCache, reuse_vectors
from tandem.retrieval.text_tower import TextEncoder

__all__ = ["BuildResult", "build", "fit_pipeline", "fit_sources", "default_sources", "ranker_lists", "evaluate_pipeline",
           "format_stage_table"]

log = logging.getLogger(__name__)


@dataclass
class BuildResult:
    folder: Path | None
    pipeline: Pipeline
    split: Split
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    search_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    #: every item's text vector with the hash of its text (written into the bundle for the next
    #: incremental build)
    text_cache: TextCache | None = None


class _Timer:
    """Times the build's stages and gives each its thread count (``[build] threads``, see
    ``index_builder/threads.py``). With ``threads = 0`` the idle cores are measured again before a
    stage when the last measurement is more than ``remeasure_s`` old (each costs 0.3 s)."""

    def __init__(self, threads: int = 0, remeasure_s: float = 10.0) -> None:
        self.seconds: dict[str, float] = {}
        #: CPU seconds of this process (all its threads) per stage: steadier than wall time on a busy machine
        self.cpu_seconds: dict[str, float] = {}
        self.threads: dict[str, int] = {}
        self._setting = threads
        self._remeasure_s = remeasure_s
        self._chosen: tuple[float, int] | None = None  # (when, threads)

    def _threads(self) -> int:
        now = time.perf_counter()
        if self._chosen is None or now - self._chosen[0] > self._remeasure_s:
            self._chosen = (now, threads_for_stage(self._setting))
        return self._chosen[1]

    @contextmanager
    def stage(self, name: str):
        n = self._threads()
        t0, c0 = time.perf_counter(), time.process_time()
        log.info("stage %s ... (%d thread%s)", name, n, "" if n == 1 else "s")
        yield
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        self.cpu_seconds[name] = round(time.process_time() - c0, 2)
        self.threads[name] = n
        log.info("stage %s done in %.1fs", name, self.seconds[name])


def format_stage_table(timings: dict[str, float], total_s: float | None = None,
                       cpu: dict[str, float] | None = None) -> str:
    """The build's stages in the order they ran, with seconds and share of the total (and the
    CPU seconds of each, all threads, when ``cpu`` is given: on a busy machine the steadier
    measure of a stage's work), and the stages that took most of it ("where the time went")."""
    total = total_s if total_s is not None else sum(timings.values())
    width = max([len(n) for n in timings] + [len("stage"), len("total")])
    extra = "" if cpu is None else f"  {'cpu s':>8}"
    lines = [f"{'stage':<{width}}  {'seconds':>8}  {'share':>6}{extra}"]
    for name, sec in timings.items():
        col = "" if cpu is None else f"  {cpu.get(name, 0.0):>8.1f}"
        lines.append(f"{name:<{width}}  {sec:>8.1f}  {100 * sec / max(total, 1e-9):>5.1f}%{col}")
    col = "" if cpu is None else f"  {sum(cpu.values()):>8.1f}"
    lines.append(f"{'total':<{width}}  {total:>8.1f}  {'':>6}{col}")
    top = sorted(timings.items(), key=lambda kv: -kv[1])[:3]
    lines.append("most time: " + ", ".join(f"{n} {100 * sec / max(total, 1e-9):.0f}%" for n, sec in top))
    return "\n".join(lines)


def default_sources(config: BuildConfig, kinds: Iterable[str] = KINDS) -> tuple[str, ...]:
    """The sources a bundle gets: those the pipeline config names for ``kinds`` and those every
    bundle has (popularity, the cold-start fallback), in registry order."""
    named = {name for kind in kinds for name in config.pipeline.sources_for(kind)}
    return tuple(name for name, entry in SOURCES.items() if name in named or entry.always)


def fit_sources(config: BuildConfig, context: FitContext, names: Iterable[str] | None = None,
                timer: _Timer | None = None, suffix: str = "",
                skipped: dict[str, str] | None = None, engine: Any = None) -> dict[str, CandidateSource]:
    """Fit the sources ``names`` (default: every source the pipeline config names and those
    every bundle has) in registry order, each with its ``config`` section, through its registry
    entry. A source that cannot be fitted from ``context`` (one that learns from events, on a
    shop without any) is left out with one log line; ``skipped``, if given, gets its name and
    the reason. The sources an offline ``engine`` fits (``engine.fits(name)``, e.g. the Spark
    engine's popularity and item-CF) are fitted by it on the same training events."""
    timer = timer or _Timer(config.threads)
    wanted = set(default_sources(config) if names is None else names)
    sources: dict[str, CandidateSource] = {}
    for name, entry in SOURCES.items():
        if name in wanted:
            reason = entry.cannot_fit(context)
            if reason is not None:
                log.info("source %s skipped: %s", name, reason)
                if skipped is not None:
                    skipped[name] = reason
                continue
            with timer.stage((entry.stage or name) + suffix):
                section = getattr(config, entry.config_field)
                if engine is not None and engine.fits(name):
                    sources[name] = engine.fit_source(name, section, len(context.catalog), context.train)
                else:
                    sources[name] = entry.fit(context, section)
    return sources


def _ann_config(config: BuildConfig) -> AnnConfig:
    """``[build.ann]`` with ``k_tune`` unset resolved to the depth every source is searched at."""
    if config.ann.k_tune is not None:
        return config.ann
    return replace(config.ann, k_tune=config.pipeline.per_source_k)


def _make_pipeline(config: BuildConfig, catalog: Catalog, sources: Mapping[str, CandidateSource],
                   train: Interactions, histories: HistoryStore, rankers: dict[str, Ranker] | None = None,
                   built_at: int = 0) -> Pipeline:
    table = build_item_table(catalog, train, **item_table_inputs(sources))
    return Pipeline(catalog, sources, table, histories, rankers, config.pipeline, built_at=built_at)


def _training_logs(sources: Mapping[str, CandidateSource]) -> dict[str, Any]:
    """What each source trained in epochs recorded (its ``log``: best epoch, epochs run, seconds)."""
    out = {}
    for name, source in sources.items():
        log_ = getattr(source, "log", None)
        if log_ is not None:
            out[name] = log_
    return out


def ranker_lists(pipeline: Pipeline, targets: Targets, rows: np.ndarray, kind: str = "recommend",
                 progress: Callable[[int], None] | None = None) -> tuple[RankingLists, dict[str, float]]:
    """Candidate lists of the given target rows, featurised and labelled with their targets.

    Returns the lists and the fused list's recall (share of rows whose target was retrieved).
    Shows a progress bar (or logs periodic lines, see ``tandem.retrieval.progress``); ``progress``, if
    given, is also called with the row number every 1000 rows."""
    feats, labels = [], []
    found = 0
    bar = Progress("ranker lists", len(rows), unit="user", logger=log)
    for n, i in enumerate(rows):
        bar.update(1)
        req = targets.request(int(i))
        ranked = pipeline.rank(req, kind, use_ranker=False)
        fused = ranked.fused
        if len(fused.items) == 0:
            continue
        ctx = pipeline.context(req, kind)
        x = compute_features(pipeline.table, ctx, fused.items, fused.scores, fused.ranks, fused.source_scores)
        y = np.isin(fused.items, targets.targets(int(i))).astype(np.float32)
        found += int(y.any())
        feats.append(x)
        labels.append(y)
        if progress is not None and n % 1000 == 0:
            progress(n)
    bar.close()
    lists = RankingLists.from_lists(feats, labels, max_list=pipeline.config.fused_k)
    return lists, {"lists": float(len(feats)), "fused_recall": found / max(1, len(rows))}


def _train_ranker(config: BuildConfig, pipeline: Pipeline, valid: Targets, timer: _Timer,
                  warm: WarmStart | None = None) -> tuple[Ranker, dict]:
    """The recommend ranker on the lists of at most ``ranker_max_users`` validation users; with
    ``warm``, started from the earlier bundle's ranker (when it fits) on its share of those users."""
    rng = np.random.default_rng(config.seed)
    rows = np.arange(len(valid))
    names = feature_names(pipeline.available("recommend"))
    ranker, init, share = (Ranker(names, config.ranker), None, 1.0) if warm is None else warm.ranker_start(names, config)
    n_users = min(rows.size, config.ranker_max_users)
    if init is not None:
        n_users = max(min(10, rows.size), math.ceil(share * n_users))
    if rows.size > n_users:
        rows = np.sort(rng.choice(rows, n_users, replace=False))
    with timer.stage("ranker_lists"):
        lists, info = ranker_lists(pipeline, valid, rows)
    with timer.stage("ranker_train"):
        ranker.fit(lists, init=init)
    info["epochs"] = len(ranker.history)
    info["max_epochs"] = ranker.max_epochs
    info["best_valid_ndcg@10"] = max((h["valid_ndcg@10"] for h in ranker.history), default=0.0)
    info["best_epoch"] = max(ranker.history, key=lambda h: h["valid_ndcg@10"])["epoch"] if ranker.history else None
    if warm is not None:
        warm.record["ranker"]["users"] = int(rows.size)
    return ranker, info


def evaluate_pipeline(pipeline: Pipeline, split: Split, ks: Iterable[int], *, sources: bool = True,
                      timer: _Timer | None = None) -> dict[str, dict[str, float]]:
    """Every source alone, the fused list and the final (re-ranked) list on ``split.test``."""
    ks = tuple(ks)
    n = pipeline.n_items
    out: dict[str, dict[str, float]] = {}
    timer = timer or _Timer()
    stages: dict[str, Any] = {}
    if sources:
        for name in pipeline.available("recommend"):
            stages[name] = pipeline.sources[name]
    together = pipeline.rankers.get("recommend") is not None
    if not together:
        stages["fused"] = lambda reqs, k: pipeline.rank_requests(reqs, k, use_ranker=False)
    for name, stage in stages.items():
        with timer.stage(f"eval_{name}"):
            out[name] = evaluate_source(stage, split, n, ks, "test", desc=name)
    if together:
        # the re-ranker's input is the fused list: one pass over the test users gives both rows
        with timer.stage("eval_final"):
            out.update(evaluate_together(pipeline.rank_requests_fused_and_final, ("fused", "final"), split, n, ks,
                                          "test"))
    return out


def fit_pipeline(clean: CleanResult, config: BuildConfig, timer: _Timer | None = None,
                 encoder: TextEncoder | None = None, engine: Any = None, warm: WarmStart | None = None) -> BuildResult:
    """Fit every part of the pipeline on cleaned data according to ``config``; ``engine`` (e.g.
    :class:`~tandem.index_builder.spark_engine.SparkEngine`, which cleaned ``clean``) runs the split
    and the sources it fits. ``warm`` (an incremental build, :mod:`tandem.index_builder.incremental`):
    text vectors reused by content hash, the two-tower and the ranker started from the earlier
    bundle's, for fewer epochs (:meth:`WarmStart.configure`, :meth:`WarmStart.ranker_start`)."""
    timer = timer or _Timer(config.threads)
    catalog, interactions = clean.catalog, clean.interactions
    with timer.stage("split"):
        if engine is None:
            split = make_split(interactions, config.split)
            fit_split = leave_last_out(interactions) if config.split == "none" else split
        else:
            split = engine.make_split(interactions, config.split)
            fit_split = engine.make_split(interactions, "leave-last-out") if config.split == "none" else split
    search_only = len(interactions) == 0
    if search_only and clean.report.events_read:
        log.warning("none of the %d events read survived cleaning (see the cleaning report): building a "
                    "search-only bundle", clean.report.events_read)
    encoder = encoder or TextEncoder(config.text)
    with timer.stage("text_encode"):
        texts = [catalog.text(i) for i in range(len(catalog))]
        text_cache, reuse = reuse_vectors(encoder, texts, None if warm is None else warm.text_cache,
                                          progress=True, why_none="" if warm is None else warm.text_reason)
        text_vectors = text_cache.vectors
    if warm is not None:
        config = warm.configure(config, int(text_vectors.shape[1]))
        if reuse.full_reason is not None:
            log.warning("text vectors: encoding all %d texts: %s", len(texts), reuse.full_reason)
        else:
            log.info("text vectors: %d reused from bundle %s, %d new or changed texts encoded", reuse.reused,
                     warm.previous.version, reuse.encoded)
    histories = HistoryStore.from_interactions(interactions)
    built_at = int(interactions.ts.max()) if len(interactions) else 0
    context = FitContext(catalog, fit_split.train, valid=fit_split.valid, text_vectors=text_vectors,
                         encoder=encoder, ann=_ann_config(config), progress=True,
                         warm={} if warm is None or warm.two_tower is None else {"two_tower": warm.two_tower})
    skipped: dict[str, str] = {}
    sources = fit_sources(config, context, timer=timer, skipped=skipped, engine=engine)
    pipeline = _make_pipeline(config, catalog, sources, fit_split.train, histories, built_at=built_at)
    info: dict[str, Any] = {"skipped_sources": skipped, "skipped_rankers": {}}
    rankers: dict[str, Ranker] = {}
    if search_only:
        reason = "it learns from users' events and the data has none (a search-only shop)"
        log.info("recommend ranker skipped: %s", reason)
        info["skipped_rankers"]["recommend"] = reason
    elif len(fit_split.valid) == 0:
        # a young shop: events, but no user with the 3 distinct items that give the ranker a held-out
        # target; Recommend answers in the fused order until a rebuild has such users
        reason = ("no user has 3 or more distinct items, so there is no held-out item to train it on; "
                  "Recommend answers in the fused order (rebuild once users have more history)")
        log.warning("recommend ranker skipped: %s", reason)
        info["skipped_rankers"]["recommend"] = reason
    else:
        rankers["recommend"], info["ranker"] = _train_ranker(config, pipeline, fit_split.valid, timer, warm)
    logs = _training_logs(sources)
    for name, tlog in logs.items():
        # the whole curve, not just its end: the refit of a split-none build trains without a
        # validation set, so this first fit is the only record of it (`tandem report` plots it)
        info[name] = {"best_epoch": tlog.best_epoch, "epochs_run": tlog.epochs_run,
                      "seconds": round(tlog.seconds, 1),
                      "stopped": getattr(tlog, "stopped", None), "max_epochs": getattr(tlog, "max_epochs", None),
                      "valid": [list(e) for e in tlog.evals[-3:]],
                      "history": {"loss": [round(float(x), 6) for x in tlog.losses],
                                  "valid": [list(e) for e in tlog.evals]}}
        if getattr(tlog, "restarts", 0):  # training processes started again after a worker crashed
            info[name]["restarts"] = tlog.restarts
    if config.split == "none" and config.refit_on_all and not search_only:
        # every event this time; sources trained in epochs rerun their best epoch count
        context = replace(context, train=interactions, valid=None,
                          epochs={name: tlog.best_epoch for name, tlog in logs.items()})
        sources = fit_sources(config, context, timer=timer, suffix="_refit", engine=engine)
        pipeline = _make_pipeline(config, catalog, sources, interactions, histories, built_at=built_at)
    pipeline = Pipeline(pipeline.catalog, pipeline.sources, pipeline.table, pipeline.histories,
                        rankers, pipeline.config, built_at=built_at)
    metrics: dict[str, dict[str, float]] = {}
    if config.split != "none" and len(split.test):
        metrics = evaluate_pipeline(pipeline, split, config.eval_ks, timer=timer)
    info["text_model"] = {"id": encoder.model_id, "backend": encoder.config.backend, "dim": int(text_vectors.shape[1])}
    info["incremental"] = _incremental_record(warm, reuse.to_dict(), sources, info)
    return BuildResult(None, pipeline, split, metrics, timer.seconds, info=info, text_cache=text_cache)


def _incremental_record(warm: WarmStart | None, texts: dict[str, Any], sources: Mapping[str, CandidateSource],
                        info: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``incremental`` section: what was reused from which bundle (None for a full
    build), and the epoch counts the last cold fits found best (the next warm build's base)."""
    schedule = cold_schedule(info)
    if warm is None:
        return {"from": None, "texts": texts, "schedule": schedule}
    record = {**warm.record, "texts": texts}
    two_tower = sources.get("two_tower")
    report = getattr(two_tower, "warm_report", None)
    if report is not None:
        record["two_tower"] = {**record["two_tower"], **report.to_dict()}
    elif two_tower is not None and "reason" not in record["two_tower"]:
        record["two_tower"] = {**record["two_tower"], "warm": False, "reason": "not trained warm"}
    # a model that started cold here sets the schedule anew; a warm one keeps the earlier cold one's
    record["schedule"] = {name: (warm.schedule.get(name) if (record.get(name) or {}).get("warm") else schedule[name])
                          for name in ("two_tower", "ranker")}
    return record


def _fit_search(result: BuildResult, queries: list, config: BuildConfig, timer: _Timer) -> None:
    """Train and select the search ranker on the training half of the graded queries only;
    evaluate search on the evaluation half (the protocol of :mod:`tandem.index_builder.search_eval`)."""
    from tandem.index_builder.search_eval import evaluate_search, group_queries, search_lists, split_queries

    p = result.pipeline
    qs = group_queries(queries, p.catalog)
    train_q, eval_q = split_queries(qs)
    rankers = dict(p.rankers)
    decision: dict[str, Any] = {"trained": False, "kept": False}
    if len(train_q) >= 20 and p.available("search"):
        with timer.stage("search_ranker"):
            lists = search_lists(p, train_q)
            if (lists.labels * lists.mask).sum(1).astype(bool).sum() >= 10:
                ranker, decision = _search_ranker(p, lists, config)
                if decision["kept"]:
                    rankers["search"] = ranker
    result.pipeline = Pipeline(p.catalog, p.sources, p.table, p.histories, rankers, p.config,
                               built_at=p.built_at)
    if len(eval_q):
        with timer.stage("eval_search"):
            result.search_metrics = evaluate_search(result.pipeline, eval_q)
    result.info["search"] = {"queries": len(qs), "train_queries": len(train_q), "eval_queries": len(eval_q),
                             "ranker": decision}


def _search_ranker(p: Pipeline, lists: RankingLists, config: BuildConfig) -> tuple[Ranker, dict[str, Any]]:
    """Train the search ranker on the training queries' lists and decide whether to ship it.

    A fifth of the training queries (at least 5) is held out; the ranker is kept only when it
    orders them better (graded NDCG@10) than the fused hybrid order it would replace by more
    than the noise of so few queries: the whole 95% paired-bootstrap interval of the per-query
    gain must lie above zero (``tandem.ranking.bootstrap``). With the ~150 training queries of a small
    shop it often does not, and a ranker that makes search worse must not be served. The
    evaluation queries play no part in the decision."""
    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(len(lists))
    n_valid = max(5, len(lists) // 5)
    valid, fit = lists.take(perm[:n_valid]), lists.take(perm[n_valid:])
    names = feature_names(p.available("search"))
    ranker = Ranker(names, replace(config.ranker, seed=config.seed))
    try:
        ranker.fit(fit, valid)
    except ValueError as exc:  # e.g. no positive left in the fitting part
        log.warning("search ranker not trained: %s", exc)
        return ranker, {"trained": False, "kept": False, "reason": str(exc)}
    fused = ndcg_per_list(valid.features[..., names.index("fused_score")], valid)
    ranked = ndcg_per_list(ranker.score_lists(valid), valid)
    gain = paired_bootstrap(ranked, fused, seed=config.seed)
    kept = gain.significant
    log.info("search ranker %s: held-out training queries NDCG@10 %.4f against %.4f for the fused order "
             "(gain %+.4f, %.0f%% interval [%+.4f, %+.4f] over %d queries)", "kept" if kept else "not kept",
             ranked.mean(), fused.mean(), gain.mean, 100 * gain.level, gain.low, gain.high, gain.lists)
    return ranker, {"trained": True, "kept": bool(kept), "valid_queries": int(n_valid),
                    "valid_ndcg@10": float(ranked.mean()), "fused_valid_ndcg@10": float(fused.mean()),
                    "gain_ndcg@10": gain.to_dict()}


def _library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("tandem", "numpy", "scipy", "torch", "faiss-cpu", "sentence-transformers", "bm25s"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def build(data_dir: Path, out_root: Path, config: BuildConfig | None = None, *,
          extra_events: Iterable[Event] | None = None, strict: bool = False,
          event_log: dict | None = None, engine: Any = None, make_current: bool = True,
          catalog_edits: list | None = None) -> BuildResult:
    """The whole offline job; returns the result with ``folder`` set to the new bundle.

    ``config.from_bundle`` set: an incremental build from that earlier bundle
    (:mod:`tandem.index_builder.incremental`; ``result.info["incremental"]`` says what was reused).
    ``make_current`` False writes the bundle without pointing ``out_root/CURRENT`` at it (a
    candidate to evaluate before publishing it with :func:`tandem.retrieval.bundle.set_current`).

    ``event_log`` says which events of the server's event log ``extra_events`` holds (what
    :func:`tandem.index_builder.event_log_reader.event_log_mark` returns); the manifest keeps it
    as ``event_log`` so that the server replays exactly the later ones; ``catalog_edits`` are the
    log's live catalog changes up to the same position (upserts override catalog rows, deletes
    remove items). None: the bundle includes
    no logged event (``{"seq": 0}``), and the server replays the whole log into it.

    ``engine``: None runs every stage here (the local engine); a
    :class:`~tandem.index_builder.spark_engine.SparkEngine` runs reading and cleaning, the split,
    popularity and item-CF as Spark jobs (same results; see docs/operations.md, "Spark")."""
    config = config or BuildConfig()
    started = time.perf_counter()
    timer = _Timer(config.threads)
    warm = None
    if config.from_bundle is not None:
        with timer.stage("previous_bundle"):
            warm = WarmStart.load(PreviousBundle.open(config.from_bundle), config.incremental)
        log.info("incremental build from bundle %s (%s)", warm.previous.version, warm.previous.folder)
    with timer.stage("clean"):
        if engine is None:
            clean = load_dataset(data_dir, config.cleaning, strict=strict, extra_events=extra_events,
                                 catalog_edits=catalog_edits)
        else:
            if catalog_edits:
                raise ValueError("the event log holds live catalog changes, which --engine spark does not read yet; "
                                 "build with --engine local")
            clean = engine.load_dataset(data_dir, config.cleaning, strict=strict, extra_events=extra_events)
    result = fit_pipeline(clean, config, timer, engine=engine, warm=warm)
    queries = load_queries(data_dir, clean.catalog)
    if queries:
        _fit_search(result, queries, config, timer)
    pipeline = result.pipeline

    def fill(folder: Path) -> dict:
        with timer.stage("write"):
            parts = save_pipeline(pipeline, folder)
            if result.text_cache is not None:
                result.text_cache.save(folder, TEXT_SOURCE_VECTORS if "text" in pipeline.sources else None)
        ann = {name: src.index_info() for name, src in pipeline.sources.items() if hasattr(src, "index_info")}
        return {
            **parts,
            "data": {"path": str(data_dir), "items": len(clean.catalog), "users": clean.interactions.n_users,
                     "events": len(clean.interactions), "queries": 0 if queries is None else len(queries)},
            "cleaning": clean.report.to_dict(),
            "skipped_sources": result.info.get("skipped_sources", {}),
            "skipped_rankers": result.info.get("skipped_rankers", {}),
            "split": result.split.protocol,
            "config": config_to_dict(config),
            "models": {"text": result.info.get("text_model"), "two_tower": result.info.get("two_tower"),
                       "ranker": result.info.get("ranker"), "search": result.info.get("search")},
            "indexes": ann,
            "metrics": result.metrics,
            "search_metrics": result.search_metrics,
            "event_log": event_log if event_log is not None else {"seq": 0},
            "incremental": result.info.get("incremental"),
            "timings_s": timer.seconds,
            "cpu_s_per_stage": timer.cpu_seconds,
            "threads_per_stage": timer.threads,
            "library_versions": _library_versions(),
            **({} if engine is None else {"engine": engine.describe()}),
        }

    folder = write_bundle(out_root, fill, make_current=make_current)
    pipeline.version = folder.name
    result.folder = folder
    result.timings = timer.seconds
    result.info["wall_s"] = round(time.perf_counter() - started, 2)
    result.info["cpu_s_per_stage"] = timer.cpu_seconds
    log.info("build %s done in %.1fs; where the time went:\n%s", folder.name, result.info["wall_s"],
             format_stage_table(timer.seconds, result.info["wall_s"], timer.cpu_seconds))
    return result
