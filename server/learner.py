"""``tandem learn``: guarded online learning, beside a running server.

Each cycle (:meth:`Learner.cycle`):

1. reads what the serving bundle (``BUNDLES/CURRENT``) was built from and which logged events it
   includes (``event_log.seq``; :func:`tandem.index_builder.candidate.bundle_source` refuses a
   bundle that does not record enough to be rebuilt);
2. takes the events logged since; none: a logged no-op; fewer than ``min_new_events``: skipped
   (they wait for the next cycle);
3. holds out the newest ``holdout_share`` of them (:mod:`tandem.index_builder.holdout`) and has
   the candidate trained on the rest (:func:`tandem.index_builder.candidate.train_candidate`,
   into a scratch root ``BUNDLES/.learn``; its manifest records the last trained event's seq, so
   a server that loads it replays the held-out events and every later one);
4. scores the serving bundle and the candidate on the held-out events (final-stage Recommend,
   R@k and NDCG@k, the same users and targets) and publishes the candidate as a new bundle
   version (written like ``tandem build`` writes one, then CURRENT) only when neither metric is
   worse than the serving bundle's by more than ``tolerance`` (relative; with ``confidence`` set,
   worse with that confidence, paired bootstrap over the judged users): the server's watcher
   swaps to it. Otherwise the candidate is discarded. A CURRENT changed meanwhile (an operator's
   build) wins: the candidate is discarded as superseded. Every judged decision records the
   per-user gain and its 90% interval (``gain``).

Every decision is one log line (``learn decision {...}``, JSON), the ``learn`` section of a
published manifest, and Prometheus metrics on their own registry (``--metrics-port``). A cycle
that fails is logged and counted; the loop goes on. SIGTERM stops the loop between cycles; a
cycle in progress stops before its next stage (a second signal exits at once).
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tandem.index_builder.candidate import bundle_source, log_position, read_log_range, train_candidate
from tandem.index_builder.holdout import (
    UserScores,
    choose_holdout,
    history_items,
    holdout_targets,
    score_users,
)
from tandem.ranking.bootstrap import paired_bootstrap
from tandem.retrieval.bundle import current_bundle, read_manifest, write_bundle
from tandem.server.event_log import read_entries
from tandem.server.live_catalog import replay_entries
from tandem.server.metrics import MetricsEndpoint

__all__ = ["DECISIONS", "LearnConfig", "LearnMetrics", "Learner", "Trainer", "judge_gains"]

log = logging.getLogger("tandem.learn")

#: every decision a cycle ends with (the ``decision`` label of ``tandem_learn_cycles_total``)
DECISIONS = ("published", "rejected", "no_new_events", "too_few_events", "no_targets", "superseded", "stopped",
             "failed")

#: ``(serving bundle folder, events log, scratch root, upto_seq) -> candidate bundle folder``
Trainer = Callable[[Path, Path, Path, int], Path]

_MANIFEST_OWN = ("format_version", "version", "created_at", "files")  # write_bundle sets these


@dataclass(frozen=True)
class LearnConfig:
    """``tandem learn`` settings; validated at construction with messages naming the flag."""

    bundles: Path
    events_log: Path
    every_s: float = 3600.0
    #: share of the new events held out to judge the candidate (the newest ones)
    holdout_share: float = 0.2
    #: fewer new events than this: the cycle is skipped (the events wait for the next one)
    min_new_events: int = 20
    #: relative drop of R@k or NDCG@k still published (0.01: at most 1% worse); negative demands a gain
    tolerance: float = 0.01
    #: 0: the candidate is worse when its mean over the judged users is below the serving bundle's
    #: beyond ``tolerance``; in (0.5, 1): only when it is so with this confidence (the upper end of
    #: a one-sided paired bootstrap bound of the per-user gain), so that the judge's sampling noise
    #: on a small held-out set does not reject a candidate that is as good
    confidence: float = 0.0
    k: int = 10
    #: scratch root of candidates (default BUNDLES/.learn; hidden, so never listed as a bundle)
    work_dir: Path | None = None

    def __post_init__(self) -> None:
        if not self.every_s > 0:
            raise ValueError(f"--every must be > 0 seconds, got {self.every_s}")
        if not 0 < self.holdout_share < 1:
            raise ValueError(f"--holdout-share must be between 0 and 1 (exclusive), got {self.holdout_share}")
        if self.min_new_events < 2:
            raise ValueError(f"--min-new-events must be >= 2 (one to train on, one to judge), got {self.min_new_events}")
        if not -1 < self.tolerance < 1:
            raise ValueError(f"--tolerance must be a relative drop between -1 and 1, got {self.tolerance}")
        if not (self.confidence == 0 or 0.5 < self.confidence < 1):
            raise ValueError(f"--confidence must be 0 (judge on the means) or between 0.5 and 1, got {self.confidence}")
        if not 1 <= self.k <= 1000:
            raise ValueError(f"--k must be 1..1000, got {self.k}")

    @property
    def scratch(self) -> Path:
        return self.work_dir if self.work_dir is not None else self.bundles / ".learn"


class LearnMetrics(MetricsEndpoint):
    """The learner's Prometheus metrics, on their own registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.cycles = Counter("tandem_learn_cycles_total", "learner cycles by decision", ["decision"], registry=r)
        for d in DECISIONS:
            self.cycles.labels(d)
        self.metric = Gauge("tandem_learn_last_metric", "the last judged cycle's held-out metrics",
                            ["bundle", "metric"], registry=r)
        self.events = Gauge("tandem_learn_last_events", "events of the last judged cycle (trained on, held out)",
                            ["part"], registry=r)
        self.seconds = Histogram("tandem_learn_cycle_seconds", "duration of a learner cycle", registry=r,
                                 buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200))
        self.last_cycle = Gauge("tandem_learn_last_cycle_timestamp_seconds", "when the last cycle ended",
                                registry=r)
        self.last_published = Gauge("tandem_learn_last_published_timestamp_seconds",
                                    "when the learner last published a bundle", registry=r)

    def observe(self, record: dict) -> None:
        self.cycles.labels(record["decision"]).inc()
        self.seconds.observe(record["seconds"])
        self.last_cycle.set(time.time())
        if record["decision"] == "published":
            self.last_published.set(time.time())
        for bundle, values in (record.get("metrics") or {}).items():
            for name, value in values.items():
                self.metric.labels(bundle, name).set(value)
        events = record.get("events") or {}
        for part in ("train_events", "held_out_events"):
            if part in events:
                self.events.labels(part.removesuffix("_events")).set(events[part])


class _Stopped(Exception):
    pass


def judge_gains(serving: UserScores, candidate: UserScores, confidence: float) -> dict[str, dict[str, float]]:
    """The candidate's mean per-user gain over the serving bundle on each metric, with the upper
    end of its one-sided ``confidence`` paired bootstrap bound over the judged users (the gain
    itself when ``confidence`` is 0): ``{"ndcg@k": {"gain", "upper", "low", "high"}, ...}``, where
    ``[low, high]`` is the 90% interval, recorded whatever the rule, so that a decision shows
    how much of it the judge's own noise could explain."""
    if serving.users != candidate.users:
        raise ValueError("judge_gains: the two engines were scored on different users")
    out: dict[str, dict[str, float]] = {}
    for name, a, b in ((f"ndcg@{serving.k}", candidate.ndcg, serving.ndcg),
                       (f"recall@{serving.k}", candidate.recall, serving.recall)):
        shown = paired_bootstrap(a, b, level=0.9)
        upper = shown.mean if confidence == 0 else paired_bootstrap(a, b, level=2 * confidence - 1).high
        out[name] = {"gain": shown.mean, "upper": upper, "low": shown.low, "high": shown.high}
    return out


def _worse(gain: dict[str, float], serving_mean: float, tolerance: float, confidence: float) -> bool:
    """Worse beyond ``tolerance`` (relative to ``serving_mean``): the mean gain below
    ``-tolerance * serving_mean`` (``confidence`` 0), else even the upper end of the one-sided
    bound there."""
    return gain["upper"] < -tolerance * serving_mean - 1e-12


def _default_trainer(serving: Path, events_log: Path, out: Path, upto_seq: int) -> Path:
    return train_candidate(serving, events_log, out, upto_seq=upto_seq)


def _replay(engine, log_path: Path, after: int, upto: int):
    """``engine`` given the log's events and live catalog changes in ``(after, upto]``, in log order,
    as the server's replay gives them (a catalog change makes a new engine: the one returned)."""
    if upto <= after:
        return engine
    return replay_entries(engine, read_entries(log_path, after_seq=after, upto_seq=upto))[0]


def _load(folder: Path):
    from tandem.ranking.loader import load_pipeline

    return load_pipeline(folder)


class Learner:
    """One learner over a bundle root and the server's event log; ``trainer`` makes candidates
    (default :func:`~tandem.index_builder.candidate.train_candidate`)."""

    def __init__(self, config: LearnConfig, trainer: Trainer | None = None,
                 metrics: LearnMetrics | None = None) -> None:
        self.config = config
        self.trainer = trainer or _default_trainer
        self.metrics = metrics or LearnMetrics()
        self.stop_event = threading.Event()

    # -- one cycle ------------------------------------------------------------------------
    def cycle(self) -> dict:
        """Run one cycle; returns its decision record (also logged and counted). Raises only what
        a caller must see at once (a bundle root without a bundle, a log that is not a log, a
        bundle that cannot be rebuilt): the loop (:meth:`run`) logs those and goes on."""
        t0 = time.perf_counter()
        record: dict[str, Any] = {"decision": "failed"}
        try:
            record = self._cycle()
        except _Stopped:
            record = {"decision": "stopped", "reason": "SIGTERM: the cycle stopped before its next stage"}
        except Exception as exc:
            record = {"decision": "failed", "reason": f"{type(exc).__name__}: {exc}"}
            raise
        finally:
            record["seconds"] = round(time.perf_counter() - t0, 2)
            self.metrics.observe(record)
            log.info("learn decision %s", json.dumps(record, sort_keys=True))
        return record

    def _check_stop(self) -> None:
        if self.stop_event.is_set():
            raise _Stopped

    def _cycle(self) -> dict:
        cfg = self.config
        serving = current_bundle(cfg.bundles)
        source = bundle_source(serving, cfg.events_log)
        position = log_position(cfg.events_log)
        new = read_log_range(cfg.events_log, source.event_log_seq, position)
        events: dict[str, Any] = {"after_seq": source.event_log_seq, "upto_seq": position, "new_events": len(new)}
        base = {"serving": serving.name, "events": events, "tolerance": cfg.tolerance}
        if not new:
            return {**base, "decision": "no_new_events",
                    "reason": f"no event logged after seq {source.event_log_seq} (what {serving.name} includes)"}
        if len(new) < cfg.min_new_events:
            return {**base, "decision": "too_few_events",
                    "reason": f"{len(new)} new events, fewer than --min-new-events {cfg.min_new_events}: they wait "
                              "for the next cycle"}
        holdout = choose_holdout(new, cfg.holdout_share)
        events.update(holdout.describe(), train_upto_seq=holdout.train_upto)
        self._check_stop()
        scratch = cfg.scratch
        shutil.rmtree(scratch, ignore_errors=True)  # a cycle that died leaves its candidate behind
        scratch.mkdir(parents=True)
        t_train = time.perf_counter()
        candidate = Path(self.trainer(serving, cfg.events_log, scratch, holdout.train_upto))
        events["train_seconds"] = round(time.perf_counter() - t_train, 2)
        self._check_stop()
        cand_manifest = read_manifest(candidate)
        cand_seq = int(cand_manifest.get("event_log", {}).get("seq", 0))
        before, after = self._judge(serving, source.event_log_seq, candidate, cand_seq, holdout)
        metrics = {"serving": before.means(), "candidate": after.means()}
        n_targets = len(before.users)
        events["target_users"] = n_targets
        base["metrics"] = metrics
        if n_targets == 0:
            shutil.rmtree(scratch, ignore_errors=True)
            return {**base, "decision": "no_targets",
                    "reason": "every held-out item was already in its user's history: nothing to judge on"}
        k = cfg.k
        base["gain"] = gains = judge_gains(before, after, cfg.confidence)
        worse = [m for m in (f"ndcg@{k}", f"recall@{k}")
                 if _worse(gains[m], metrics["serving"][m], cfg.tolerance, cfg.confidence)]
        if worse:
            shutil.rmtree(scratch, ignore_errors=True)
            why = ("beyond tolerance" if cfg.confidence == 0 else
                   f"beyond tolerance with {100 * cfg.confidence:g}% confidence (upper end of the gain "
                   + ", ".join(f"{m} {gains[m]['upper']:+.4f}" for m in worse) + ")")
            return {**base, "decision": "rejected",
                    "reason": "candidate worse than the serving bundle on " + " and ".join(
                        f"{m} ({metrics['candidate'][m]:.4f} < {metrics['serving'][m]:.4f})" for m in worse)
                    + f" {why}, tolerance {cfg.tolerance:g}"}
        self._check_stop()
        record = {**base, "decision": "published",
                  "reason": f"candidate not worse than the serving bundle on ndcg@{k} and recall@{k} "
                            f"(tolerance {cfg.tolerance:g})"}
        now = current_bundle(cfg.bundles)
        if now.name != serving.name:
            shutil.rmtree(scratch, ignore_errors=True)
            return {**record, "decision": "superseded",
                    "reason": f"CURRENT changed to {now.name} while the candidate trained: it wins"}
        record["candidate"] = self._publish(candidate, cand_manifest, record)
        shutil.rmtree(scratch, ignore_errors=True)
        return record

    def _judge(self, serving: Path, serving_seq: int, candidate: Path, cand_seq: int,
               holdout) -> tuple[UserScores, UserScores]:
        """Both engines given the logged events they lack up to ``holdout.train_upto``, then scored
        on the held-out events. One engine is loaded at a time."""
        log_path, upto = self.config.events_log, holdout.train_upto
        users = sorted({le.event.user_id for le in holdout.held})
        engine = _replay(_load(serving), log_path, serving_seq, upto)
        targets = holdout_targets(holdout.held, history_items(engine, users))
        before = score_users(engine, (), targets, self.config.k)
        del engine
        self._check_stop()
        engine = _replay(_load(candidate), log_path, cand_seq, upto)
        after = score_users(engine, (), targets, self.config.k)
        del engine
        return before, after

    def _publish(self, candidate: Path, manifest: dict, record: dict) -> str:
        """Write the candidate into the bundle root as a new version, its manifest carrying the
        decision (``learn``), then point CURRENT at it (:func:`tandem.retrieval.bundle.write_bundle`)."""

        def fill(folder: Path) -> dict:
            for entry in manifest.get("files", []):
                dst = folder / entry["path"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(candidate / entry["path"], dst)
            out = {k: v for k, v in manifest.items() if k not in _MANIFEST_OWN}
            out["learn"] = {**{k: v for k, v in record.items() if k != "candidate"}, "trained_as": manifest["version"]}
            return out

        return write_bundle(self.config.bundles, fill).name

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        """Cycle every ``every_s`` seconds until :attr:`stop_event` is set; a failing cycle is logged
        and the loop goes on. Returns the number of cycles run."""
        cycles = 0
        while not self.stop_event.is_set():
            try:
                self.cycle()
            except Exception:  # noqa: BLE001 - the learner outlives any one bad cycle
                log.exception("learn cycle failed; the next one starts in %.0fs", self.config.every_s)
            cycles += 1
            self.stop_event.wait(self.config.every_s)
        return cycles
