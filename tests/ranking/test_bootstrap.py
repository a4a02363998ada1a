"""The paired bootstrap that decides whether a learned ranker ships."""

import numpy as np
import pytest

from tandem.ranking.bootstrap import paired_bootstrap


def test_a_small_gain_in_noisy_lists_is_not_significant():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 1, 30)
    cand = base + rng.normal(0.003, 0.1, 30)  # +0.003 on average, 0.1 of noise per list
    g = paired_bootstrap(cand, base, seed=0)
    assert g.low < 0 < g.high and not g.significant and g.lists == 30


def test_a_clear_gain_is_significant_and_the_interval_covers_the_mean():
    rng = np.random.default_rng(2)
    base = rng.uniform(0, 0.5, 30)
    cand = base + rng.normal(0.2, 0.05, 30)
    g = paired_bootstrap(cand, base, seed=0)
    assert g.significant and 0 < g.low < g.mean < g.high
    assert g.mean == pytest.approx(float((cand - base).mean()))


def test_no_difference_and_no_lists_are_not_significant():
    x = np.full(12, 0.5)
    assert not paired_bootstrap(x, x).significant
    assert not paired_bootstrap(np.zeros(0), np.zeros(0)).significant


def test_seeded_and_the_interval_narrows_with_more_lists():
    rng = np.random.default_rng(3)
    d = rng.normal(0.01, 0.1, 4000)
    a = paired_bootstrap(d, np.zeros_like(d), seed=7)
    assert a == paired_bootstrap(d, np.zeros_like(d), seed=7)
    small = paired_bootstrap(d[:40], np.zeros(40), seed=7)
    assert (a.high - a.low) < (small.high - small.low) / 5


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="paired"):
        paired_bootstrap(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="level"):
        paired_bootstrap(np.zeros(3), np.zeros(3), level=1.5)
