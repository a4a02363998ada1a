"""Popularity candidate source: the same ranking of the catalog for everyone.

An item's score is the sum of its training events, each weighted by its event type
(:data:`retrieval.data.EVENT_WEIGHT` unless configured) and, with ``half_life_days`` set,
by ``0.5 ** (age / half_life)`` where the age is measured from the newest training event
("trending"). It is the baseline every personal source must beat, the cold-start fallback, and
a fusion input. A request's history is never recommended back.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tandem.retrieval.base import Candidates, RetrievalRequest, read_source_meta
from tandem.retrieval.data import EVENT_TYPES, EVENT_WEIGHT, Catalog, Interactions
from tandem.retrieval.item_ranks import rank_items

__all__ = ["PopularityConfig", "Popularity"]

_FORMAT_VERSION = 1
_SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class PopularityConfig:
    """How events count.

    ``half_life_days``: None counts every event fully; a positive number halves an event's
    weight for every that many days it is older than the newest training event.
    ``window_days``: None uses all training events; a positive number only those at most that
    many days older than the newest one. ``event_weights``: one non-negative weight per event
    type in :data:`retrieval.data.EVENT_TYPES` order (None: :data:`EVENT_WEIGHT`).
    """

    half_life_days: float | None = None
    window_days: float | None = None
    event_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("half_life_days", "window_days"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ValueError(f"PopularityConfig.{name} must be a positive number of days or None, got {v!r}")
        w = self.event_weights
        if w is not None:
            if len(w) != len(EVENT_TYPES) or any(not math.isfinite(x) or x < 0 for x in w):
                raise ValueError(f"PopularityConfig.event_weights needs {len(EVENT_TYPES)} non-negative weights "
                                 f"in the order {', '.join(EVENT_TYPES)}; got {w!r}")
            object.__setattr__(self, "event_weights", tuple(float(x) for x in w))

    def weights(self) -> np.ndarray:
        """float64 (len(EVENT_TYPES),) weight per event code."""
        w = EVENT_WEIGHT if self.event_weights is None else self.event_weights
        return np.asarray(w, dtype=np.float64)


class Popularity:
    """Candidate source ``"popularity"``; see the module docstring for the score.

    ``scores`` float32 (n_items,) after :meth:`fit`; ``newest_ts`` the reference time of the decay.
    """

    name = "popularity"

    def __init__(self, config: PopularityConfig | None = None) -> None:
        self.config = config or PopularityConfig()
        self.scores: np.ndarray | None = None
        self.newest_ts: int | None = None
        self._order: tuple[np.ndarray, np.ndarray] | None = None  # (scores it was sorted from, order)

    def fit(self, catalog: Catalog, interactions: Interactions) -> Popularity:
        n_items = len(catalog)
        if len(interactions) and int(interactions.items.max()) >= n_items:
            raise ValueError(f"interactions refer to item {int(interactions.items.max())} but the catalog "
                             f"has {n_items} items; build both from the same cleaned data set")
        cfg = self.config
        w = cfg.weights()[interactions.events.astype(np.int64)]
        newest = int(interactions.ts.max()) if len(interactions) else 0
        age_days = (newest - interactions.ts).astype(np.float64) / _SECONDS_PER_DAY
        if cfg.window_days is not None:
            w = np.where(age_days <= cfg.window_days, w, 0.0)
        if cfg.half_life_days is not None:
            w = w * np.exp2(-age_days / cfg.half_life_days)
        self.scores = np.bincount(interactions.items, weights=w, minlength=n_items).astype(np.float32)
        self.newest_ts = newest
        return self

    def _fitted(self) -> np.ndarray:
        if self.scores is None:
            raise RuntimeError("Popularity is not fitted; call fit() or load() first")
        return self.scores

    def retrieve(self, request: RetrievalRequest, k: int) -> Candidates:
        """The ``k`` most popular items outside the request's history (items with score 0 included,
        so a small catalog is still filled; ties by lower item index). ``request.now`` is ignored:
        decay relative to any later time rescales all scores alike."""
        scores = self._fitted()
        if k <= 0:
            return Candidates.empty(self.name)
        seen = request.excluded(scores.shape[0])  # history, and SimilarItems' own item
        # the catalog sorted once: a request reads its first k + |history| entries
        head = self._ranking(scores)[: k + seen.size]
        top = head[~seen.contains(head)][:k]
        return Candidates(top, scores[top], self.name)

    def _ranking(self, scores: np.ndarray) -> np.ndarray:
        """All items by descending score, ties by lower index (computed once per ``scores``)."""
        cached = self._order
        if cached is None or cached[0] is not scores:
            cached = (scores, np.argsort(-scores, kind="stable"))
            self._order = cached
        return cached[1]

    def score_all(self, requests: Sequence[RetrievalRequest]) -> np.ndarray:
        """float32 (len(requests), n_items): the popularity row for every request (histories are
        excluded by the caller, e.g. :func:`retrieval.metrics.top_k_excluding`)."""
        scores = self._fitted()
        return np.broadcast_to(scores, (len(requests), scores.shape[0])).copy()

    def score_items(self, request: RetrievalRequest, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``items``' popularity and the ranks :meth:`retrieve` would give them (:class:`ItemScorer`);
        NaN / 0 for the history and the request's item."""
        scores = self._fitted()
        return rank_items(scores, items, request.excluded(scores.shape[0]))

    def save(self, folder: Path) -> list[Path]:
        scores = self._fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        npy, meta = folder / "popularity_scores.npy", folder / "popularity.json"
        np.save(npy, scores, allow_pickle=False)
        meta.write_text(json.dumps({
            "format_version": _FORMAT_VERSION,
            "name": self.name,
            "n_items": int(scores.shape[0]),
            "newest_ts": self.newest_ts,
            "config": asdict(self.config),
        }, indent=2, sort_keys=True))
        return [npy, meta]

    @classmethod
    def load(cls, folder: Path, catalog: Catalog) -> Popularity:
        folder = Path(folder)
        meta = read_source_meta(folder / "popularity.json", "Popularity", _FORMAT_VERSION, catalog)
        cfg = dict(meta["config"])
        if cfg.get("event_weights") is not None:
            cfg["event_weights"] = tuple(cfg["event_weights"])
        scores = np.load(folder / "popularity_scores.npy", allow_pickle=False)
        if scores.shape != (len(catalog),):
            raise ValueError(f"{folder}: popularity was fitted on {meta['n_items']} items but the catalog has "
                             f"{len(catalog)}; load it with the catalog of the same bundle")
        out = cls(PopularityConfig(**cfg))
        out.scores = scores.astype(np.float32, copy=False)
        out.newest_ts = meta["newest_ts"]
        return out
