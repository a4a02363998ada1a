"""The report's statistics on simulated populations whose truth is known, run in-process through
the real report path (assignment, attribution, :func:`analyze`):

- an arm whose users truly click and buy more is found significantly better;
- A/A experiments (identical arms) flag a difference at about the alpha rate, no more, while a
  plain exposure-level two-proportion z-test on the same data flags far more (users differ in how
  keen they are, so one user's exposures are correlated; that is why the report tests over users);
- the delta method reduces to the textbook tests when every user has one exposure.
"""

import math

import numpy as np
import pytest
from scipy import stats

from tandem.retrieval.data import Event
from tandem.server.attribution import Exposure
from tandem.server.experiment import parse_experiment
from tandem.server.experiment_report import analyze
from tandem.server.experiment_stats import compare, ratio_estimate

PRICES = {f"i{k}": float(5 + k % 20) for k in range(50)}
BASE_CTR = 0.10


def experiment(name: str, alpha: float = 0.05):
    return parse_experiment({"name": name, "attribution_window_s": 600, "alpha": alpha,
                             "arms": [{"name": "A", "share": 0.5}, {"name": "B", "share": 0.5}]})


def simulate(exp, seed: int, users: int, lift: float = 1.0, concentration: float = 2.0):
    """Users with their own click propensity (Beta with mean BASE_CTR; a small ``concentration``
    makes users differ a lot), 1 + Poisson(3) exposures each, 10 items shown per exposure. A click
    on a shown item with the user's propensity (times ``lift`` in arm B), then a cart with
    probability 0.6 and a purchase with 0.7 of that. Returns (exposures in time order, events,
    per-exposure click flags by arm for the naive test)."""
    rng = np.random.default_rng(seed)
    a = BASE_CTR * concentration
    names = [f"s{seed}-u{u}" for u in range(users)]
    arms = np.array([exp.assign(user).name for user in names])
    p = rng.beta(a, concentration - a, users) * np.where(arms == "B", lift, 1.0)
    n = 1 + rng.poisson(3, users)
    owner = np.repeat(np.arange(users), n)
    k = np.arange(len(owner)) - np.repeat(np.cumsum(n) - n, n)
    ts = 1_700_000_000 + owner * 10_000 + k * 1000 + 0.5
    shown = np.argsort(rng.random((len(owner), 50)), axis=1)[:, :10]
    clicked = rng.random(len(owner)) < np.minimum(p[owner], 1.0)
    pick = shown[np.arange(len(owner)), rng.integers(0, 10, len(owner))]
    cart = clicked & (rng.random(len(owner)) < 0.6)
    bought = cart & (rng.random(len(owner)) < 0.7)
    noise = rng.random(len(owner)) < 0.02  # events the rule must ignore: an item not shown, a view
    exposures, events = [], []
    items = [f"i{j}" for j in range(50)]
    arm_of = arms.tolist()
    for o, t, row, j, c, ca, b, z in zip(owner.tolist(), ts.tolist(), shown.tolist(), pick.tolist(), clicked.tolist(),
                                         cart.tolist(), bought.tolist(), noise.tolist(), strict=True):
        user, sec, item = names[o], int(t), items[j]
        exposures.append(Exposure(t, user, arm_of[o], "recommend", tuple(items[i] for i in row)))
        if c:
            events.append(Event(user, item, sec + 5, "click"))
        if ca:
            events.append(Event(user, item, sec + 20, "cart"))
        if b:
            events.append(Event(user, item, sec + 60, "purchase"))
        if z:
            events += [Event(user, "i99", sec + 7, "click"), Event(user, items[row[0]], sec + 8, "view")]
    flags = {arm: clicked[arms[owner] == arm].tolist() for arm in ("A", "B")}
    return exposures, events, flags


def naive_p_value(flags) -> float:
    """The pooled two-proportion z-test with every exposure an independent trial."""
    (xa, na), (xb, nb) = [(sum(f), len(f)) for f in (flags["A"], flags["B"])]
    pooled = (xa + xb) / (na + nb)
    se = math.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
    return float(2 * stats.norm.sf(abs(xb / nb - xa / na) / se))


def test_the_better_arm_is_found():
    exp = experiment("power")
    exposures, events, _ = simulate(exp, seed=1, users=3000, lift=1.4)
    report = analyze(exp, exposures, events, PRICES)
    b = report["arms"][1]
    assert b["name"] == "B"
    for metric in ("ctr", "cart_rate", "conversion", "revenue"):
        assert b["vs_control"][metric]["significant"] and b["vs_control"][metric]["verdict"] == "better", metric
    assert 0.2 < b["vs_control"]["ctr"]["relative"] < 0.6  # the true lift is 0.4
    a = report["arms"][0]
    lo, hi = a["metrics"]["ctr"]["ci"]
    assert lo < BASE_CTR < hi
    assert report["unattributed_events"] > 0  # the clicks on unshown items


def test_a_worse_arm_is_found_worse():
    exp = experiment("harm")
    exposures, events, _ = simulate(exp, seed=2, users=3000, lift=0.6)
    c = analyze(exp, exposures, events, PRICES)["arms"][1]["vs_control"]["ctr"]
    assert c["significant"] and c["verdict"] == "worse" and c["ci"][1] < 0


A_A_RUNS = 200


@pytest.fixture(scope="module")
def a_a_runs():
    """A/A experiments over many seeds: (report, naive p-value of CTR, true CTR) each."""
    out = []
    for seed in range(A_A_RUNS):
        exp = experiment(f"aa-{seed}")
        exposures, events, flags = simulate(exp, seed=1000 + seed, users=400, concentration=1.0)
        out.append((analyze(exp, exposures, events, PRICES), naive_p_value(flags)))
    return out


def test_a_a_false_positives_stay_at_the_alpha_rate(a_a_runs):
    alpha = 0.05
    for metric in ("ctr", "cart_rate", "conversion", "revenue"):
        flagged = sum(r["arms"][1]["vs_control"][metric]["significant"] for r, _ in a_a_runs)
        assert flagged / A_A_RUNS <= 0.1, (metric, flagged)  # about alpha; 0.1 leaves room for chance
    # and across the runs the p-values are about uniform, not merely rarely small
    p = np.array([r["arms"][1]["vs_control"]["ctr"]["p_value"] for r, _ in a_a_runs])
    assert stats.kstest(p, "uniform").pvalue > 0.01
    any_flag = sum(any(r["arms"][1]["vs_control"][m]["significant"] for m in ("ctr", "conversion", "revenue"))
                   for r, _ in a_a_runs)
    assert any_flag / A_A_RUNS <= 3 * alpha + 0.05


def test_the_exposure_level_test_would_cry_wolf(a_a_runs):
    """The reason for testing over users: the same A/A data through a test that counts exposures
    as independent finds a CTR difference far more often than alpha."""
    naive = sum(p < 0.05 for _, p in a_a_runs) / A_A_RUNS
    delta = sum(r["arms"][1]["vs_control"]["ctr"]["significant"] for r, _ in a_a_runs) / A_A_RUNS
    assert naive > 0.12 and naive > 2 * delta, (naive, delta)


def test_intervals_cover_the_true_ctr(a_a_runs):
    covered = [lo <= BASE_CTR <= hi for r, _ in a_a_runs for lo, hi in [r["arms"][0]["metrics"]["ctr"]["ci"]]]
    assert 0.9 <= sum(covered) / len(covered) <= 0.99


def test_one_exposure_per_user_is_the_textbook_tests():
    rng = np.random.default_rng(3)
    ya, yb = (rng.random(800) < 0.1).astype(float), (rng.random(900) < 0.13).astype(float)
    ones_a, ones_b = np.ones(800), np.ones(900)
    c = compare(ratio_estimate(ya, ones_a), ratio_estimate(yb, ones_b), alpha=0.05)
    # unpooled two-proportion z (with the sample variance's n - 1)
    pa, pb = ya.mean(), yb.mean()
    se = math.sqrt(pa * (1 - pa) * 800 / 799 / 800 + pb * (1 - pb) * 900 / 899 / 900)
    assert c.z == pytest.approx((pb - pa) / se, rel=1e-9)
    # revenue: Welch's t statistic
    ra, rb = rng.exponential(10, 800) * ya, rng.exponential(10, 900) * yb
    c = compare(ratio_estimate(ra, ones_a), ratio_estimate(rb, ones_b), alpha=0.05)
    assert c.z == pytest.approx(stats.ttest_ind(rb, ra, equal_var=False).statistic, rel=1e-9)


def test_degenerate_inputs_give_no_verdict():
    empty = ratio_estimate(np.zeros(0), np.zeros(0))
    one = ratio_estimate(np.array([1.0]), np.array([2.0]))
    assert math.isnan(empty.value) and one.value == 0.5 and math.isnan(one.variance)
    c = compare(empty, one, 0.05)
    assert not c.significant and math.isnan(c.p_value)
    zeros = ratio_estimate(np.zeros(5), np.ones(5))
    assert not compare(zeros, zeros, 0.05).significant  # nobody clicked anywhere: no difference
