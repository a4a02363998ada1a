"""Early stopping on a validation score whose noise depends on how much validation data there is.

Plain patience ("stop after P evaluations without a new best") keeps a small shop training for
long: its validation score, measured on a few thousand users, wanders on a plateau, and each
lucky evaluation sets a new best and restarts the count. Here an evaluation counts as progress
only when it beats the score of the last progress by more than ``min_improvement``; by default
half the standard error of the score, so the bar is low on a large validation set (Beauty's
22k users) and higher on a small one (the 5k-item quick-start shop's 2.7k users). The best
state is still the best evaluation seen, progress or not.
"""

from __future__ import annotations

import math

__all__ = ["Patience", "epoch_cap", "recall_standard_error"]


def epoch_cap(epochs: int, units: int, per_thousand: float | None, floor: int) -> int:
    """The most epochs a model trains for on ``units`` training examples (two-tower windows,
    ranker lists): ``epochs`` limited to ``per_thousand`` epochs per 1,000 units (rounded up),
    but never fewer than ``floor``. ``per_thousand`` None or 0: ``epochs`` (no cap).

    Effort that grows with the data: an epoch over a small shop is a few optimiser steps, and
    patience alone trains it for as many epochs as a large shop (the 5,000-item quick-start shop's
    two-tower ran 31 epochs of 22 steps, still creeping up 0.002 Recall@10 per epoch); the cap
    stops it after a number of epochs proportional to its size, while a large shop (Amazon
    Beauty's 22,512 windows: cap 113 at 5 per 1,000) stops on patience long before the cap."""
    if not per_thousand:
        return int(epochs)
    return int(min(epochs, max(floor, math.ceil(per_thousand * units / 1000.0))))


def recall_standard_error(recall: float, n_users: int) -> float:
    """The binomial standard error sqrt(r (1 - r) / n) of a recall measured on ``n_users`` (r
    floored at 1 / n, so a zero recall still has a noise level)."""
    n = max(int(n_users), 1)
    r = min(max(float(recall), 1.0 / n), 1.0)
    return math.sqrt(r * (1.0 - r) / n)


class Patience:
    """``observe(score, noise)`` after each evaluation; ``stop`` once ``patience`` evaluations
    in a row made no progress. ``min_improvement`` None: the least progress is ``noise_share``
    times the ``noise`` (a standard error) passed with the score; a number: that fixed rise
    (0: any new best is progress, the plain rule)."""

    def __init__(self, patience: int, min_improvement: float | None = None, noise_share: float = 0.5) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        if min_improvement is not None and not min_improvement >= 0:
            raise ValueError(f"min_improvement must be >= 0 or None, got {min_improvement}")
        self.patience = patience
        self.min_improvement = min_improvement
        self.noise_share = noise_share
        self.best = -math.inf
        self.best_at = 0  # the 1-based evaluation that scored best
        self.progress_at = -math.inf  # the score of the last evaluation that counted as progress
        self.stale = 0
        self.evaluations = 0

    def observe(self, score: float, noise: float = 0.0) -> bool:
        """Record one evaluation; True when it is the best so far (keep its state)."""
        self.evaluations += 1
        delta = self.min_improvement if self.min_improvement is not None else self.noise_share * noise
        if score > self.progress_at + delta:
            self.progress_at, self.stale = score, 0
        else:
            self.stale += 1
        if score > self.best:
            self.best, self.best_at = score, self.evaluations
            return True
        return False

    @property
    def stop(self) -> bool:
        return self.stale >= self.patience
