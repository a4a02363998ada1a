"""The server side of an A/B experiment: which engine answers a user, the exposure log, and the
live per-arm counters.

An arm's engine is the serving engine (hot-swapped as usual), or the bundle it pins (loaded once
at start beside the serving one, given every recorded event, never swapped), either one with the
arm's pipeline overrides and ranker switch applied as a variant that shares the models and the
user histories (:meth:`tandem.ranking.pipeline.Pipeline.variant`). Variants of the serving
engine are derived again after a swap, on the first request that needs one.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence

from tandem.ranking.api import Engine, Response, UnknownItemError
from tandem.retrieval.data import Event
from tandem.server.attribution import CONVERSION_EVENTS, Exposure, LiveAttribution
from tandem.server.bundle_manager import BundleManager
from tandem.server.experiment import Arm, Experiment
from tandem.server.exposure_log import ExposureLog, read_exposures
from tandem.server.metrics import ServiceMetrics

__all__ = ["ExperimentRunner"]

log = logging.getLogger("tandem.server.experiment")


class ExperimentRunner:
    def __init__(self, experiment: Experiment, manager: BundleManager, exposures: ExposureLog,
                 metrics: ServiceMetrics) -> None:
        self.experiment = experiment
        self.manager = manager
        self.exposures = exposures
        self.metrics = metrics
        self.live = LiveAttribution(experiment.attribution_window_s, experiment.attribution == "shown")
        self._variants: dict[str, tuple[Engine, Engine]] = {}  # arm -> (base engine, its variant)
        self._lock = threading.Lock()
        name = experiment.name
        self._exposed = {a.name: metrics.experiment_exposures.labels(name, a.name) for a in experiment.arms}
        for a in experiment.arms:  # every series exists from the start (a rate of 0, not a gap)
            metrics.experiment_revenue.labels(name, a.name)
            for kind in CONVERSION_EVENTS:
                metrics.experiment_conversions.labels(name, a.name, kind)

    def start(self) -> None:
        """Load the pinned bundles and derive every arm's engine once (a bad override or bundle
        fails here, naming the arm), then refill the live counters' memory of recent exposures."""
        for arm in self.experiment.arms:
            try:
                if arm.bundle is not None:
                    self.manager.load_pinned(arm.bundle)
                self.engine_for(arm, self.manager.engine)
            except Exception as exc:  # noqa: BLE001 - reported as one line naming the arm
                raise RuntimeError(f"experiment {self.experiment.name}: arm {arm.name}: {type(exc).__name__}: "
                                   f"{exc}") from None
        since = time.time() - self.experiment.attribution_window_s
        n = 0
        for exposure in read_exposures(self.exposures.path, self.experiment.name, since):
            self.live.add(exposure)
            n += 1
        self.manager.on_logged = self.on_events
        log.info("experiment %s: arms %s; %d recent exposures reread", self.experiment.name,
                 ", ".join(f"{a.name} ({a.share:g})" for a in self.experiment.arms), n)

    def engine_for(self, arm: Arm, serving: Engine) -> Engine:
        base = self.manager.pinned[arm.bundle] if arm.bundle is not None else serving
        if arm.ranker and not arm.pipeline:
            return base
        cached = self._variants.get(arm.name)
        if cached is not None and cached[0] is base:
            return cached[1]
        with self._lock:
            cached = self._variants.get(arm.name)
            if cached is not None and cached[0] is base:
                return cached[1]
            variant = getattr(base, "variant", None)
            if variant is None:
                raise ValueError(f"the engine of bundle {base.version} cannot answer with pipeline overrides or "
                                 "without its ranker (it has no variant())")
            engine = variant(dict(arm.pipeline), use_ranker=arm.ranker)
            self._variants[arm.name] = (base, engine)
            return engine

    def route(self, user_id: str | None, serving: Engine) -> tuple[Arm | None, Engine]:
        """The user's arm (None for an anonymous request, answered by the control arm) and its engine."""
        arm = self.experiment.assign(user_id) if user_id else None
        return arm, self.engine_for(arm or self.experiment.control, serving)

    def expose(self, arm: Arm, user_id: str, kind: str, request_id: str, response: Response) -> None:
        """Log that ``arm`` showed ``response`` to ``user_id``, before the response is sent."""
        exposure = Exposure(time.time(), user_id, arm.name, kind, tuple(it.item_id for it in response.items))
        try:
            self.exposures.append(self.experiment.name, exposure, request_id, response.bundle_version)
        except (sqlite3.Error, RuntimeError):
            self.metrics.experiment_log_errors.inc()
            log.exception("experiment %s: exposure of user %s not logged", self.experiment.name, user_id)
        self.live.add(exposure)
        self._exposed[arm.name].inc()

    def on_events(self, events: Sequence[Event]) -> None:
        """Count newly logged clicks, carts and purchases for the arm they are attributed to."""
        name, m = self.experiment.name, self.metrics
        for ev in events:
            if ev.event not in CONVERSION_EVENTS:
                continue
            exposure = self.live.attribute(ev.user_id, ev.item_id, ev.ts)
            if exposure is None:
                continue
            m.experiment_conversions.labels(name, exposure.arm, ev.event).inc()
            if ev.event == "purchase":
                price = self._price(ev.item_id)
                if price is not None:
                    m.experiment_revenue.labels(name, exposure.arm).inc(price)

    def _price(self, item_id: str) -> float | None:
        engine = self.manager.engine
        try:
            return None if engine is None else engine.get_item(item_id).price
        except UnknownItemError:
            return None
