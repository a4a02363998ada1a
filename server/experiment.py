"""An A/B experiment's definition (``tandem serve --experiment FILE.toml``) and the assignment of
users to its arms.

The file::

    name = "ranker-vs-fusion"       # letters, digits, '.', '_', '-'; part of every user's hash
    attribution_window_s = 86400    # an event counts for an exposure at most this long after it
    attribution = "shown"           # "shown": only events on items the exposure showed; "any": every event
    alpha = 0.05                    # the report's significance level

    [[arms]]                        # the first arm is the control
    name = "control"
    share = 0.5                     # shares sum to 1

    [[arms]]
    name = "treatment"
    share = 0.5
    bundle = "20260101-120000"      # optional: a bundle folder under --bundles (default: the serving one)
    ranker = false                  # optional: answer without the neural ranker (default true)
    [arms.pipeline]                 # optional: PipelineConfig overrides (ranking/pipeline_config.py)
    recommend_sources = ["two_tower", "popularity"]

Assignment is sticky and needs no state: ``sha256(name + "\\0" + user_id)``'s first 8 bytes, read
as a fraction of 2**64, fall into one arm's interval of the cumulative shares. The same user gets
the same arm in every request and on every replica; a different experiment name reshuffles.
Requests without a user id are answered by the control arm and are not part of the experiment
(no arm in the response, no exposure logged).
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["Arm", "Experiment", "ATTRIBUTIONS", "load_experiment", "parse_experiment", "user_fraction"]

ATTRIBUTIONS = ("shown", "any")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_TOP_KEYS = ("name", "attribution_window_s", "attribution", "alpha", "arms")
_ARM_KEYS = ("name", "share", "bundle", "ranker", "pipeline")
_SHARE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Arm:
    """One arm: who gets it (``share``) and what answers them (a pinned ``bundle`` version or the
    serving bundle, with ``pipeline`` overrides of its PipelineConfig and the ranker on or off)."""

    name: str
    share: float
    bundle: str | None = None
    ranker: bool = True
    pipeline: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_plain(self) -> bool:
        """Answered by the serving engine itself, unchanged."""
        return self.bundle is None and self.ranker and not self.pipeline


@dataclass(frozen=True)
class Experiment:
    name: str
    arms: tuple[Arm, ...]
    attribution_window_s: float = 86_400.0
    attribution: str = "shown"
    alpha: float = 0.05

    @property
    def control(self) -> Arm:
        return self.arms[0]

    def arm(self, name: str) -> Arm:
        for a in self.arms:
            if a.name == name:
                return a
        raise KeyError(name)

    def assign(self, user_id: str) -> Arm:
        """The user's arm: the first whose cumulative share exceeds the user's fraction."""
        u = user_fraction(self.name, user_id)
        total = 0.0
        for a in self.arms:
            total += a.share
            if u < total:
                return a
        return next(a for a in reversed(self.arms) if a.share > 0)  # rounding of the shares' sum

    def describe(self) -> dict:
        return {"name": self.name, "attribution_window_s": self.attribution_window_s,
                "attribution": self.attribution, "alpha": self.alpha,
                "arms": [{"name": a.name, "share": a.share, "bundle": a.bundle, "ranker": a.ranker,
                          "pipeline": dict(a.pipeline)} for a in self.arms]}


def user_fraction(experiment: str, user_id: str) -> float:
    """A user's place in [0, 1) for ``experiment``: uniform over users, fixed per (experiment, user)."""
    digest = hashlib.sha256(f"{experiment}\0{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; a ValueError names the file and the key."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"experiment file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"experiment file {path}: not valid TOML ({exc})") from None
    return parse_experiment(data, f"experiment file {path}")


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where}: {key} must be a number, got {value!r}")
    return float(value)


def _unknown(table: Mapping, allowed: tuple[str, ...], prefix: str, where: str) -> None:
    for key in table:
        if key not in allowed:
            raise ValueError(f"{where}: unknown key {prefix}{key} (expected {', '.join(allowed)})")


def _pipeline_overrides(table: Any, key: str, where: str) -> dict:
    from tandem.ranking.pipeline_config import PipelineConfig

    if not isinstance(table, Mapping):
        raise ValueError(f"{where}: {key} must be a table of PipelineConfig settings, got {table!r}")
    names = [f.name for f in fields(PipelineConfig)]
    _unknown(table, tuple(names), f"{key}.", where)
    out = {}
    for name, value in table.items():
        if name.endswith("_sources"):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{where}: {key}.{name} must be a list of source names, got {value!r}")
            value = tuple(value)
        elif name == "source_weights":
            if not isinstance(value, Mapping):
                raise ValueError(f"{where}: {key}.{name} must be a table of source = weight, got {value!r}")
            value = {k: _number(v, f"{key}.{name}.{k}", where) for k, v in value.items()}
        elif name in ("per_source_k", "fused_k", "rrf_k", "explain_features"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}: {key}.{name} must be an integer, got {value!r}")
        elif not isinstance(value, str):
            raise ValueError(f"{where}: {key}.{name} must be a string, got {value!r}")
        out[name] = value
    try:  # the same checks the bundle's own config passes (on the defaults; again on the bundle's at start)
        replace(PipelineConfig(), **out)
    except ValueError as exc:
        raise ValueError(f"{where}: {key}: {exc}") from None
    return out


def parse_experiment(data: Mapping[str, Any], where: str = "experiment") -> Experiment:
    """An :class:`Experiment` from the file's parsed TOML (see the module docstring)."""
    _unknown(data, _TOP_KEYS, "", where)
    name = data.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where}: name must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter "
                         f"or digit), got {name!r}")
    window = _number(data.get("attribution_window_s", 86_400), "attribution_window_s", where)
    if window <= 0:
        raise ValueError(f"{where}: attribution_window_s must be > 0 seconds, got {window:g}")
    attribution = data.get("attribution", "shown")
    if attribution not in ATTRIBUTIONS:
        raise ValueError(f"{where}: attribution must be one of {', '.join(ATTRIBUTIONS)}, got {attribution!r}")
    alpha = _number(data.get("alpha", 0.05), "alpha", where)
    if not 0 < alpha < 0.5:
        raise ValueError(f"{where}: alpha must be in (0, 0.5), got {alpha:g}")
    raw_arms = data.get("arms")
    if not isinstance(raw_arms, list) or len(raw_arms) < 2:
        raise ValueError(f"{where}: arms must list at least two [[arms]] tables (the first is the control), "
                         f"got {0 if raw_arms is None else raw_arms!r}")
    arms, seen = [], set()
    for i, raw in enumerate(raw_arms):
        key = f"arms[{i}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: {key} must be a table, got {raw!r}")
        _unknown(raw, _ARM_KEYS, f"{key}.", where)
        arm_name = raw.get("name")
        if not isinstance(arm_name, str) or not _NAME.match(arm_name):
            raise ValueError(f"{where}: {key}.name must be 1-64 letters, digits, '.', '_' or '-', got {arm_name!r}")
        if arm_name in seen:
            raise ValueError(f"{where}: {key}.name {arm_name!r} names two arms; arm names must differ")
        seen.add(arm_name)
        if "share" not in raw:
            raise ValueError(f"{where}: {key}.share is missing (the fraction of users in this arm)")
        share = _number(raw["share"], f"{key}.share", where)
        if not 0 <= share <= 1:
            raise ValueError(f"{where}: {key}.share must be in [0, 1], got {share:g}")
        bundle = raw.get("bundle")
        if bundle is not None:
            from tandem.server.bundle_manager import check_version_name

            if not isinstance(bundle, str):
                raise ValueError(f"{where}: {key}.bundle must be a bundle folder name, got {bundle!r}")
            try:
                check_version_name(bundle)
            except ValueError as exc:
                raise ValueError(f"{where}: {key}.bundle: {exc}") from None
        ranker = raw.get("ranker", True)
        if not isinstance(ranker, bool):
            raise ValueError(f"{where}: {key}.ranker must be true or false, got {ranker!r}")
        pipeline = _pipeline_overrides(raw.get("pipeline", {}), f"{key}.pipeline", where)
        arms.append(Arm(arm_name, share, bundle, ranker, pipeline))
    total = sum(a.share for a in arms)
    if abs(total - 1.0) > _SHARE_TOLERANCE:
        raise ValueError(f"{where}: arms[*].share must sum to 1, got {total:g} "
                         f"({' + '.join(f'{a.share:g}' for a in arms)})")
    if arms[0].share == 0:
        raise ValueError(f"{where}: arms[0].share must be > 0 (the first arm is the control the others are "
                         "compared with)")
    return Experiment(name, tuple(arms), window, attribution, alpha)
