from dataclasses import replace

import numpy as np
import pytest
import torch

from tandem.ranking.ranker import Ranker, RankerConfig, RankingLists, ndcg_of_lists


def _lists(n_lists=300, m=20, seed=0):
    """Lists where the positive has a high 'signal' feature (noisy); 'noise' is useless."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for _ in range(n_lists):
        x = rng.normal(size=(m, 3)).astype(np.float32)
        y = np.zeros(m, dtype=np.float32)
        pos = rng.integers(m)
        y[pos] = 1.0
        x[pos, 1] += 2.5  # signal
        # feature 0 is anti-correlated with order: a naive baseline (rank by feature 0) is poor
        feats.append(x)
        labels.append(y)
    return RankingLists.from_lists(feats, labels, max_list=m)


def test_ndcg_of_lists_hand_values():
    lists = RankingLists.from_lists(
        [np.zeros((3, 1), np.float32), np.zeros((2, 1), np.float32)],
        [np.array([0, 0, 1], np.float32), np.array([0, 0], np.float32)],
        max_list=5,
    )
    scores = np.array([[3.0, 2.0, 1.0], [1.0, 0.0, 99.0]])  # slot 2 of list 2 is padding
    # list 1: positive at rank 3 -> 1/log2(4) = 0.5; list 2: no positive -> 0; mean 0.25
    assert ndcg_of_lists(scores, lists) == pytest.approx(0.25)


def test_ranker_learns_signal_and_explains_it(tmp_path):
    train, valid = _lists(seed=0), _lists(n_lists=100, seed=1)
    r = Ranker(["noise_a", "signal", "noise_b"], RankerConfig(epochs=15, patience=5, hidden=(16,), epochs_per_1k_lists=None))
    r.fit(train, valid)
    random_ndcg = ndcg_of_lists(np.random.default_rng(3).normal(size=valid.mask.shape), valid)
    learned = ndcg_of_lists(r.score_lists(valid), valid)
    assert learned > 0.7 and learned > 2 * random_ndcg
    positives = np.stack([valid.features[i][int(np.argmax(valid.labels[i]))] for i in range(len(valid))])
    tops = [t[0][0] if t else None for t in r.explain(positives, top=1)]
    # the positive's boost is credited to the signal feature far more often than chance (1 in 3)
    assert tops.count("signal") > 0.5 * len(tops)
    x = valid.features[0]
    r.save(tmp_path)
    r2 = Ranker.load(tmp_path)
    np.testing.assert_allclose(r2.score(x), r.score(x), rtol=1e-6)
    q = r.score(x, quantized=True)
    assert np.corrcoef(q, r.score(x))[0, 1] > 0.95


def test_no_positive_anywhere_is_a_clear_error():
    feats = [np.ones((4, 2), np.float32)] * 10
    labels = [np.zeros(4, np.float32)] * 10
    with pytest.raises(ValueError, match="no training list contains its positive"):
        Ranker(["a", "b"]).fit(RankingLists.from_lists(feats, labels, 4))


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="ranker.dropout"):
        RankerConfig(dropout=1.5)


def test_numpy_scoring_path_equals_the_torch_model():
    rng = np.random.default_rng(4)
    names = [f"f{i}" for i in range(7)]
    r = Ranker(names, RankerConfig(hidden=(16, 8), cross_layers=2))
    with torch.no_grad():  # weights and standardisation away from their initial values
        for p in r.model.parameters():
            p.add_(torch.from_numpy(rng.normal(0, 0.3, p.shape).astype(np.float32)))
        r.model.mean.copy_(torch.from_numpy(rng.normal(size=7).astype(np.float32)))
        r.model.std.copy_(torch.from_numpy(rng.uniform(0.5, 2, 7).astype(np.float32)))
    r._fast = None
    x = rng.normal(size=(300, 7)).astype(np.float32)
    with torch.no_grad():
        expected = r.model(torch.from_numpy(x)).numpy()
    for layout in (x, np.asfortranarray(x), x.T.copy().T):
        got = r.score(layout)
        assert got.dtype == np.float32 and got.shape == (300,)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert r.score(np.zeros((0, 7), np.float32)).shape == (0,)


def test_numpy_scoring_runs_blas_on_one_thread():
    from threadpoolctl import threadpool_info

    r = Ranker([f"f{i}" for i in range(5)], RankerConfig(hidden=(8,)))
    r.score(np.zeros((2, 5), np.float32))
    seen = []

    class Spy(list):  # records the BLAS thread count while the cross layers run
        def __iter__(self):
            seen.extend(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
            return super().__iter__()

    r._fast.cross = Spy(r._fast.cross)
    r.score(np.ones((3, 5), np.float32))
    assert seen and set(seen) == {1}


def test_initial_weights_come_from_the_config_seed_not_the_global_rng():
    torch.manual_seed(1)
    a = Ranker(["x", "y"], RankerConfig(hidden=(4,)))
    state = torch.random.get_rng_state()
    torch.rand(7)  # whatever ran before must not change a build
    b = Ranker(["x", "y"], RankerConfig(hidden=(4,)))
    for (name, wa), (_, wb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(wa, wb), name
    torch.manual_seed(1)
    Ranker(["x", "y"], RankerConfig(hidden=(4,)))
    assert torch.equal(torch.random.get_rng_state(), state)  # and the global generator is left alone
    c = Ranker(["x", "y"], RankerConfig(hidden=(4,), seed=2))
    assert not torch.equal(c.model.deep[0].weight, a.model.deep[0].weight)


def test_fit_is_repeatable_and_leaves_the_callers_torch_rng_alone():
    torch.manual_seed(5)
    state = torch.random.get_rng_state()
    cfg = RankerConfig(hidden=(8,), epochs=2)
    a = Ranker(["noise", "signal", "other"], cfg).fit(_lists(60))
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(3)  # whatever ran before must not change the fit
    b = Ranker(["noise", "signal", "other"], cfg).fit(_lists(60))
    for (name, wa), (_, wb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(wa, wb), name


def test_ndcg_per_list_is_the_mean_of_ndcg_of_lists():
    from tandem.ranking.ranker import ndcg_per_list

    valid = _lists(n_lists=30, seed=4)
    scores = np.random.default_rng(5).normal(size=valid.mask.shape)
    per = ndcg_per_list(scores, valid)
    assert per.shape == (30,) and per.mean() == pytest.approx(ndcg_of_lists(scores, valid))


def test_training_epochs_are_logged(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="tandem.ranking.ranker")
    r = Ranker(["noise_a", "signal", "noise_b"], RankerConfig(epochs=3, patience=3, hidden=(8,)))
    r.fit(_lists(n_lists=60, seed=0), _lists(n_lists=20, seed=1))
    lines = [rec.getMessage() for rec in caplog.records if rec.name == "tandem.ranking.ranker"]
    epochs = [m for m in lines if m.startswith("ranker epochs: ") and "/3 epoch" in m]
    assert len(epochs) == len(r.history) == 3 and "valid ndcg@10 " in epochs[-1] and "loss " in epochs[0]
    assert lines[-1].startswith("ranker epochs: done, 3 epoch")


def test_warm_start_begins_from_the_earlier_weights_and_standardisation():
    names = ["noise_a", "signal", "noise_b"]
    prev = Ranker(names, RankerConfig(epochs=15, patience=5, hidden=(16,))).fit(_lists(seed=0), _lists(100, seed=1))
    valid = _lists(n_lists=100, seed=3)
    # shifted features: a cold fit would standardise anew; a warm one keeps the earlier statistics
    shifted = RankingLists(_lists(seed=2).features + 5.0, _lists(seed=2).mask, _lists(seed=2).labels)
    warm = Ranker(names, RankerConfig(epochs=1, patience=1, hidden=(16,), lr=1e-9)).fit(shifted, valid, init=prev)
    assert torch.equal(warm.model.mean, prev.model.mean) and torch.equal(warm.model.std, prev.model.std)
    # lr ~0: one epoch leaves the earlier model, so it ranks as well as it did from the first epoch
    assert ndcg_of_lists(warm.score_lists(valid), valid) == pytest.approx(ndcg_of_lists(prev.score_lists(valid), valid),
                                                                          abs=1e-4)
    cold = Ranker(names, RankerConfig(epochs=1, patience=1, hidden=(16,), lr=1e-9)).fit(shifted, valid)
    assert ndcg_of_lists(cold.score_lists(valid), valid) < ndcg_of_lists(warm.score_lists(valid), valid) - 0.2


def test_warm_start_needs_the_same_features_and_shape():
    prev = Ranker(["a", "b"], RankerConfig(hidden=(16,)))
    assert "only now: c" in Ranker(["a", "b", "c"], RankerConfig(hidden=(16,))).warm_start_problem(prev)
    assert "ranker.hidden changed" in Ranker(["a", "b"], RankerConfig(hidden=(8,))).warm_start_problem(prev)
    assert Ranker(["a", "b"], RankerConfig(hidden=(16,), epochs=2)).warm_start_problem(prev) is None
    with pytest.raises(ValueError, match="cannot warm-start"):
        Ranker(["b", "a"], RankerConfig(hidden=(16,))).fit(_lists(), init=prev)


def test_the_epoch_cap_follows_the_number_of_training_lists(caplog):
    # at 20 epochs per 1,000 lists: 100 training lists get 2 epochs, 400 get 8, where patience
    # (30) and ``epochs`` (30) alone would run all 30; the build records the cap
    import logging

    caplog.set_level(logging.INFO, logger="tandem.ranking.ranker")
    cfg = RankerConfig(hidden=(8,), epochs=30, patience=30, epochs_per_1k_lists=20.0, min_epochs=2)
    small = Ranker(["noise", "signal", "other"], cfg).fit(_lists(100), _lists(20, seed=1))
    large = Ranker(["noise", "signal", "other"], cfg).fit(_lists(400), _lists(20, seed=1))
    assert len(small.history) == small.max_epochs == 2
    assert len(large.history) == large.max_epochs == 8
    assert any("at most 2 epochs for 100 training lists" in r.getMessage() for r in caplog.records)
    free = Ranker(["noise", "signal", "other"], replace(cfg, epochs=12, epochs_per_1k_lists=None)).fit(
        _lists(100), _lists(20, seed=1))
    assert len(free.history) == free.max_epochs == 12
    assert RankerConfig().epochs_per_1k_lists is not None  # on by default
    with pytest.raises(ValueError, match="epochs_per_1k_lists"):
        RankerConfig(epochs_per_1k_lists=-1.0)
    assert len(Ranker(["noise", "signal", "other"], replace(cfg, epochs=7, epochs_per_1k_lists=0)).fit(
        _lists(100), _lists(20, seed=1)).history) == 7  # 0: no cap


def test_default_ranker_cap_binds_on_a_small_shop_and_not_on_amazon_beauty():
    from tandem.retrieval.early_stopping import epoch_cap

    c = RankerConfig()
    # the quick-start shop's 2,409 training lists: 10 (patience alone ran it 10-17 epochs); Amazon
    # Beauty's ~20,100 (90% of 22,363 validation users): all 30, where patience stops it at 6
    assert epoch_cap(c.epochs, 2_409, c.epochs_per_1k_lists, c.min_epochs) == 10
    assert epoch_cap(c.epochs, 20_126, c.epochs_per_1k_lists, c.min_epochs) == c.epochs == 30
