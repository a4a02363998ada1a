"""Early stopping whose least progress follows the validation score's noise."""

import math

import pytest

from tandem.retrieval.early_stopping import Patience, epoch_cap, recall_standard_error

# a curve that rises, then wanders on a plateau by about its noise (standard error 0.008)
RISE = [0.05, 0.09, 0.12, 0.14, 0.15]
PLATEAU = [0.152, 0.149, 0.155, 0.151, 0.157, 0.153, 0.158, 0.150, 0.159, 0.154, 0.160, 0.152, 0.161]


def _run(p: Patience, scores, noise=0.008) -> int:
    for n, s in enumerate(scores, 1):
        p.observe(s, noise)
        if p.stop:
            return n
    return len(scores)


def test_a_noisy_plateau_stops_training_where_plain_patience_keeps_going():
    plain = _run(Patience(3, min_improvement=0.0), RISE + PLATEAU)
    assert plain == len(RISE + PLATEAU)  # every few epochs a lucky new best restarts the count
    noisy = Patience(3)
    # progress (a rise over 0.004) last at 0.155, then three evaluations below 0.159
    assert _run(noisy, RISE + PLATEAU) == len(RISE) + 6
    assert noisy.best == 0.157 and noisy.best_at == len(RISE) + 5  # the best seen, progress or not


def test_a_steady_rise_above_the_noise_keeps_going():
    scores = [0.05 + 0.005 * i for i in range(40)]
    assert _run(Patience(3), scores, noise=0.008) == 40


def test_less_noise_lower_bar():
    # the same plateau on a validation set 16 times larger (noise / 4) still counts as progress
    assert _run(Patience(3), RISE + PLATEAU, noise=0.002) > _run(Patience(3), RISE + PLATEAU, noise=0.008)


def test_recall_standard_error():
    assert recall_standard_error(0.1, 22_363) == pytest.approx(math.sqrt(0.09 / 22_363))
    assert recall_standard_error(0.0, 100) == pytest.approx(math.sqrt(0.01 * 0.99 / 100))
    with pytest.raises(ValueError, match="patience"):
        Patience(0)
    with pytest.raises(ValueError, match="min_improvement"):
        Patience(3, min_improvement=-1.0)


def test_epoch_cap_grows_with_the_data():
    # the quick-start shop's 2,748 two-tower windows at 5 per 1,000: 14 epochs; Amazon Beauty's
    # 22,512: 113, above where patience stops it (epoch 27); a demo shop: the floor
    assert epoch_cap(200, 2748, 5.0, 10) == 14
    assert epoch_cap(200, 22_512, 5.0, 10) == 113
    assert epoch_cap(200, 300, 5.0, 10) == 10
    assert epoch_cap(200, 100_000, 5.0, 10) == 200  # never above the configured epochs
    assert epoch_cap(8, 300, 5.0, 10) == 8  # nor above a count asked for below the floor (a refit)
    assert epoch_cap(200, 2748, None, 10) == epoch_cap(200, 2748, 0.0, 10) == 200  # None or 0: no cap
    small, large = (epoch_cap(30, n, 2.0, 5) for n in (2_409, 20_000))
    assert small < large
