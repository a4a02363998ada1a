"""The synthetic shop's shoppers: users with latent tastes, sessions through a funnel, and bots.

A user has three preferred leaf categories (and explores others now and then), a favourite brand
slot, a price tier and a mix of how they pick items (by popularity, by brand, by price tier).
Users come back in sessions spread over the event window. A session opens on an anchor leaf, views
a few items there and may go down the funnel on one of them: click, cart, purchase, and after a
purchase sometimes a rating. After a purchase the shopper often goes on to a complementary leaf
(the phone, then its case) in the same session, and the next session often opens on one; this
is the order-aware signal sequence models should find.

Within a user, timestamps strictly increase (sessions sit in disjoint time slots, events in a
session are at least a second apart), so the simulation never makes an exact duplicate event:
every duplicate in the output is injected dirt. Items are only drawn once released.

Everything is vectorised over a chunk of users; :meth:`ShopSimulator.users` returns one
:class:`EventChunk` per call so the caller can stream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tandem.index_builder.synthetic_catalog import N_TIERS, ItemSampler, SyntheticCatalog
from tandem.index_builder.synthetic_vocab import BRANDS_PER_TOP, Vocabulary
from tandem.retrieval.data import EVENT_CODE

__all__ = ["EventChunk", "ShopSimulator", "SESSION_MAX_SECONDS"]

#: No session lasts longer than this (the funnel has at most 17 events, gaps at most 281 s).
SESSION_MAX_SECONDS = 2 * 3600
_SLOT_MIN = 2 * SESSION_MAX_SECONDS
_ACTIVITY_SIGMA = 0.9
_PREF_SHARE = np.array([0.55, 0.30, 0.15])
_EXPLORE = 0.15
_VIEW_STOP = 0.45          # geometric number of views per session (mean ~2.2), at most _MAX_VIEWS
_MAX_VIEWS = 8
_P_CLICK, _P_CART, _P_BUY, _P_RATE = 0.45, 0.35, 0.60, 0.20
_P_COMP_NOW, _P_COMP_NEXT = 0.70, 0.50
_P_COMP_TWO_VIEWS, _P_COMP_CLICK, _P_COMP_CART, _P_COMP_BUY = 0.40, 0.60, 0.50, 0.70
_MODE_PRIOR = (3.0, 1.5, 1.5)  # popularity, brand, price tier
_RATING_P = np.array([0.05, 0.07, 0.15, 0.33, 0.40])
_BOT_EVENTS = (1200, 3000)
_BOT_CLICK = 0.15

_VIEW, _CLICK, _CART, _BUY, _RATE = (EVENT_CODE[e] for e in ("view", "click", "cart", "purchase", "rate"))
# event code of each block of a session, in order (see ShopSimulator.users)
_BLOCK_EVENT = np.array([_VIEW, _CLICK, _CART, _BUY, _RATE, _VIEW, _CLICK, _CART, _BUY], dtype=np.int8)


@dataclass
class EventChunk:
    """Events of a group of users; arrays of shape (m,).

    ``users`` int64 user index, ``items`` int64 item index, ``ts`` int64 epoch seconds,
    ``events`` int8 :data:`~retrieval.data.EVENT_CODE`, ``values`` float32 (NaN when absent).
    """

    users: np.ndarray
    items: np.ndarray
    ts: np.ndarray
    events: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def take(self, rows: np.ndarray) -> EventChunk:
        return EventChunk(self.users[rows], self.items[rows], self.ts[rows], self.events[rows], self.values[rows])

    @staticmethod
    def concat(chunks: list[EventChunk]) -> EventChunk:
        return EventChunk(*(np.concatenate([getattr(c, f) for c in chunks])
                            for f in ("users", "items", "ts", "events", "values")))


class ShopSimulator:
    """Simulates users and bots on a catalog over the window ``[start, end)`` (epoch seconds).

    ``events_per_user`` is the target mean number of events of an ordinary user.
    """

    def __init__(self, catalog: SyntheticCatalog, vocab: Vocabulary, start: int, end: int,
                 events_per_user: float) -> None:
        if end - start < 2 * _SLOT_MIN:
            raise ValueError(f"days: the event window must be at least {2 * _SLOT_MIN / 86400:.2f} days")
        self.catalog, self.start, self.end = catalog, start, end
        leaf = catalog.leaf.astype(np.int64)
        self._leaf = ItemSampler(leaf, catalog.release, catalog.weight)
        self._brand = ItemSampler(leaf * BRANDS_PER_TOP + catalog.brand_local, catalog.release, catalog.weight)
        self._tier = ItemSampler(leaf * N_TIERS + catalog.tier, catalog.release, catalog.weight)
        n_leaves = vocab.n_leaves
        counts = np.bincount(leaf, minlength=n_leaves).astype(np.float64)
        self.leaf_p = counts / counts.sum()
        self.comp_n = np.array([len(c) for c in vocab.complements], dtype=np.int64)
        self.comp = np.zeros((n_leaves, max(1, int(self.comp_n.max()))), dtype=np.int64)
        for a, targets in enumerate(vocab.complements):
            self.comp[a, : len(targets)] = targets
        self._by_release = np.argsort(catalog.release, kind="stable")
        self._release_sorted = catalog.release[self._by_release]
        # expected events per session, to turn events_per_user into a number of sessions
        views = sum((1 - _VIEW_STOP) ** (k - 1) for k in range(1, _MAX_VIEWS + 1))
        buy = _P_CLICK * _P_CART * _P_BUY
        comp = buy * _P_COMP_NOW * float(self.leaf_p @ (self.comp_n > 0))
        comp_events = 1 + _P_COMP_TWO_VIEWS + _P_COMP_CLICK * (1 + _P_COMP_CART * (1 + _P_COMP_BUY))
        self.events_per_session = (views + _P_CLICK * (1 + _P_CART * (1 + _P_BUY * (1 + _P_RATE)))
                                   + comp * comp_events)
        self.mean_sessions = max(events_per_user / self.events_per_session, 1.0)
        self.max_sessions = (end - start) // _SLOT_MIN

    # ------------------------------------------------------------------------------------------

    def _complement(self, rng: np.random.Generator, leaf: np.ndarray) -> np.ndarray:
        """A random complement leaf of each leaf (the leaf itself where it has none)."""
        k = (rng.random(len(leaf)) * np.maximum(self.comp_n[leaf], 1)).astype(np.int64)
        return np.where(self.comp_n[leaf] > 0, self.comp[leaf, k], leaf)

    def _draw(self, rng: np.random.Generator, leaf: np.ndarray, t: np.ndarray, mode: np.ndarray,
              brand_slot: np.ndarray, tier: np.ndarray) -> np.ndarray:
        """Items of ``leaf`` released by ``t``; mode 0 popularity, 1 brand slot, 2 price tier."""
        u = rng.random(len(leaf))
        out = np.full(len(leaf), -1, dtype=np.int64)
        for m, sampler, group in ((1, self._brand, leaf * BRANDS_PER_TOP + brand_slot),
                                  (2, self._tier, leaf * N_TIERS + tier)):
            rows = np.flatnonzero(mode == m)
            out[rows] = sampler.draw(group[rows], t[rows], u[rows])
        rows = np.flatnonzero(out < 0)  # popularity mode, and groups with nothing released yet
        out[rows] = self._leaf.draw(leaf[rows], t[rows], u[rows])
        return out

    def users(self, rng: np.random.Generator, first: int, count: int) -> EventChunk:
        """Events of users ``first .. first + count - 1``, each user's in time order."""
        n = count
        span = self.end - self.start
        act = rng.lognormal(-0.5 * _ACTIVITY_SIGMA**2, _ACTIVITY_SIGMA, n)
        n_sess = np.minimum(1 + rng.poisson(np.maximum(act * self.mean_sessions - 1, 0)), self.max_sessions)
        pref = rng.choice(len(self.leaf_p), (n, 3), p=self.leaf_p)
        brand_slot = rng.integers(0, BRANDS_PER_TOP, n)
        tier_pref = rng.integers(0, N_TIERS, n)
        mode_cum = np.cumsum(rng.dirichlet(_MODE_PRIOR, n), axis=1)
        join = self.start + (rng.random(n) * np.maximum(span - n_sess * _SLOT_MIN, 0)).astype(np.int64)
        slot = (self.end - join) // n_sess  # >= _SLOT_MIN

        total = int(n_sess.sum())
        su = np.repeat(np.arange(n), n_sess)  # session -> local user
        s_first = np.concatenate([[0], np.cumsum(n_sess)[:-1]])
        rank = np.arange(total) - s_first[su]
        t0 = join[su] + rank * slot[su] + (rng.random(total) * (slot[su] - SESSION_MAX_SECONDS)).astype(np.int64)

        pick = np.minimum((rng.random(total)[:, None] > np.cumsum(_PREF_SHARE)[None, :]).sum(1), 2)
        anchor = np.where(rng.random(total) < _EXPLORE, rng.choice(len(self.leaf_p), total, p=self.leaf_p),
                          pref[su, pick])
        n_views = np.minimum(rng.geometric(_VIEW_STOP, total), _MAX_VIEWS)
        click = rng.random(total) < _P_CLICK
        cart = click & (rng.random(total) < _P_CART)
        buy = cart & (rng.random(total) < _P_BUY)
        rate = buy & (rng.random(total) < _P_RATE)
        # the session after a purchase often opens on a complement of what was bought
        prev = np.arange(total) - 1
        follow = (rank > 0) & buy[np.maximum(prev, 0)] & (rng.random(total) < _P_COMP_NEXT)
        follow &= self.comp_n[anchor[np.maximum(prev, 0)]] > 0
        anchor = np.where(follow, self._complement(rng, anchor[np.maximum(prev, 0)]), anchor)
        comp_on = buy & (self.comp_n[anchor] > 0) & (rng.random(total) < _P_COMP_NOW)
        comp_leaf = self._complement(rng, anchor)
        c_views = comp_on * (1 + (rng.random(total) < _P_COMP_TWO_VIEWS))
        c_click = comp_on & (rng.random(total) < _P_COMP_CLICK)
        c_cart = c_click & (rng.random(total) < _P_COMP_CART)
        c_buy = c_cart & (rng.random(total) < _P_COMP_BUY)

        blocks = np.stack([n_views, click, cart, buy, rate, c_views, c_click, c_cart, c_buy], axis=1).astype(np.int64)
        bounds = np.cumsum(blocks, axis=1)  # (total, 9)
        n_ev = bounds[:, -1]
        E = int(n_ev.sum())
        sess = np.repeat(np.arange(total), n_ev)
        e_first = np.concatenate([[0], np.cumsum(n_ev)[:-1]])
        pos = np.arange(E) - e_first[sess]
        block = (pos[:, None] >= bounds[sess]).sum(axis=1)
        events = _BLOCK_EVENT[block]

        gaps = 1 + np.minimum(rng.exponential(40.0, E), 280).astype(np.int64)
        gaps[e_first] = 0
        csum = np.cumsum(gaps)
        ts = t0[sess] + csum - csum[e_first][sess]

        user = su[sess]
        mode = (rng.random(E)[:, None] > mode_cum[user]).sum(axis=1)
        mode = np.minimum(mode, 2)
        items = np.full(E, -1, dtype=np.int64)
        view = (block == 0) | (block == 5)
        leaf = np.where(block == 0, anchor[sess], comp_leaf[sess])
        rows = np.flatnonzero(view)
        items[rows] = self._draw(rng, leaf[rows], t0[sess[rows]], mode[rows], brand_slot[user[rows]],
                                 tier_pref[user[rows]])
        # the funnel follows one viewed item: a random one of the anchor views, the first comp view
        chosen = e_first + (rng.random(total) * n_views).astype(np.int64)
        main = (block >= 1) & (block <= 4)
        items[main] = items[chosen[sess[main]]]
        comp_follow = block >= 6
        items[comp_follow] = items[(e_first + bounds[:, 4])[sess[comp_follow]]]

        values = np.full(E, np.nan, dtype=np.float32)
        r = events == _RATE
        values[r] = rng.choice(5, int(r.sum()), p=_RATING_P) + 1.0
        return EventChunk((first + user).astype(np.int64), items, ts.astype(np.int64), events, values)

    def bots(self, rng: np.random.Generator, first: int, count: int) -> EventChunk:
        """Events of ``count`` bots (users ``first ..``): thousands of views and clicks a second or
        few apart on items drawn uniformly from those released, within a few hours."""
        n_ev = rng.integers(_BOT_EVENTS[0], _BOT_EVENTS[1] + 1, count)
        t0 = rng.integers(self.start, self.end - 86_400, count)
        E = int(n_ev.sum())
        bot = np.repeat(np.arange(count), n_ev)
        e_first = np.concatenate([[0], np.cumsum(n_ev)[:-1]])
        gaps = rng.integers(1, 5, E)
        gaps[e_first] = 0
        csum = np.cumsum(gaps)
        ts = t0[bot] + csum - csum[e_first][bot]
        available = np.searchsorted(self._release_sorted, t0[bot], side="right")
        items = self._by_release[(rng.random(E) * available).astype(np.int64)].astype(np.int64)
        events = np.where(rng.random(E) < _BOT_CLICK, _CLICK, _VIEW).astype(np.int8)
        return EventChunk((first + bot).astype(np.int64), items, ts.astype(np.int64), events,
                          np.full(E, np.nan, dtype=np.float32))
