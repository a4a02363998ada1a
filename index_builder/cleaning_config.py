"""The thresholds of the cleaning rules (:class:`CleaningConfig`, the ``[cleaning]`` table of the
build config)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

__all__ = ["CleaningConfig", "MAD_TO_SIGMA"]

#: Scales a median absolute deviation to a standard deviation (normal data).
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class CleaningConfig:
    """Thresholds of the cleaning rules.

    Bots: a user is flagged when the robust z-score of log(event count) over all users exceeds
    ``bot_max_z`` and the user has at least ``bot_min_events`` events, or when the same holds for
    log(events per active hour) with at least ``bot_min_hourly_rate`` events per active hour.
    The z-score is (x - median) / max(1.4826 * MAD, ``bot_min_scale``). The absolute minimums
    keep small data sets, where the population is narrow, from flagging ordinary heavy users.

    Price outliers: the same z-score of log(price) within the deepest category level holding at
    least ``outlier_min_group`` priced items (else the whole catalog), with the scale floored at
    ``outlier_min_scale``; flagged when above ``outlier_max_z``.

    k-core: ``min_user_events`` / ``min_item_events`` > 0 repeatedly drop events of users / items
    with fewer events until nothing changes. Items stay in the catalog.

    Future events: an event dated more than ``max_future_s`` seconds after the moment of the clean
    (the wall clock of the build) is dropped (reason ``future_ts``): a clock error or a unit mistake,
    and left in it would become "now" for every recency and trend feature.
    """

    min_user_events: int = 0
    min_item_events: int = 0
    drop_duplicate_events: bool = True
    remove_bots: bool = True
    bot_max_z: float = 6.0
    bot_min_events: int = 1000
    bot_min_hourly_rate: float = 120.0
    bot_min_scale: float = 0.5
    outlier_max_z: float = 3.5
    outlier_min_scale: float = 0.25
    outlier_min_group: int = 5
    title_max_words: int = 12
    max_future_s: int = 86_400

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(v, bool):
                    raise ValueError(f"CleaningConfig.{f.name}: expected true or false, got {v!r}")
                continue
            kind = int if f.type == "int" else float
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
                raise ValueError(f"CleaningConfig.{f.name}: expected {'an integer' if kind is int else 'a number'}, "
                                 f"got {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"CleaningConfig.{f.name}: expected a finite number, got {v!r}")
        for name in ("min_user_events", "min_item_events", "bot_min_events"):
            if getattr(self, name) < 0:
                raise ValueError(f"CleaningConfig.{name}: expected an integer >= 0 (0 turns it off), "
                                 f"got {getattr(self, name)}")
        for name in ("bot_max_z", "bot_min_scale", "bot_min_hourly_rate", "outlier_max_z", "outlier_min_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CleaningConfig.{name}: expected a number > 0, got {getattr(self, name)}")
        if self.max_future_s < 0:
            raise ValueError(f"CleaningConfig.max_future_s: expected seconds >= 0, got {self.max_future_s}")
        for name in ("outlier_min_group", "title_max_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"CleaningConfig.{name}: expected an integer >= 1, got {getattr(self, name)}")
