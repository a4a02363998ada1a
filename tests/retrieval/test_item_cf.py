"""ItemCF / UserCF against brute-force Python oracles on small seeded data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import tandem.retrieval.item_cf as item_cf
from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Catalog, Interactions, Item
from tandem.retrieval.item_cf import ItemCF, ItemCFConfig, UserCF, UserCFConfig

N_ITEMS = 30


def _data(seed: int = 0, n_users: int = 25) -> tuple[Catalog, Interactions]:
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(n_users):
        length = int(rng.integers(2, 12))
        start = int(rng.integers(0, N_ITEMS))
        # a walk that mostly steps forward, sometimes jumps or repeats an item
        seq = [start]
        for _ in range(length - 1):
            r = rng.random()
            seq.append(seq[-1] if r < 0.1 else int(rng.integers(0, N_ITEMS)) if r < 0.3 else (seq[-1] + 1) % N_ITEMS)
        t0 = int(rng.integers(0, 100 * 86_400))
        users += [u] * length
        items += seq
        ts += [t0 + 3600 * j for j in range(length)]
    perm = rng.permutation(len(users))  # file order is not time order
    catalog = Catalog.from_items(Item(f"i{i}", f"item {i}") for i in range(N_ITEMS))
    inter = Interactions([f"u{u}" for u in range(n_users)], np.array(users)[perm], np.array(items)[perm],
                         np.array(ts)[perm], np.full(len(users), 3), np.full(len(users), np.nan))
    return catalog, inter


def _sequences(inter: Interactions) -> list[list[tuple[int, int]]]:
    """Per user: distinct items with the time of their first interaction, in time order."""
    out = []
    for u in range(inter.n_users):
        rows = sorted(np.flatnonzero(inter.users == u), key=lambda r: (inter.ts[r], r))
        seen, seq = set(), []
        for r in rows:
            if int(inter.items[r]) not in seen:
                seen.add(int(inter.items[r]))
                seq.append((int(inter.items[r]), int(inter.ts[r])))
        out.append(seq)
    return out


def _oracle_transition(inter: Interactions, c: ItemCFConfig) -> np.ndarray:
    counts = np.zeros((N_ITEMS, N_ITEMS))
    newest = int(inter.ts.max())
    for seq in _sequences(inter):
        for p in range(len(seq)):
            for d in range(1, c.window + 1):
                if p + d >= len(seq):
                    break
                (a, _), (b, tb) = seq[p], seq[p + d]
                w = c.distance_decay ** (d - 1)
                if c.half_life_days is not None:
                    w *= 0.5 ** ((newest - tb) / 86_400 / c.half_life_days)
                counts[a, b] += w
                counts[b, a] += w * c.reverse_weight
    np.fill_diagonal(counts, 0)
    pop = np.bincount([i for seq in _sequences(inter) for i, _ in seq], minlength=N_ITEMS)
    counts = counts / np.maximum(pop, 1)[None, :] ** c.pop_exponent
    return counts


def _oracle_top_k(dense: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros_like(dense)
    for i, row in enumerate(dense):
        nz = [j for j in range(len(row)) if row[j] != 0]
        for j in sorted(nz, key=lambda j: (-row[j], j))[:k]:
            out[i, j] = row[j]
    return out


@pytest.mark.parametrize("config", [
    ItemCFConfig(n_neighbours=N_ITEMS),
    ItemCFConfig(window=1, reverse_weight=0.0, n_neighbours=N_ITEMS),
    ItemCFConfig(window=4, distance_decay=0.7, reverse_weight=1.0, half_life_days=20.0, pop_exponent=0.5,
                 n_neighbours=N_ITEMS),
    ItemCFConfig(window=3, n_neighbours=3),
])
def test_transition_matches_oracle(config):
    catalog, inter = _data()
    sim = ItemCF(config).fit(catalog, inter).similarity
    assert sim.dtype == np.float32 and sim.shape == (N_ITEMS, N_ITEMS)
    want = _oracle_top_k(_oracle_transition(inter, config), config.n_neighbours)
    np.testing.assert_allclose(sim.toarray(), want, rtol=1e-5, atol=1e-7)


def test_row_normalise_sums_rows_to_one():
    catalog, inter = _data()
    sim = ItemCF(ItemCFConfig(row_normalise=True, n_neighbours=5)).fit(catalog, inter).similarity.toarray()
    sums = sim.sum(axis=1)
    assert np.allclose(sums[sums > 0], 1.0, atol=1e-5) and (sim != 0).sum(axis=1).max() <= 5


@pytest.mark.parametrize("kind", ["cosine", "jaccard"])
def test_cooccurrence_matches_oracle(kind, monkeypatch):
    monkeypatch.setattr(item_cf, "_BLOCK_ROWS", 7)  # several blocks of item rows
    catalog, inter = _data(seed=1, n_users=40)
    sets = [set(np.unique(inter.items[inter.users == u]).tolist()) for u in range(inter.n_users)]
    users_of = [{u for u, s in enumerate(sets) if i in s} for i in range(N_ITEMS)]
    dense = np.zeros((N_ITEMS, N_ITEMS))
    for i in range(N_ITEMS):
        for j in range(N_ITEMS):
            both = len(users_of[i] & users_of[j])
            if i == j or both == 0:
                continue
            dense[i, j] = (both / math.sqrt(len(users_of[i]) * len(users_of[j])) if kind == "cosine"
                           else both / len(users_of[i] | users_of[j]))
    for k in (N_ITEMS, 4):
        sim = ItemCF(ItemCFConfig(similarity=kind, n_neighbours=k)).fit(catalog, inter).similarity
        np.testing.assert_allclose(sim.toarray(), _oracle_top_k(dense, k), rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def fitted() -> ItemCF:
    catalog, inter = _data()
    return ItemCF(ItemCFConfig(history_len=3, recency_decay=0.5)).fit(catalog, inter)


def test_retrieve_sums_recent_neighbour_rows(fitted):
    sim = fitted.similarity.toarray()
    history = np.array([4, 9, 4, 11, 2, 7])  # distinct, latest first: 7, 2, 11 (4 is older)
    want = 1.0 * sim[7] + 0.5 * sim[2] + 0.25 * sim[11]
    want[np.unique(history)] = 0
    got = fitted.retrieve(RetrievalRequest(history=history), 50)
    order = [j for j in sorted(range(N_ITEMS), key=lambda j: (-want[j], j)) if want[j] > 0]
    assert got.items.tolist() == order
    np.testing.assert_allclose(got.scores, want[order], rtol=1e-5)
    assert not set(got.items.tolist()) & set(history.tolist())
    top3 = fitted.retrieve(RetrievalRequest(history=history), 3)
    assert top3.items.tolist() == order[:3]


def test_score_all_matches_retrieve(fitted):
    reqs = [RetrievalRequest(history=np.array([1, 2, 3])), RetrievalRequest(), RetrievalRequest(item=5),
            RetrievalRequest(history=np.array([29, 0]))]
    dense = fitted.score_all(reqs)
    assert dense.shape == (4, N_ITEMS) and dense.dtype == np.float32
    assert not dense[1].any()
    for row, req in zip(dense, reqs, strict=True):
        got = fitted.retrieve(req, N_ITEMS)
        np.testing.assert_allclose(row[got.items], got.scores, rtol=1e-6)


def test_similar_items_and_neighbours(fitted):
    items, scores = fitted.neighbours(5)
    assert 5 not in items.tolist() and np.all(np.diff(scores) <= 0)
    got = fitted.retrieve(RetrievalRequest(item=5), 100)
    np.testing.assert_array_equal(got.items, items)
    np.testing.assert_allclose(got.scores, scores)
    assert len(fitted.retrieve(RetrievalRequest(item=10_000), 5)) == 0
    with pytest.raises(IndexError):
        fitted.neighbours(-1)


def test_unknown_or_empty_history(fitted):
    for req in (RetrievalRequest(), RetrievalRequest(history=np.array([10_000, -1])),
                RetrievalRequest(query="anything")):
        assert len(fitted.retrieve(req, 5)) == 0


def test_save_load_and_newer_format(tmp_path, fitted):
    catalog, _ = _data()
    files = fitted.save(tmp_path)
    assert {f.suffix for f in files} == {".npz", ".json"}
    loaded = ItemCF.load(tmp_path, catalog)
    assert loaded.config == fitted.config
    assert (loaded.similarity != fitted.similarity).nnz == 0
    meta = json.loads((tmp_path / "item_cf.json").read_text())
    meta["format_version"] = 99
    (tmp_path / "item_cf.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="newer"):
        ItemCF.load(tmp_path, catalog)


def test_user_cf_matches_oracle():
    catalog, inter = _data(seed=2, n_users=30)
    model = UserCF(UserCFConfig(n_neighbours=5)).fit(catalog, inter)
    sets = [set(np.unique(inter.items[inter.users == u]).tolist()) for u in range(inter.n_users)]
    history = np.array([3, 4, 5, 20])
    h = set(history.tolist())
    # user rows are L2-normalised; the request row is binary (a constant factor per request)
    sims = np.array([len(h & s) / math.sqrt(len(s)) for s in sets])
    nearest = sorted((u for u in range(len(sets)) if sims[u] > 0), key=lambda u: (-sims[u], u))[:5]
    want = np.zeros(N_ITEMS)
    for u in nearest:
        for i in sets[u]:
            want[i] += sims[u] / math.sqrt(len(sets[u]))
    want[list(h)] = 0
    got = model.retrieve(RetrievalRequest(history=history), N_ITEMS)
    order = [j for j in sorted(range(N_ITEMS), key=lambda j: (-want[j], j)) if want[j] > 0]
    assert got.items.tolist() == order
    np.testing.assert_allclose(got.scores, want[order], rtol=1e-5)
