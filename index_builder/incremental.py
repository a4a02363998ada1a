"""Incremental builds: what ``tandem build --from BUNDLE_ROOT`` takes from an earlier bundle.

* Text vectors, by content hash (:mod:`tandem.retrieval.text_cache`): only new or changed item
  texts are encoded. A bundle without text hashes (built before they were kept) or with another
  encoder identity gives a full encode, with a log line saying why.
* The two-tower model, warm-started item by item (:mod:`tandem.retrieval.two_tower_warm`), and
  trained for at most ``two_tower_epochs_fraction`` of the last cold fit's best epoch count,
  early stopping kept. Another architecture: a cold start with a warning.
* The recommend ranker, warm-started from the earlier one's weights and standardisation when
  the features and network shape are the same, on ``ranker_users_fraction`` of the lists a full
  build trains on, for at most ``ranker_epochs_fraction`` of its last cold best epoch count.

Every other stage (cleaning, item-CF, popularity, BM25, the ANN indexes, evaluation) runs as in
a full build: they are fast, and their results depend on all the data. The manifest's
``incremental`` section records what was reused (see :func:`manifest_section`).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tandem.ranking.ranker import Ranker
from tandem.retrieval.bundle import BundleError, current_bundle, verify_bundle
from tandem.retrieval.catalog_io import load_catalog
from tandem.retrieval.text_cache import TextCache
from tandem.retrieval.two_tower_warm import PreviousTwoTower, warm_start_problem

__all__ = ["IncrementalConfig", "PreviousBundle", "WarmStart", "warm_epochs", "cold_schedule"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IncrementalConfig:
    """How much a build from an earlier bundle (``[build] from_bundle``, ``--from``) trains.

    ``two_tower_epochs_fraction``: the warm two-tower trains at most this share of the epochs
    the last cold fit found best (rounded up, at least ``min_epochs``), with early stopping kept;
    ``ranker_epochs_fraction`` the same for the ranker; ``ranker_users_fraction`` the share of
    ``ranker_max_users`` whose candidate lists the warm ranker trains on (at least 10 users).
    ``warm_start`` false: reuse only the text vectors; both models train from scratch, on the
    full schedule, as in a full build."""

    warm_start: bool = True
    two_tower_epochs_fraction: float = 0.25
    ranker_epochs_fraction: float = 0.25
    ranker_users_fraction: float = 0.25
    min_epochs: int = 1

    def __post_init__(self) -> None:
        for name in ("two_tower_epochs_fraction", "ranker_epochs_fraction", "ranker_users_fraction"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"incremental.{name} must be in (0, 1], got {value}")
        if self.min_epochs < 1:
            raise ValueError(f"incremental.min_epochs must be >= 1, got {self.min_epochs}")


def warm_epochs(fraction: float, schedule: int | None, configured: int, minimum: int) -> int:
    """At most ``configured`` epochs: ``ceil(fraction * schedule)`` (at least ``minimum``), or
    ``configured`` when the earlier cold schedule is unknown."""
    if not schedule:
        return configured
    return max(1, min(configured, max(minimum, math.ceil(fraction * schedule))))


def _ranker_best_epoch(history: list[dict]) -> int | None:
    if not history:
        return None
    best = max(history, key=lambda h: h.get("valid_ndcg@10", 0.0))
    return int(best.get("epoch", len(history)))


def cold_schedule(info: dict[str, Any]) -> dict[str, int | None]:
    """The epoch counts a cold build's first fits found best (the base of the warm caps), from
    :func:`~tandem.index_builder.build.fit_pipeline`'s ``info``."""
    tt = info.get("two_tower") or {}
    ranker = info.get("ranker") or {}
    return {"two_tower": tt.get("best_epoch"), "ranker": ranker.get("best_epoch")}


@dataclass
class PreviousBundle:
    """An earlier bundle opened for an incremental build: its folder, verified manifest and
    catalog item ids (in row order)."""

    folder: Path
    manifest: dict[str, Any]
    item_ids: list[str]
    #: the bundle root or folder the build was given
    given: Path = field(default_factory=Path)

    @classmethod
    def open(cls, path: str | Path) -> PreviousBundle:
        """The bundle ``path`` names (a bundle root with a CURRENT pointer, or a bundle folder),
        checksums verified. Raises :class:`BundleError` with one line saying what is wrong."""
        path = Path(path)
        if not path.exists():
            raise BundleError(f"--from {path}: no such folder; give a bundle root (with CURRENT) or a bundle folder")
        try:
            folder = current_bundle(path)
            manifest = verify_bundle(folder)
        except BundleError as exc:
            raise BundleError(f"--from {path}: {exc}") from None
        catalog = load_catalog(folder / "catalog")
        return cls(folder, manifest, list(catalog.item_ids), path)

    @property
    def version(self) -> str:
        return self.folder.name

    def text_cache(self) -> tuple[TextCache | None, str]:
        """The earlier text vectors with their hashes, or (None, why not)."""
        try:
            cache = TextCache.load(self.folder)
        except (ValueError, OSError, KeyError) as exc:
            return None, f"bundle {self.version}'s text cache cannot be read ({exc})"
        if cache is None:
            return None, f"bundle {self.version} has no text hashes (built before incremental builds)"
        return cache, ""

    def two_tower(self) -> tuple[PreviousTwoTower | None, str]:
        if "two_tower" not in self.manifest.get("sources", []):
            return None, f"bundle {self.version} has no two-tower model"
        return PreviousTwoTower.read(self.folder / "sources" / "two_tower", self.item_ids), ""

    def ranker(self, kind: str = "recommend") -> tuple[Ranker | None, str]:
        if kind not in self.manifest.get("rankers", []):
            return None, f"bundle {self.version} has no {kind} ranker"
        return Ranker.load(self.folder / "rankers" / kind), ""

    def schedule(self) -> dict[str, int | None]:
        """The last cold build's best epoch counts: carried in the manifest's ``incremental``
        section, else (a bundle from before it) the bundle's own training record."""
        section = self.manifest.get("incremental") or {}
        if section.get("schedule"):
            return dict(section["schedule"])
        models = self.manifest.get("models") or {}
        return {"two_tower": (models.get("two_tower") or {}).get("best_epoch"),
                "ranker": _ranker_best_epoch(((models.get("ranker") or {}).get("history")) or [])}


@dataclass
class WarmStart:
    """What :func:`~tandem.index_builder.build.fit_pipeline` takes from the earlier bundle:
    the text cache, the two-tower and ranker to start from, the epoch caps, and a record of
    what happened (``record``, the manifest's ``incremental`` section)."""

    previous: PreviousBundle
    text_cache: TextCache | None
    text_reason: str
    two_tower: PreviousTwoTower | None
    ranker: Ranker | None
    schedule: dict[str, int | None]
    record: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, previous: PreviousBundle, incremental: IncrementalConfig | None = None) -> WarmStart:
        incremental = incremental or IncrementalConfig()
        cache, text_reason = previous.text_cache()
        if incremental.warm_start:
            two_tower, tt_reason = previous.two_tower()
            ranker, r_reason = previous.ranker()
        else:
            two_tower, ranker = None, None
            tt_reason = r_reason = "incremental.warm_start is false"
        schedule = previous.schedule()
        if schedule.get("ranker") is None and ranker is not None:  # a manifest from before the record
            schedule["ranker"] = _ranker_best_epoch(ranker.history)
        warm = cls(previous, cache, text_reason, two_tower, ranker, schedule)
        warm.record = {"from": {"version": previous.version, "path": str(previous.folder)},
                       "schedule": warm.schedule,
                       "two_tower": {"warm": False, "reason": tt_reason} if two_tower is None else {},
                       "ranker": {"warm": False, "reason": r_reason} if ranker is None else {}}
        return warm

    def configure(self, config: Any, text_dim: int | None) -> Any:
        """``config`` (a BuildConfig) with the two-tower's warm epoch cap when the earlier model
        can start it (text vectors of width ``text_dim``); otherwise the earlier model is dropped
        (a cold start, on the full schedule) with a warning saying why."""
        if self.two_tower is None:
            return config
        tt = config.two_tower
        problem = warm_start_problem(self.two_tower, tt, text_dim if tt.use_text else None)
        if problem is not None:
            log.warning("two-tower: cold start: %s", problem)
            self.record["two_tower"] = {"warm": False, "reason": problem}
            self.two_tower = None
            return config
        inc = config.incremental
        epochs = warm_epochs(inc.two_tower_epochs_fraction, self.schedule.get("two_tower"), tt.epochs, inc.min_epochs)
        self.record["two_tower"]["epochs_cap"] = epochs
        return replace(config, two_tower=replace(tt, epochs=epochs))

    def ranker_start(self, names: list[str], config: Any) -> tuple[Ranker, Ranker | None, float]:
        """The recommend ranker to train over features ``names`` (a BuildConfig ``config``), the
        earlier ranker to start it from (None: a cold start on the full schedule, with a warning
        when there was an earlier one that does not fit), and the share of users to train on."""
        cold = Ranker(names, config.ranker)
        problem = (str(self.record["ranker"].get("reason", "no earlier ranker")) if self.ranker is None
                   else cold.warm_start_problem(self.ranker))
        self.record["ranker"] = {**self.record["ranker"], "warm": problem is None, "reason": problem}
        if problem is not None:
            if self.ranker is not None:
                log.warning("recommend ranker: cold start: %s", problem)
            return cold, None, 1.0
        inc = config.incremental
        epochs = warm_epochs(inc.ranker_epochs_fraction, self.schedule.get("ranker"), config.ranker.epochs,
                             inc.min_epochs)
        self.record["ranker"].update(epochs_cap=epochs, users_fraction=inc.ranker_users_fraction)
        return Ranker(names, replace(config.ranker, epochs=epochs)), self.ranker, inc.ranker_users_fraction
