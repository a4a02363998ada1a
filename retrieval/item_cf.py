"""Neighbourhood collaborative filtering: item-to-item (``ItemCF``) and user-to-user (``UserCF``).

``ItemCF`` learns a sparse item-item similarity from co-interactions, one of:

* ``transition``: directed counts of "item i, then item j within ``window`` steps" in each user's
  time-ordered sequence of distinct items, a pair ``d`` steps apart weighted ``distance_decay **
  (d - 1)`` and, with ``half_life_days``, halved per half-life of age; the reverse direction
  counts ``reverse_weight`` as much. Counts are divided by ``count(j) ** pop_exponent`` to damp
  popular targets and, with ``row_normalise``, each row is scaled to sum 1 (so every history item
  casts one vote);
* ``cosine``: ``|U_i & U_j| / sqrt(|U_i| |U_j|)`` over the user sets of the two items;
* ``jaccard``: ``|U_i & U_j| / |U_i | U_j|``.

Only each item's ``n_neighbours`` best neighbours are kept (row ``i`` of :attr:`ItemCF.similarity`).
The products run in scipy.sparse over blocks of item rows; no Python loop touches a pair.

A recommendation sums the neighbour rows of the user's last ``history_len`` distinct items, the
latest weighted 1 and each older one ``recency_decay`` times the next. A SimilarItems request
(``request.item``) uses that item's row. History items are never returned.

The defaults were chosen on the validation stage of a leave-last-out split (see
``benchmarks/item_cf_variants.py`` for the table).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np
import scipy.sparse as sp

from tandem.retrieval.base import (
    Candidates,
    IdSet,
    RetrievalRequest,
    ScratchTables,
    read_source_meta,
)
from tandem.retrieval.data import Catalog, Interactions
from tandem.retrieval.item_ranks import rank_items

__all__ = ["CF_SIMILARITIES", "ItemCFConfig", "ItemCF", "UserCFConfig", "UserCF"]

#: Item-item similarity kinds :attr:`ItemCFConfig.similarity` accepts.
CF_SIMILARITIES: tuple[str, ...] = ("transition", "cosine", "jaccard")

_FORMAT_VERSION = 1
_SECONDS_PER_DAY = 86_400.0
_BLOCK_ROWS = 2048


def _check_items(catalog: Catalog, interactions: Interactions) -> None:
    if len(interactions) and int(interactions.items.max()) >= len(catalog):
        raise ValueError(f"interactions refer to item {int(interactions.items.max())} but the catalog has "
                         f"{len(catalog)} items; build both from the same cleaned data set")


def _distinct_sequences(interactions: Interactions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each user's distinct items in order of first interaction.

    Returns ``users`` int64, ``items`` int64 and ``ts`` int64 (time of the first interaction),
    all (m,), sorted by (user, first time).
    """
    order = interactions.chronological_order()
    users = interactions.users[order].astype(np.int64)
    items = interactions.items[order].astype(np.int64)
    ts = interactions.ts[order]
    key = users * (int(items.max()) + 1 if items.size else 1) + items
    _, first = np.unique(key, return_index=True)
    first.sort()
    return users[first], items[first], ts[first]


def _top_k_rows(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keep the ``k`` largest entries of every row of ``m`` (ties: lower column first).

    Entries are ranked on their float32 values, what the similarity stores: a row summed in
    another order (the live update of :mod:`tandem.retrieval.item_cf_live`) differs in the last
    float64 bits only, and must keep the same neighbours."""
    m = m.tocsr()
    m.eliminate_zeros()
    m.sort_indices()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((m.indices, -m.data.astype(np.float32), rows))
    rank = np.arange(order.size) - m.indptr[rows[order]]
    keep = order[rank < k]
    keep.sort()  # back to (row, column) order
    out = sp.csr_matrix((m.data[keep], m.indices[keep], np.concatenate(
        [[0], np.cumsum(np.bincount(rows[keep], minlength=m.shape[0]))])), shape=m.shape)
    return out


def _rows_by_blocks(left: sp.csr_matrix, right: sp.csc_matrix | sp.csr_matrix, finish: Any, k: int) -> sp.csr_matrix:
    """``top_k(finish(left[block] @ right, block))`` for blocks of rows, stacked."""
    blocks = []
    for lo in range(0, left.shape[0], _BLOCK_ROWS):
        hi = min(lo + _BLOCK_ROWS, left.shape[0])
        prod = (left[lo:hi] @ right).tocsr()
        blocks.append(_top_k_rows(finish(prod, lo, hi), k))
    if not blocks:
        return sp.csr_matrix((left.shape[0], right.shape[1]), dtype=np.float32)
    return sp.vstack(blocks, format="csr")


def _drop_diagonal(m: sp.csr_matrix, lo: int) -> sp.csr_matrix:
    m = m.tocoo()
    keep = m.row + lo != m.col
    return sp.csr_matrix((m.data[keep], (m.row[keep], m.col[keep])), shape=m.shape)


def _recency_weights(n: int, decay: float) -> np.ndarray:
    """float64 (n,): ``decay ** age`` for items oldest first (the last one has age 0)."""
    return decay ** np.arange(n - 1, -1, -1, dtype=np.float64)


def _recent_distinct(history: np.ndarray, n: int) -> np.ndarray:
    """The last ``n`` distinct items of ``history`` (int64), oldest first, each at its latest position."""
    h = np.asarray(history, dtype=np.int64)[::-1]
    _, first = np.unique(h, return_index=True)
    return h[np.sort(first)][:n][::-1]


@nb.njit(nogil=True, cache=True)
def _best_k(items, scores, excluded, k):  # pragma: no cover - compiled
    """The best ``k`` of the positive float32 ``scores`` whose items are not ``excluded`` (an
    IdSet table), best first, ties to the lower item. Sorted on one int64 key per item: the
    bits of a positive float32 order as its value does."""
    n_table = excluded.shape[0] - 1
    bits = scores.view(np.int32)
    keys = np.empty(items.shape[0], dtype=np.int64)
    n = 0
    for j in range(items.shape[0]):
        i = items[j]
        if scores[j] > 0 and not (0 <= i < n_table and excluded[i]):
            keys[n] = (np.int64(0x7FFFFFFF - bits[j]) << 32) | i
            n += 1
    keys = keys[:n]
    if n > k:
        keys = np.partition(keys, k - 1)[:k]
    keys = np.sort(keys)
    out_items = keys & 0xFFFFFFFF
    out_bits = (0x7FFFFFFF - (keys >> 32)).astype(np.int32)
    return out_items, out_bits.view(np.float32)


@nb.njit(nogil=True, cache=True)
def _gather_best_k(positions, indptr, indices, data, rows, weights, excluded, k):  # pragma: no cover
    """``weights @ sim[rows]`` over its non-zero columns (float64, summed row after row in the
    order given), then :func:`_best_k` of it as float32. ``positions`` (item -> column, all -1)
    is left all -1 again."""
    total = 0
    for r in range(rows.shape[0]):
        total += indptr[rows[r] + 1] - indptr[rows[r]]
    items = np.empty(total, dtype=np.int64)
    sums = np.zeros(total, dtype=np.float64)
    m = 0
    for r in range(rows.shape[0]):
        w = weights[r]
        for e in range(indptr[rows[r]], indptr[rows[r] + 1]):
            c = indices[e]
            col = positions[c]
            if col < 0:
                col = m
                positions[c] = m
                items[m] = c
                m += 1
            sums[col] += data[e] * w
    for c in range(m):
        positions[items[c]] = -1
    return _best_k(items[:m], sums[:m].astype(np.float32), excluded, k)


def _top_k_scored(items: np.ndarray, scores: np.ndarray, k: int, exclude: IdSet, source: str) -> Candidates:
    """Best ``k`` positive ``scores`` (ties: lower item first), ``exclude`` left out."""
    if k <= 0:
        return Candidates.empty(source)
    best, best_scores = _best_k(np.ascontiguousarray(items, dtype=np.int64),
                                np.ascontiguousarray(scores, dtype=np.float32), exclude.table, k)
    return Candidates(best, best_scores, source)


def _positive_ranks(scores: np.ndarray, items: np.ndarray, request: RetrievalRequest) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rank_items` of the positive ``scores`` (retrieve never returns the others)."""
    scores = np.where(scores > 0, scores, -np.inf).astype(np.float32)
    return rank_items(scores, items, request.excluded(scores.shape[0]))


@dataclass(frozen=True)
class ItemCFConfig:
    """See the module docstring for what each field does."""

    similarity: str = "transition"
    window: int = 20
    distance_decay: float = 0.8
    reverse_weight: float = 0.25
    half_life_days: float | None = None
    pop_exponent: float = 0.0
    row_normalise: bool = False
    n_neighbours: int = 200
    history_len: int = 10
    recency_decay: float = 0.5

    def __post_init__(self) -> None:
        if self.similarity not in CF_SIMILARITIES:
            raise ValueError(f"ItemCFConfig.similarity must be one of {', '.join(CF_SIMILARITIES)}; "
                             f"got {self.similarity!r}")
        for name in ("window", "n_neighbours", "history_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"ItemCFConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("distance_decay", "recency_decay"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"ItemCFConfig.{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.reverse_weight <= 1.0:
            raise ValueError(f"ItemCFConfig.reverse_weight must be in [0, 1], got {self.reverse_weight}")
        if not 0.0 <= self.pop_exponent <= 1.0:
            raise ValueError(f"ItemCFConfig.pop_exponent must be in [0, 1], got {self.pop_exponent}")
        h = self.half_life_days
        if h is not None and not (math.isfinite(h) and h > 0):
            raise ValueError(f"ItemCFConfig.half_life_days must be a positive number of days or None, got {h!r}")


class ItemCF:
    """Candidate source ``"item_cf"``.

    After :meth:`fit`, :attr:`similarity` is a float32 csr (n_items, n_items): row ``i`` holds
    item ``i``'s kept neighbours and their similarity (what the ranker's features read too).
    """

    name = "item_cf"

    def __init__(self, config: ItemCFConfig | None = None) -> None:
        self.config = config or ItemCFConfig()
        self.similarity: sp.csr_matrix | None = None
        self._scratch: ScratchTables | None = None
        #: the live updater keeping :attr:`similarity` current (retrieval/item_cf_live.py), once made
        self.live: Any = None

    @property
    def n_items(self) -> int:
        return int(self._require().shape[0])

    @property
    def _positions(self) -> ScratchTables:
        """Item -> column maps for the compiled gather, sized to the fitted catalog."""
        n = self.n_items
        if self._scratch is None or self._scratch.n != n:
            self._scratch = ScratchTables(n, np.int32, -1)
        return self._scratch

    def _require(self) -> sp.csr_matrix:
        if self.similarity is None:
            raise RuntimeError("ItemCF is not fitted; call fit() or load() first")
        return self.similarity

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, catalog: Catalog, interactions: Interactions) -> ItemCF:
        """Learn the item-item similarity from ``interactions`` over ``catalog``'s items."""
        _check_items(catalog, interactions)
        n = len(catalog)
        c = self.config
        if len(interactions) == 0:
            self.similarity = sp.csr_matrix((n, n), dtype=np.float32)
            return self
        if c.similarity == "transition":
            sim = self._transition(interactions, n)
        else:
            sim = self._cooccurrence(interactions, n)
        self.similarity = sim.astype(np.float32).tocsr()
        self.similarity.sort_indices()
        return self

    def _transition(self, interactions: Interactions, n: int) -> sp.csr_matrix:
        c = self.config
        users, items, ts = _distinct_sequences(interactions)
        newest = int(interactions.ts.max())
        src, dst, wts = [], [], []
        for d in range(1, c.window + 1):  # a loop over distances, each vectorised over all pairs
            same = users[:-d] == users[d:] if users.size > d else np.zeros(0, dtype=bool)
            a, b = items[:-d][same], items[d:][same]
            w = np.full(a.shape, c.distance_decay ** (d - 1))
            if c.half_life_days is not None:
                age = (newest - ts[d:][same]) / _SECONDS_PER_DAY
                w = w * 0.5 ** (age / c.half_life_days)
            src.append(a)
            dst.append(b)
            wts.append(w)
            if c.reverse_weight > 0:
                src.append(b)
                dst.append(a)
                wts.append(w * c.reverse_weight)
        counts = sp.csr_matrix((np.concatenate(wts), (np.concatenate(src), np.concatenate(dst))),
                               shape=(n, n), dtype=np.float64)  # duplicates are summed
        counts.setdiag(0)
        counts.eliminate_zeros()
        if c.pop_exponent > 0:
            pop = np.bincount(items, minlength=n).astype(np.float64)
            counts = counts @ sp.diags(1.0 / np.maximum(pop, 1.0) ** c.pop_exponent)
        top = _top_k_rows(counts, c.n_neighbours)
        if c.row_normalise:
            sums = np.asarray(top.sum(axis=1)).ravel()
            top = sp.diags(1.0 / np.where(sums > 0, sums, 1.0)) @ top
        return top.tocsr()

    def _cooccurrence(self, interactions: Interactions, n: int) -> sp.csr_matrix:
        c = self.config
        users, items, _ = _distinct_sequences(interactions)
        x = sp.csr_matrix((np.ones(items.size), (users, items)), shape=(interactions.n_users, n))
        xt = x.T.tocsr()  # (n_items, n_users)
        deg = np.asarray(x.sum(axis=0)).ravel()
        kind = c.similarity

        def finish(prod: sp.csr_matrix, lo: int, hi: int) -> sp.csr_matrix:
            prod = _drop_diagonal(prod, lo).tocoo()
            di, dj = deg[prod.row + lo], deg[prod.col]
            if kind == "cosine":
                val = prod.data / np.sqrt(di * dj)
            else:
                val = prod.data / (di + dj - prod.data)
            return sp.csr_matrix((val, (prod.row, prod.col)), shape=prod.shape)

        return _rows_by_blocks(xt, x.tocsc(), finish, c.n_neighbours)

    # -- answering -------------------------------------------------------------------------
    def neighbours(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Item ``item``'s kept neighbours: ``items`` int64 (m,) and ``scores`` float32 (m,), best first."""
        sim = self._require()
        if not 0 <= item < sim.shape[0]:
            raise IndexError(f"item {item} is not in the catalog of {sim.shape[0]} items")
        lo, hi = sim.indptr[item], sim.indptr[item + 1]
        items, scores = sim.indices[lo:hi].astype(np.int64), sim.data[lo:hi].astype(np.float32)
        order = np.lexsort((items, -scores))
        return items[order], scores[order]

    def _seeds(self, request: RetrievalRequest) -> tuple[np.ndarray, np.ndarray]:
        """Seed items int64 (s,) and their weights float64 (s,) for a request."""
        n = self.n_items
        if request.item is not None:
            if 0 <= request.item < n:
                return np.array([request.item], dtype=np.int64), np.ones(1)
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        hist = np.asarray(request.history, dtype=np.int64)
        hist = hist[(hist >= 0) & (hist < n)]
        seeds = _recent_distinct(hist, self.config.history_len)
        return seeds, _recency_weights(seeds.size, self.config.recency_decay)

    def _query_matrix(self, requests: Sequence[RetrievalRequest]) -> sp.csr_matrix:
        """float64 csr (b, n_items): each request's seed weights."""
        rows, cols, vals = [], [], []
        for r, req in enumerate(requests):
            seeds, w = self._seeds(req)
            rows.append(np.full(seeds.size, r))
            cols.append(seeds)
            vals.append(w)
        if not requests:
            return sp.csr_matrix((0, self.n_items))
        return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(len(requests), self.n_items))

    def retrieve(self, request: RetrievalRequest, k: int) -> Candidates:
        """Up to ``k`` items scored from the request's seeds (see the module docstring); empty
        when there is no known seed."""
        sim = self._require()
        if k <= 0:
            return Candidates.empty(self.name)
        seeds, weights = self._seeds(request)
        if seeds.size == 0:
            return Candidates.empty(self.name)
        order = np.argsort(seeds, kind="stable")  # sum in row order, as ``q @ sim`` does in score_all
        with self._positions.borrow() as positions:
            items, scores = _gather_best_k(positions, sim.indptr, sim.indices, sim.data, seeds[order],
                                           weights[order].astype(np.float64), request.excluded(sim.shape[0]).table, k)
        return Candidates(items, scores, self.name)

    def score_all(self, requests: Sequence[RetrievalRequest]) -> np.ndarray:
        """float32 (b, n_items): every item's score for each request (0 where unrelated; history
        items are not masked, so pass the histories to ``top_k_excluding``)."""
        q = self._query_matrix(requests)
        return np.asarray((q @ self._require()).todense(), dtype=np.float32).reshape(len(requests), -1)

    def score_items(self, request: RetrievalRequest, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``items``' scores and the ranks :meth:`retrieve` would give them (:class:`ItemScorer`);
        NaN / 0 where unrelated to the seeds, and for the history and the request's item."""
        return _positive_ranks(self.score_all([request])[0], items, request)

    # -- persistence -----------------------------------------------------------------------
    def save(self, folder: Path) -> list[Path]:
        """Write ``similarity.npz`` (scipy.sparse.save_npz) and ``item_cf.json`` (config, sizes)."""
        sim = self._require()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        npz = folder / "similarity.npz"
        sp.save_npz(npz, sim)
        meta = folder / "item_cf.json"
        meta.write_text(json.dumps({"format_version": _FORMAT_VERSION, "n_items": int(sim.shape[0]),
                                    "nnz": int(sim.nnz), "config": asdict(self.config)}, indent=2))
        return [npz, meta]

    @classmethod
    def load(cls, folder: Path, catalog: Catalog) -> ItemCF:
        """Read back what :meth:`save` wrote, checked against ``catalog``'s size."""
        folder = Path(folder)
        meta = read_source_meta(folder / "item_cf.json", "ItemCF", _FORMAT_VERSION, catalog)
        source = cls(ItemCFConfig(**meta["config"]))
        sim = sp.load_npz(folder / "similarity.npz")  # npz arrays only; never unpickles
        source.similarity = sim.astype(np.float32).tocsr()
        return source


@dataclass(frozen=True)
class UserCFConfig:
    """``n_neighbours`` most similar training users (cosine over distinct-item sets) vote for
    their items with their similarity raised to ``similarity_power``; the request user is
    described by their last ``history_len`` distinct items."""

    n_neighbours: int = 50
    similarity_power: float = 1.0
    history_len: int = 50

    def __post_init__(self) -> None:
        for name in ("n_neighbours", "history_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"UserCFConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.similarity_power <= 10.0:
            raise ValueError(f"UserCFConfig.similarity_power must be in (0, 10], got {self.similarity_power}")


class UserCF:
    """Candidate source ``"user_cf"``: items of the users whose histories resemble the request's.

    After :meth:`fit`, ``users`` is a float32 csr (n_users, n_items) of L2-normalised distinct-item
    rows; ``item_users`` its transpose (for finding neighbours through shared items).
    """

    name = "user_cf"

    def __init__(self, config: UserCFConfig | None = None) -> None:
        self.config = config or UserCFConfig()
        self.users: sp.csr_matrix | None = None

    def _require(self) -> sp.csr_matrix:
        if self.users is None:
            raise RuntimeError("UserCF is not fitted; call fit() or load() first")
        return self.users

    def fit(self, catalog: Catalog, interactions: Interactions) -> UserCF:
        """Store each training user's distinct items (normalised rows)."""
        _check_items(catalog, interactions)
        n = len(catalog)
        if len(interactions) == 0:
            self._set(sp.csr_matrix((0, n), dtype=np.float32))
            return self
        users, items, _ = _distinct_sequences(interactions)
        x = sp.csr_matrix((np.ones(items.size, dtype=np.float32), (users, items)),
                          shape=(interactions.n_users, n))
        norms = np.sqrt(np.asarray(x.sum(axis=1)).ravel())
        x = sp.diags(1.0 / np.where(norms > 0, norms, 1.0)).astype(np.float32) @ x
        self._set(x)
        return self

    def _set(self, x: sp.csr_matrix) -> None:
        self.users = x.astype(np.float32).tocsr()
        self._item_users = self.users.T.tocsr()

    def _scores(self, requests: Sequence[RetrievalRequest]) -> sp.csr_matrix:
        x = self._require()
        n = x.shape[1]
        rows, cols = [], []
        for r, req in enumerate(requests):
            hist = np.asarray(req.history, dtype=np.int64)
            if req.item is not None:  # SimilarItems: the users of that one item vote
                hist = np.array([req.item], dtype=np.int64)
            hist = _recent_distinct(hist[(hist >= 0) & (hist < n)], self.config.history_len)
            rows.append(np.full(hist.size, r))
            cols.append(hist)
        q = sp.csr_matrix((np.ones(sum(c.size for c in cols), dtype=np.float32),
                           (np.concatenate(rows) if rows else [], np.concatenate(cols) if cols else [])),
                          shape=(len(requests), n))
        sims = _top_k_rows((q @ self._item_users).tocsr(), self.config.n_neighbours)  # (b, n_users)
        if self.config.similarity_power != 1.0:
            sims.data = sims.data ** self.config.similarity_power
        return (sims @ x).tocsr()

    def retrieve(self, request: RetrievalRequest, k: int) -> Candidates:
        """Up to ``k`` items from the nearest users (to the history, or with ``request.item`` to that
        item's users); empty without a known item. History and ``request.item`` are left out."""
        if k <= 0:
            return Candidates.empty(self.name)
        row = self._scores([request])
        return _top_k_scored(row.indices.astype(np.int64), row.data, k, request.excluded(row.shape[1]), self.name)

    def score_all(self, requests: Sequence[RetrievalRequest]) -> np.ndarray:
        """float32 (b, n_items) scores, history not masked (see :meth:`ItemCF.score_all`)."""
        return np.asarray(self._scores(requests).todense(), dtype=np.float32).reshape(len(requests), -1)

    def score_items(self, request: RetrievalRequest, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`ItemCF.score_items`, from the nearest users' scores."""
        return _positive_ranks(self.score_all([request])[0], items, request)

    def save(self, folder: Path) -> list[Path]:
        """Write ``users.npz`` and ``user_cf.json``."""
        x = self._require()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        npz = folder / "users.npz"
        sp.save_npz(npz, x)
        meta = folder / "user_cf.json"
        meta.write_text(json.dumps({"format_version": _FORMAT_VERSION, "n_items": int(x.shape[1]),
                                    "n_users": int(x.shape[0]), "config": asdict(self.config)}, indent=2))
        return [npz, meta]

    @classmethod
    def load(cls, folder: Path, catalog: Catalog) -> UserCF:
        """Read back what :meth:`save` wrote, checked against ``catalog``'s size."""
        folder = Path(folder)
        meta = read_source_meta(folder / "user_cf.json", "UserCF", _FORMAT_VERSION, catalog)
        source = cls(UserCFConfig(**meta["config"]))
        source._set(sp.load_npz(folder / "users.npz"))
        return source
