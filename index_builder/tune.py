"""``tandem tune``: optuna (TPE) over the two-tower model's and the ranker's main
hyper-parameters, scored on the validation split only; writes the best config as TOML for
``tandem build --config``.

Each trial fits the sources on the training part (two-tower early stopping on the first half
of the validation users), trains the ranker on the first half's candidate lists, and scores
the final ranked list's NDCG@10 on the second half. The test targets are never looked at.
Seeded (TPE sampler seed and every component's seed), so the same command gives the same trials.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tandem.index_builder.build import _make_pipeline, default_sources, fit_sources, ranker_lists
from tandem.index_builder.cleaning import load_dataset
from tandem.index_builder.config import BuildConfig, config_to_dict
from tandem.index_builder.splits import Targets, leave_last_out
from tandem.ranking.features import feature_names
from tandem.ranking.history import HistoryStore
from tandem.ranking.pipeline import Pipeline
from tandem.ranking.ranker import Ranker, ndcg_of_lists
from tandem.retrieval.registry import FitContext
from tandem.retrieval.text_tower import TextEncoder

__all__ = ["tune", "to_toml"]

log = logging.getLogger(__name__)


def _subset(t: Targets, rows: np.ndarray) -> Targets:
    """The given rows of a Targets, as a new Targets (CSR arrays re-packed)."""
    tgt_ptr, tgt, h_ptr, h_items, h_ts, h_ev = [0], [], [0], [], [], []
    for r in rows:
        s, e = t.indptr[r], t.indptr[r + 1]
        tgt.append(t.items[s:e])
        tgt_ptr.append(tgt_ptr[-1] + e - s)
        s, e = t.history_indptr[r], t.history_indptr[r + 1]
        h_items.append(t.history_items[s:e])
        h_ts.append(t.history_ts[s:e])
        h_ev.append(t.history_events[s:e])
        h_ptr.append(h_ptr[-1] + e - s)
    cat = (lambda a, dt: np.concatenate(a).astype(dt) if a else np.zeros(0, dt))  # noqa: E731
    return Targets(t.user_ids, t.users[rows], np.array(tgt_ptr, np.int64), cat(tgt, np.int64),
                   np.array(h_ptr, np.int64), cat(h_items, np.int64), cat(h_ts, np.int64),
                   cat(h_ev, np.int8), t.now)


#: The sources whose config :func:`_suggest` changes: refitted in every trial.
_TUNED_SOURCES = ("two_tower",)


def _suggest(trial: Any, base: BuildConfig) -> BuildConfig:
    tt = replace(
        base.two_tower,
        dim=trial.suggest_categorical("two_tower.dim", [32, 64, 96]),
        layers=trial.suggest_int("two_tower.layers", 1, 3),
        dropout=trial.suggest_float("two_tower.dropout", 0.1, 0.6),
        lr=trial.suggest_float("two_tower.lr", 3e-4, 3e-3, log=True),
        max_len=trial.suggest_categorical("two_tower.max_len", [20, 50, 100]),
    )
    rk = replace(
        base.ranker,
        hidden=(trial.suggest_categorical("ranker.width", [32, 64, 128, 256]),) * trial.suggest_int(
            "ranker.depth", 1, 3),
        cross_layers=trial.suggest_int("ranker.cross_layers", 0, 3),
        dropout=trial.suggest_float("ranker.dropout", 0.0, 0.4),
        lr=trial.suggest_float("ranker.lr", 3e-4, 1e-2, log=True),
    )
    return replace(base, two_tower=tt, ranker=rk)


def tune(data_dir: Path, trials: int, timeout_s: float | None, base: BuildConfig | None = None,
         seed: int = 0, max_users: int | None = None) -> tuple[BuildConfig, dict]:
    """Run the study; returns the best config and a summary (trials with their scores)."""
    import optuna

    base = base or BuildConfig()
    clean = load_dataset(data_dir, base.cleaning)
    catalog = clean.catalog
    split = leave_last_out(clean.interactions)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(split.valid))
    if max_users is not None:
        rows = rows[:max_users]
    half = len(rows) // 2
    if half < 10:
        raise ValueError(f"only {len(split.valid)} validation users; tuning needs at least 20")
    fit_valid, score_valid = _subset(split.valid, np.sort(rows[:half])), _subset(split.valid, np.sort(rows[half:]))
    encoder = TextEncoder(base.text)
    text_vectors = encoder.encode([catalog.text(i) for i in range(len(catalog))], progress=True)
    histories = HistoryStore.from_interactions(split.train)
    context = FitContext(catalog, split.train, valid=fit_valid, text_vectors=text_vectors, encoder=encoder,
                         ann=base.ann)
    # the sources a recommend-only bundle has, fitted as the build fits them; those whose config
    # the search space changes are refitted in every trial
    names = default_sources(base, ("recommend",))
    fixed = fit_sources(base, context, [n for n in names if n not in _TUNED_SOURCES])

    def objective(trial: Any) -> float:
        cfg = _suggest(trial, base)
        cfg = replace(cfg, two_tower=replace(cfg.two_tower, seed=seed))
        t0 = time.perf_counter()
        tuned = fit_sources(cfg, context, [n for n in names if n in _TUNED_SOURCES])
        sources = {name: fixed[name] if name in fixed else tuned[name] for name in names}
        p: Pipeline = _make_pipeline(cfg, catalog, sources, split.train, histories)
        train_lists, _ = ranker_lists(p, fit_valid, np.arange(len(fit_valid)))
        score_lists, _ = ranker_lists(p, score_valid, np.arange(len(score_valid)))
        ranker = Ranker(feature_names(p.available("recommend")), replace(cfg.ranker, seed=seed))
        ranker.fit(train_lists)
        # lists whose target retrieval missed have no positive and count as zero
        ndcg = ndcg_of_lists(ranker.score_lists(score_lists), score_lists)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 1))
        log.info("trial %d: valid final ndcg@10 %.4f (%.0fs)", trial.number, ndcg, time.perf_counter() - t0)
        return ndcg

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    study.optimize(objective, n_trials=trials, timeout=timeout_s)
    best = _suggest(optuna.trial.FixedTrial(study.best_params), base)
    summary = {"best_value": study.best_value, "best_params": study.best_params,
               "trials": [{"number": t.number, "value": t.value, "params": t.params, **t.user_attrs}
                          for t in study.trials]}
    return best, summary


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def to_toml(config: BuildConfig, header: str = "") -> str:
    """The config as the ``[build]`` section of a root config file (None values are left out:
    they mean 'default')."""
    d = config_to_dict(config)
    lines = [f"# {line}" for line in header.splitlines()] if header else []
    lines.append("[build]")
    for k, v in d.items():
        if not isinstance(v, dict) and v is not None:
            lines.append(f"{k} = {_toml_value(v)}")
    for section, values in d.items():
        if isinstance(values, dict):
            lines.append(f"\n[build.{section}]")
            for k, v in values.items():
                if v is None:
                    continue
                if isinstance(v, dict):
                    if v:
                        lines.append(f"{k} = {{ " + ", ".join(f'"{a}" = {_toml_value(b)}' for a, b in v.items())
                                     + " }")
                    continue
                lines.append(f"{k} = {_toml_value(v)}")
    return "\n".join(lines) + "\n"

