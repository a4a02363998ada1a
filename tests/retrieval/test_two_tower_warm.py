"""Warm-starting the two-tower model: weights mapped by item id and vocabulary value onto a
changed catalog, fresh rows for what is new, a cold start for another architecture."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from tandem.retrieval.data import Catalog, Interactions, Item
from tandem.retrieval.two_tower import TwoTower, TwoTowerConfig
from tandem.retrieval.two_tower_training import _network
from tandem.retrieval.two_tower_warm import PreviousTwoTower, warm_start_state

CFG = TwoTowerConfig(dim=8, layers=1, max_len=6, n_negatives=8, batch_size=16, epochs=3, seed=1)


def _catalog(ids, brand_of=lambda i: f"b{i % 3}") -> Catalog:
    return Catalog.from_items(Item(f"i{i}", f"item {i}", category=f"C{i % 2} > S{i % 4}", brand=brand_of(i),
                                   price=float(1 + i), tags=(f"t{i % 5}",)) for i in ids)


def _events(catalog: Catalog, seed: int = 0) -> Interactions:
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(40):
        for j in rng.choice(len(catalog), 5, replace=False):
            users.append(u)
            items.append(int(j))
    n = len(users)
    return Interactions([f"u{u}" for u in range(40)], np.array(users), np.array(items),
                        1_000 + np.arange(n), np.full(n, 3), np.full(n, np.nan))


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> tuple[Catalog, TwoTower, PreviousTwoTower]:
    torch.set_num_threads(1)
    catalog = _catalog(range(30))
    text = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    model = TwoTower(CFG).fit(catalog, _events(catalog), text_vectors=text)
    folder = tmp_path_factory.mktemp("tt")
    model.save(folder)
    return catalog, model, PreviousTwoTower.read(folder, list(catalog.item_ids))


def _fresh(config: TwoTowerConfig, catalog: Catalog, text_dim: int = 4):
    text = np.random.default_rng(5).normal(size=(len(catalog), text_dim)).astype(np.float32)
    model = TwoTower(config)
    net = _network(model, catalog, text)
    return net.state_dict(), None if model.features is None else model.features.vocab


def test_known_items_and_values_copied_new_ones_fresh(previous) -> None:
    _, old_model, prev = previous
    # items 5..34: 25 known (5..29, in another order), 5 new; brand b9 is new
    catalog = _catalog([*range(34, 29, -1), *range(5, 30)], brand_of=lambda i: "b9" if i >= 30 else f"b{i % 3}")
    fresh, vocab = _fresh(CFG, catalog)
    state, report = warm_start_state(prev, CFG, catalog, fresh, vocab, 4)
    assert state is not None and report.warm and report.items_copied == 25 and report.items_new == 5
    old = old_model.net.state_dict()
    ids = state["items.ids.weight"]
    for row, item in enumerate(catalog.item_ids):
        k = int(item[1:])
        expected = old["items.ids.weight"][k + 1] if k < 30 else fresh["items.ids.weight"][row + 1]
        assert torch.equal(ids[row + 1], expected), item
    assert torch.equal(ids[0], torch.zeros_like(ids[0]))  # padding stays zero
    brands_new = vocab["brands"]
    brands_old = prev.vocab["brands"]
    for j, b in enumerate(brands_new):
        got = state["items.brand_emb.weight"][j + 1]
        want = old["items.brand_emb.weight"][brands_old.index(b) + 1] if b in brands_old else fresh["items.brand_emb.weight"][j + 1]
        assert torch.equal(got, want), b
    assert report.vocab_copied["brands"] == 3
    for name in ("user.pos.weight", "items.text_proj.weight", "user.blocks.0.qkv.weight"):
        assert torch.equal(state[name], old[name])
    assert torch.equal(state["items.brands"], fresh["items.brands"])  # the new catalog's buffers


def test_a_warm_fit_starts_from_the_mapped_weights(previous) -> None:
    _, _, prev = previous
    catalog = _catalog(range(3, 33))
    text = np.random.default_rng(5).normal(size=(len(catalog), 4)).astype(np.float32)
    fresh, vocab = _fresh(CFG, catalog)
    expected, _ = warm_start_state(prev, CFG, catalog, fresh, vocab, 4)
    model = TwoTower(CFG)
    model.warm_from = prev
    net = _network(model, catalog, text)  # what fit() trains from
    assert all(torch.equal(net.state_dict()[k], v) for k, v in expected.items())
    model = TwoTower(dataclasses.replace(CFG, epochs=1))
    model.warm_from = prev
    model.fit(catalog, _events(catalog, 1), text_vectors=text)
    assert model.warm_report.warm and model.warm_report.items_new == 3
    assert model.encode_items().shape == (30, 8)


@pytest.mark.parametrize("change, words", [({"dim": 16}, "dim 8 -> 16"), ({"user_encoder": "gru"}, "user_encoder"),
                                           ({"use_item_features": False}, "use_item_features")])
def test_another_architecture_is_a_cold_start(previous, change, words) -> None:
    catalog, _, prev = previous
    cfg = dataclasses.replace(CFG, **change)
    fresh, vocab = _fresh(cfg, catalog)
    state, report = warm_start_state(prev, cfg, catalog, fresh, vocab, 4)
    assert state is None and not report.warm and words in report.reason


def test_another_text_width_is_a_cold_start(previous) -> None:
    catalog, _, prev = previous
    fresh, vocab = _fresh(CFG, catalog, text_dim=6)
    state, report = warm_start_state(prev, CFG, catalog, fresh, vocab, 6)
    assert state is None and "text vectors' width changed (4 -> 6)" in report.reason


@pytest.mark.slow  # starts worker processes: 30-140 s on a busy 2-core machine
@pytest.mark.parametrize("procs", [1, 2])
def test_training_starts_from_the_warm_state_in_one_process_or_several(previous, procs) -> None:
    _, old_model, prev = previous
    catalog = _catalog(range(3, 33))
    text = np.random.default_rng(5).normal(size=(len(catalog), 4)).astype(np.float32)
    # a learning rate of ~0: the trained weights are the weights training started from
    cfg = dataclasses.replace(CFG, epochs=1, lr=1e-12, train_procs=procs, batch_size=16)
    model = TwoTower(cfg)
    model.warm_from = prev
    model.fit(catalog, _events(catalog, 1), text_vectors=text)
    got = model.net.state_dict()["items.ids.weight"]
    old = old_model.net.state_dict()["items.ids.weight"]
    known = [i for i, item in enumerate(catalog.item_ids) if int(item[1:]) < 30]
    torch.testing.assert_close(got[[i + 1 for i in known]], old[[int(catalog.item_ids[i][1:]) + 1 for i in known]],
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(model.net.state_dict()["user.pos.weight"], old_model.net.state_dict()["user.pos.weight"],
                               atol=1e-6, rtol=0)
