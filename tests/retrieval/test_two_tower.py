"""Two-tower model on tiny generated data: learns a pattern, is deterministic, round-trips."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import torch

from tandem.index_builder.splits import leave_last_out
from tandem.retrieval.base import Candidates, RetrievalRequest
from tandem.retrieval.data import Catalog, Interactions, Item
from tandem.retrieval.two_tower import TwoTower, TwoTowerConfig

N_ITEMS = 40
SMALL = TwoTowerConfig(
    dim=16,
    layers=1,
    heads=2,
    max_len=8,
    dropout=0.1,
    n_negatives=16,
    batch_size=32,
    epochs=12,
    lr=5e-3,
    seed=3,
    epochs_per_1k_windows=None,  # these tests ask for their epoch counts (the cap has its own test)
)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(2)


def _catalog() -> Catalog:
    return Catalog.from_items(
        Item(
            f"i{i}",
            f"item {i}",
            category=f"C{i % 3} > S{i % 5}",
            brand=f"b{i % 4}",
            price=float(1 + i) if i % 7 else None,
            tags=(f"t{i % 6}", f"t{i % 2 + 10}"),
        )
        for i in range(N_ITEMS)
    )


def _chain_interactions(n_users: int = 200, seed: int = 0) -> Interactions:
    """Every user walks the catalog in steps of one: item i is followed by item i + 1."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        start, length = int(rng.integers(0, N_ITEMS - 8)), int(rng.integers(4, 8))
        for j in range(length):
            users.append(u)
            items.append(start + j)
            ts.append(1_000_000 + 3600 * j)
    n = len(users)
    return Interactions(
        [f"u{u}" for u in range(n_users)],
        np.array(users),
        np.array(items),
        np.array(ts),
        np.full(n, 3),
        np.full(n, np.nan),
    )


@pytest.fixture(scope="module")
def fitted() -> tuple[Catalog, TwoTower]:
    torch.set_num_threads(2)
    catalog = _catalog()
    text = np.random.default_rng(1).normal(size=(N_ITEMS, 8)).astype(np.float32)
    return catalog, TwoTower(SMALL).fit(catalog, _chain_interactions(), text_vectors=text)


def _next_item_accuracy(model: TwoTower) -> float:
    reqs = [RetrievalRequest(history=np.arange(s, s + 3, dtype=np.int64)) for s in range(0, N_ITEMS - 4)]
    scores = model.score_all(reqs)
    for r, req in enumerate(reqs):
        scores[r, req.history] = -np.inf
    return float(np.mean(scores.argmax(1) == np.array([r.history[-1] + 1 for r in reqs])))


def test_learns_the_successor_pattern(fitted) -> None:
    _, model = fitted
    assert _next_item_accuracy(model) > 0.6  # chance is 1/37
    assert model.log is not None and model.log.losses[-1] < model.log.losses[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "changes",
    [
        dict(user_encoder="gru", loss="full"),
        dict(similarity="cosine", use_item_features=False, use_text=False),
    ],
)
def test_variants_learn_too(changes) -> None:
    model = TwoTower(dataclasses.replace(SMALL, **changes)).fit(_catalog(), _chain_interactions())
    assert _next_item_accuracy(model) > 0.5


def test_same_seed_same_model() -> None:
    cfg = dataclasses.replace(SMALL, epochs=2)
    a = TwoTower(cfg).fit(_catalog(), _chain_interactions()).encode_items()
    b = TwoTower(cfg).fit(_catalog(), _chain_interactions()).encode_items()
    np.testing.assert_array_equal(a, b)
    c = TwoTower(dataclasses.replace(cfg, seed=4)).fit(_catalog(), _chain_interactions()).encode_items()
    assert not np.allclose(a, c)


def test_save_load_gives_identical_scores(tmp_path, fitted) -> None:
    catalog, model = fitted
    files = model.save(tmp_path)
    assert all(p.exists() for p in files)
    loaded = TwoTower.load(tmp_path, catalog)
    reqs = [
        RetrievalRequest(
            history=np.array([3, 4, 5]),
            history_ts=np.array([0, 60, 7200]),
            history_events=np.array([0, 2, 3], dtype=np.int8),
            now=90_000,
        ),
        RetrievalRequest(history=np.array([20])),
    ]
    np.testing.assert_array_equal(model.score_all(reqs), loaded.score_all(reqs))
    a, b = model.retrieve(reqs[0], 5), loaded.retrieve(reqs[0], 5)
    np.testing.assert_array_equal(a.items, b.items)
    assert loaded.log is not None and loaded.log.epochs_run == model.log.epochs_run
    with pytest.raises(ValueError, match="fitted on 40 items"):
        TwoTower.load(tmp_path, catalog.subset(np.arange(10)))


def test_user_vector_follows_the_history(fitted) -> None:
    _, model = fitted
    base = RetrievalRequest(history=np.array([3, 4, 5]))
    more = RetrievalRequest(history=np.array([3, 4, 5, 20]))
    reordered = RetrievalRequest(history=np.array([5, 4, 3]))
    u = model.encode_users([base, more, reordered])
    assert u.shape == (3, SMALL.dim) and u.dtype == np.float32
    assert not np.allclose(u[0], u[1]) and not np.allclose(u[0], u[2])
    # a new event moves the recommendation at once: after 20 comes 21
    assert model.retrieve(more, 1).items[0] == 21
    # event type and request time are inputs too
    typed = RetrievalRequest(history=np.array([3, 4, 5]), history_events=np.array([0, 0, 0], dtype=np.int8))
    timed = RetrievalRequest(history=np.array([3, 4, 5]), history_ts=np.array([0, 60, 120]), now=10**7)
    v = model.encode_users([typed, timed])
    assert not np.allclose(u[0], v[0]) and not np.allclose(u[0], v[1])


def test_ann_matches_brute_force(fitted) -> None:
    _, model = fitted
    for hist in ([1, 2], [10, 11, 12, 13], [33]):
        req = RetrievalRequest(history=np.array(hist, dtype=np.int64))
        got = model.retrieve(req, 10)
        want = Candidates.top_k(model.score_all([req])[0], 10, "two_tower", exclude=req.history)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-5, atol=1e-5)
    similar = model.retrieve(RetrievalRequest(item=7), 5)
    vecs = model.encode_items()
    oracle = Candidates.top_k(vecs @ vecs[7], 5, "two_tower", exclude=np.array([7]))
    np.testing.assert_array_equal(similar.items, oracle.items)
    assert len(model.retrieve(RetrievalRequest(query="shoes"), 5)) == 0


def test_early_stopping_keeps_the_best_epoch() -> None:
    catalog, inter = _catalog(), _chain_interactions(n_users=240)
    split = leave_last_out(inter)
    cfg = dataclasses.replace(SMALL, epochs=40, patience=2, lr=2e-2)
    model = TwoTower(cfg).fit(catalog, split.train, valid=split.valid)
    log = model.log
    assert log is not None and log.evals
    best = max(log.evals, key=lambda e: e[1])
    assert log.best_epoch == best[0]
    assert model.evaluate(split.valid, 10)[0] == pytest.approx(best[1])
    assert log.epochs_run < 40 or log.best_epoch == 40


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="divisible by heads"):
        TwoTowerConfig(dim=10, heads=3)
    with pytest.raises(ValueError, match="user_encoder"):
        TwoTowerConfig(user_encoder="lstm")
    with pytest.raises(ValueError, match="dropout"):
        TwoTowerConfig(dropout=1.0)
    with pytest.raises(ValueError, match="one row per catalog item"):
        TwoTower(SMALL).fit(_catalog(), _chain_interactions(), text_vectors=np.zeros((3, 8), np.float32))


@pytest.mark.parametrize("layers,heads", [(1, 2), (2, 1)])
def test_request_path_equals_the_training_forward(layers, heads) -> None:
    """UserTower.infer_last (the serving path) gives forward()'s last position, padded or not."""
    from tandem.retrieval.two_tower_model import UserTower

    torch.manual_seed(0)
    tower = UserTower("sasrec", 16, layers, heads, 8, 0.3).eval()
    gen = torch.Generator().manual_seed(1)
    b, length = 5, 6
    vecs = torch.randn(b, length, 16, generator=gen)
    valid = torch.ones(b, length, dtype=torch.bool)
    valid[1, :2] = False  # left padding, as the windows are stacked
    valid[3, :5] = False
    ints = [torch.randint(1, 5, (b, length), generator=gen) for _ in range(4)]
    with torch.no_grad():
        want = tower(vecs, valid, *ints)[:, -1]
        torch.testing.assert_close(tower.infer_last(vecs, valid, *ints), want, rtol=1e-5, atol=1e-5)
        full = torch.ones(1, length, dtype=torch.bool)  # one unpadded request: the is_causal shortcut
        one = [t[:1] for t in ints]
        torch.testing.assert_close(tower.infer_last(vecs[:1], full, *one), tower(vecs[:1], full, *one)[:, -1],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_same_seed_same_model_at_a_size_where_threads_reduce_in_parallel(tmp_path) -> None:
    # the small catalogs above never reach torch's parallel reductions; at the demo shop's size,
    # two threads gave weights that differed from run to run before deterministic_training
    from tandem.index_builder.cleaning import load_dataset
    from tandem.index_builder.synthetic import SyntheticConfig, generate

    generate(tmp_path, SyntheticConfig(items=3000, users=2000, seed=5, queries=0))
    clean = load_dataset(tmp_path)
    split = leave_last_out(clean.interactions)
    cfg = TwoTowerConfig(epochs=2, use_text=False)
    a = TwoTower(cfg).fit(clean.catalog, split.train).encode_items()
    b = TwoTower(cfg).fit(clean.catalog, split.train).encode_items()
    np.testing.assert_array_equal(a, b)
    assert not torch.are_deterministic_algorithms_enabled()  # the caller's setting is restored


def test_fit_leaves_the_callers_torch_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    TwoTower(dataclasses.replace(SMALL, epochs=1)).fit(_catalog(), _chain_interactions())
    assert torch.equal(torch.random.get_rng_state(), before)


def test_training_progress_goes_to_the_log(caplog) -> None:
    # not on a terminal (pytest captures stderr): one log line per epoch with the loss and the
    # validation recall, and a summary; nothing is printed
    catalog, inter = _catalog(), _chain_interactions(n_users=120)
    split = leave_last_out(inter)
    caplog.set_level(logging.INFO, logger="tandem.retrieval.two_tower_training")
    model = TwoTower(dataclasses.replace(SMALL, epochs=3, patience=3)).fit(
        catalog, split.train, valid=split.valid, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "tandem.retrieval.two_tower_training"]
    epochs = [m for m in lines if m.startswith("two-tower epochs: ") and "/3 epoch" in m]
    assert len(epochs) == model.log.epochs_run == 3
    assert "loss " in epochs[0] and "valid recall@10 " in epochs[0] and "best epoch 1" in epochs[0]
    assert lines[-1].startswith("two-tower epochs: done, 3 epoch")
    caplog.clear()
    TwoTower(dataclasses.replace(SMALL, epochs=2)).fit(catalog, split.train)  # progress off: quiet
    assert not [r for r in caplog.records if r.name == "tandem.retrieval.two_tower_training"]


def test_the_epoch_cap_follows_the_number_of_training_windows(caplog) -> None:
    # effort that grows with the data: at 10 epochs per 1,000 windows, ~240 windows get 3 epochs
    # and ~960 get 10, where patience (40 evaluations) and ``epochs`` (40) would run all 40
    catalog = _catalog()
    caplog.set_level(logging.INFO, logger="tandem.retrieval.two_tower_training")
    cfg = dataclasses.replace(SMALL, epochs=40, patience=40, epochs_per_1k_windows=10.0, min_epochs=2)
    runs = {}
    for users in (240, 960):
        split = leave_last_out(_chain_interactions(n_users=users))
        model = TwoTower(cfg).fit(catalog, split.train, valid=split.valid)
        runs[users] = model.log
    small, large = runs[240], runs[960]
    assert small.stopped == large.stopped == "epoch cap"
    assert small.epochs_run == small.max_epochs == 3 and len(small.losses) == 3
    assert large.epochs_run == large.max_epochs == 10
    assert any("at most 3 epochs for 240 training windows" in r.getMessage() for r in caplog.records)
    assert any("stopped at the data-size cap of 3 epochs" in r.getMessage() for r in caplog.records)
    # the cap is part of what a saved model says about its training
    unbounded = TwoTower(dataclasses.replace(cfg, epochs=4, epochs_per_1k_windows=None)).fit(
        catalog, leave_last_out(_chain_interactions(n_users=240)).train)
    assert unbounded.log.epochs_run == 4 and unbounded.log.stopped == "epochs"


def test_default_config_caps_a_small_shop_and_not_a_large_one() -> None:
    from tandem.retrieval.two_tower_training import max_epochs

    c = TwoTowerConfig()
    assert max_epochs(c, 2_748) == 14  # the quick-start shop: was 200 (patience stopped it at 28-31)
    assert max_epochs(c, 22_512) == 113  # Amazon Beauty stops on patience (epoch 27) well before
    assert max_epochs(c, 100) == c.min_epochs == 10
    with pytest.raises(ValueError, match="epochs_per_1k_windows"):
        TwoTowerConfig(epochs_per_1k_windows=-1)
    assert max_epochs(TwoTowerConfig(epochs_per_1k_windows=0), 2_748) == 200  # 0: no cap


def test_training_log_round_trips_and_reads_older_logs() -> None:
    """A bundle's training log (JSON of ``asdict``) reads back equal; one written before
    ``max_epochs`` and ``restarts`` existed gets their defaults."""
    import json
    from dataclasses import asdict

    from tandem.retrieval.two_tower_config import TrainingLog

    log_ = TrainingLog([(1, 0.5, 0.25), (2, 0.6, 0.3)], [2.0, 1.5], 2, 2, 3.5, "epoch cap", 2, 1)
    assert TrainingLog.from_dict(json.loads(json.dumps(asdict(log_)))) == log_
    older = {"evals": [[1, 0.5, 0.25]], "losses": [2.0], "best_epoch": 1, "epochs_run": 1, "seconds": 1.0}
    read = TrainingLog.from_dict(older)
    assert read.evals == [(1, 0.5, 0.25)] and read.stopped == "epochs"
    assert read.max_epochs is None and read.restarts == 0
    assert TrainingLog.from_dict(older, restarts=2).restarts == 2
