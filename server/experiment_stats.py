"""The statistics of an experiment report: per-exposure metrics as ratios over users, with the
delta method's variance, normal confidence intervals and a two-sided z-test against control.

Why over users: the user is what is randomised (assignment is per user), and one user's
exposures are not independent (a keen user clicks on many). Counting exposures as independent
trials, as a plain two-proportion z-test does, understates the variance and finds "differences"
between identical arms far more often than alpha (tests/server/test_experiment_stats.py measures
it). So every metric is ``R = sum_u Y_u / sum_u N_u`` (``N_u`` the user's exposures, ``Y_u`` the
user's exposures with a click, a cart, a purchase, or the user's revenue), and its variance is
the delta method's over users (Deng, Knoblich and Lu 2018, "Applying the Delta Method in
Metric Analytics"):

    Var(R) ~ (s_Y^2 - 2 R s_YN + R^2 s_N^2) / (n * mean(N)^2)

When every user has one exposure this is the unpooled two-proportion z-test of CTR and
conversion, and Welch's test of revenue per exposure. Two arms' estimates are independent
(disjoint users), so the difference's variance is the sum. A comparison is significant when
its p-value is below ``alpha / (arms - 1)`` (Bonferroni over the arms compared with control).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = ["RatioEstimate", "Comparison", "ratio_estimate", "compare", "interval"]


@dataclass(frozen=True)
class RatioEstimate:
    value: float          # sum(Y) / sum(N); NaN without exposures
    variance: float       # delta-method variance; NaN with fewer than 2 users
    users: int
    exposures: int


@dataclass(frozen=True)
class Comparison:
    diff: float           # treatment - control
    relative: float       # diff / control (NaN when control is 0)
    ci: tuple[float, float]
    z: float
    p_value: float
    significant: bool


def ratio_estimate(y: np.ndarray, n: np.ndarray) -> RatioEstimate:
    """``y``, ``n``: float64 (users,), one entry per user (``n`` >= 1 exposures)."""
    y = np.asarray(y, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    users, total = len(n), float(n.sum())
    if users == 0 or total == 0:
        return RatioEstimate(math.nan, math.nan, users, int(total))
    r = float(y.sum()) / total
    if users < 2:
        return RatioEstimate(r, math.nan, users, int(total))
    cov = np.cov(np.vstack([y, n]), ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (users * float(n.mean()) ** 2)
    return RatioEstimate(r, max(0.0, float(var)), users, int(total))


def interval(estimate: RatioEstimate, alpha: float) -> tuple[float, float]:
    """The two-sided ``1 - alpha`` normal interval (NaN bounds when the variance is unknown)."""
    half = stats.norm.ppf(1 - alpha / 2) * math.sqrt(estimate.variance) if estimate.variance == estimate.variance \
        else math.nan
    return estimate.value - half, estimate.value + half


def compare(control: RatioEstimate, treatment: RatioEstimate, alpha: float, comparisons: int = 1) -> Comparison:
    """The z-test of ``treatment - control``; significant when p < alpha / comparisons. The interval
    is the difference's ``1 - alpha / comparisons`` interval, so it excludes 0 exactly when significant."""
    level = alpha / max(1, comparisons)
    diff = treatment.value - control.value
    var = control.variance + treatment.variance
    relative = diff / control.value if control.value else math.nan
    if not (var == var) or math.isnan(diff):
        return Comparison(diff, relative, (math.nan, math.nan), math.nan, math.nan, False)
    if var == 0:  # both arms constant (e.g. nobody clicked anywhere): no evidence either way unless they differ
        same = diff == 0
        return Comparison(diff, relative, (diff, diff), 0.0 if same else math.copysign(math.inf, diff),
                          1.0 if same else 0.0, not same)
    se = math.sqrt(var)
    z = diff / se
    p = float(2 * stats.norm.sf(abs(z)))
    half = float(stats.norm.ppf(1 - level / 2)) * se
    return Comparison(diff, relative, (diff - half, diff + half), z, p, p < level)
