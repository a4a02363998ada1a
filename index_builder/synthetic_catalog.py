"""The synthetic shop's catalog: items with text, prices, popularity and release times.

Every item belongs to a leaf of :func:`~index_builder.synthetic_vocab.shop_vocabulary`, takes a
brand of its top category, one value per attribute dimension of its leaf and two feature phrases;
its title, description and tags are made of those words. Prices are log-normal per leaf (shifted
per brand, at most exp(0.6) from the leaf's median, so that no honest price looks like an outlier to a
robust z-score rule: cleaning flags |log price - median| > 3.5 * max(scale, 0.25) = 0.875); popularity is
a power law over a random ranking; release times put most items in the shop before the event
window opens and the rest during it.

:class:`ItemSampler` draws items that exist at a given time, by popularity, within a group
(a leaf, a leaf and brand, a leaf and price tier), vectorised over many draws at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from tandem.index_builder.synthetic_vocab import BRANDS_PER_TOP, MAX_ATTRIBUTES, Vocabulary

__all__ = ["SyntheticCatalog", "ItemSampler", "make_catalog", "item_id", "N_TIERS"]

#: Price tiers per leaf (terciles of the price within the leaf).
N_TIERS = 3
_PRICE_SIGMA = 0.25
_PRICE_CLIP = 2.0
_MIN_PER_LEAF = 5
_BRAND_SHIFT = 0.1
_POPULARITY_EXPONENT = 1.0
_SHARE_BEFORE_START = 0.7
_IN_STOCK = 0.94
# _SERIES and _CLOSERS, like the vocabulary, are written into JSON unescaped: plain ASCII, no quotes
_SERIES = ("Pro", "Air", "Max", "Lite", "One", "Flex", "Prime", "Go", "Neo", "Ultra", "Core", "Edge")
_CLOSERS = (
    "Designed for everyday use.", "Backed by a two-year warranty.", "A customer favourite.",
    "Ships in recyclable packaging.", "Easy to use and built to last.", "Great value for the price.",
)
_DAY = 86_400


def item_id(k: int) -> str:
    """The id of the item with dense index ``k`` (ids sort in index order)."""
    return f"i{k:07d}"


@dataclass
class SyntheticCatalog:
    """The generator's truth about every item, row ``k`` = item :func:`item_id` ``(k)``.

    Arrays have shape (n,) unless said: ``leaf`` int16, ``brand`` int16 (global: top * 8 + local),
    ``brand_local`` int8, ``tier`` int8 (price tercile within the leaf), ``attrs`` int8 (n, 3)
    value index per attribute dimension (-1: the leaf has fewer), ``features`` int8 (n, 2),
    ``price`` float64 (true price, 2 decimals), ``release`` int64 epoch seconds, ``weight``
    float64 popularity (sums to 1), ``in_stock`` bool, ``words`` int8 (n, 5) the choices the
    title and description are made of. :meth:`text` derives an item's text fields from them, so
    a million items cost arrays, not strings.
    """

    leaf: np.ndarray
    brand: np.ndarray
    brand_local: np.ndarray
    tier: np.ndarray
    attrs: np.ndarray
    features: np.ndarray
    price: np.ndarray
    release: np.ndarray
    weight: np.ndarray
    in_stock: np.ndarray
    words: np.ndarray
    vocab: Vocabulary

    def __post_init__(self) -> None:
        self.brand_names = [b for top in self.vocab.brands for b in top]

    def __len__(self) -> int:
        return int(self.leaf.shape[0])

    def texts(self, lo: int, hi: int) -> list[tuple[str, str, list[str]]]:
        """(title, description, tags) of items ``lo .. hi - 1`` as written before any dirt."""
        leaves, brands = self.vocab.leaves, self.brand_names
        out = []
        for leaf, brand, attrs, (f0, f1), (series, number, noun, with_feature, closer) in zip(
                self.leaf[lo:hi].tolist(), self.brand[lo:hi].tolist(), self.attrs[lo:hi].tolist(),
                self.features[lo:hi].tolist(), self.words[lo:hi].tolist(), strict=True):
            lf = leaves[leaf]
            values = [vals[v] for (_, vals), v in zip(lf.attributes, attrs, strict=False)]
            feats = [lf.features[f0], lf.features[f1]]
            name = brands[brand]
            title = f"{name} {_SERIES[series]} {number} {_cap(lf.nouns[noun % len(lf.nouns)])}"
            if with_feature:
                title += f" with {_cap(feats[0])}"
            canon = lf.nouns[0]  # descriptions use the leaf's own noun, titles vary it
            description = " ".join(
                [f"{canon[:1].upper()}{canon[1:]} by {name} with {feats[0]} and {feats[1]}."]
                + [f"{dim.capitalize()}: {v}." for (dim, _), v in zip(lf.attributes, values, strict=False)]
                + [_CLOSERS[closer]])
            out.append((title + ", " + ", ".join(values), description, values + feats))
        return out


@cache
def _cap(phrase: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in phrase.split())


def make_catalog(rng: np.random.Generator, n: int, vocab: Vocabulary, start: int, end: int) -> SyntheticCatalog:
    """Draw ``n`` items (``n >= vocab.n_leaves``: every leaf gets at least one item).

    ``start``/``end`` bound the event window (epoch seconds); every leaf has an item released
    before ``start`` so that a session at any time finds something in any leaf.
    """
    n_leaves = vocab.n_leaves
    if n < n_leaves:
        raise ValueError(f"items: the synthetic shop has {n_leaves} leaf categories and needs at least that "
                         f"many items, got {n}; pass --items {n_leaves} or more")
    leaf_share = rng.lognormal(0.0, 0.5, n_leaves)
    floor = min(_MIN_PER_LEAF, n // n_leaves)  # small catalogs still have a few items per leaf
    leaf = np.concatenate([np.repeat(np.arange(n_leaves), floor),
                           rng.choice(n_leaves, n - floor * n_leaves, p=leaf_share / leaf_share.sum())])
    leaf = rng.permutation(leaf).astype(np.int16)
    tops = np.array([lf.top for lf in vocab.leaves], dtype=np.int16)
    brand_local = np.minimum(rng.zipf(1.6, n) - 1, BRANDS_PER_TOP - 1)  # a few big brands per top
    brand_local = ((brand_local + rng.integers(0, BRANDS_PER_TOP, len(vocab.tops))[tops[leaf]])
                   % BRANDS_PER_TOP).astype(np.int8)
    brand = (tops[leaf] * BRANDS_PER_TOP + brand_local).astype(np.int16)

    n_vals = np.zeros((n_leaves, MAX_ATTRIBUTES), dtype=np.int64)
    for lf in vocab.leaves:
        for d, (_, values) in enumerate(lf.attributes):
            n_vals[lf.index, d] = len(values)
    u = rng.random((n, MAX_ATTRIBUTES))
    attrs = np.where(n_vals[leaf] > 0, (u * n_vals[leaf]).astype(np.int64), -1).astype(np.int8)
    n_feat = np.array([len(lf.features) for lf in vocab.leaves])[leaf]
    f0 = rng.integers(0, n_feat)
    f1 = (f0 + 1 + rng.integers(0, n_feat - 1)) % n_feat  # a second, different feature
    features = np.stack([f0, f1], axis=1).astype(np.int8)

    brand_shift = rng.uniform(-_BRAND_SHIFT, _BRAND_SHIFT, len(vocab.tops) * BRANDS_PER_TOP)
    leaf_price = np.log(np.array([lf.price for lf in vocab.leaves]))
    z = np.clip(rng.standard_normal(n), -_PRICE_CLIP, _PRICE_CLIP)
    price = np.round(np.maximum(np.exp(leaf_price[leaf] + brand_shift[brand] + _PRICE_SIGMA * z), 0.5), 2)
    order = np.lexsort((price, leaf))
    rank_in_leaf = np.empty(n, dtype=np.int64)
    first = np.searchsorted(leaf[order], np.arange(n_leaves))
    rank_in_leaf[order] = np.arange(n) - first[leaf[order]]
    leaf_size = np.bincount(leaf, minlength=n_leaves)
    tier = (rank_in_leaf * N_TIERS // leaf_size[leaf]).astype(np.int8)

    weight = (rng.permutation(n) + 1.0) ** -_POPULARITY_EXPONENT
    weight /= weight.sum()

    before = rng.random(n) < _SHARE_BEFORE_START
    release = np.where(before, start - rng.integers(_DAY, 365 * _DAY, n),
                       rng.integers(start, max(start + 1, end - 2 * _DAY), n)).astype(np.int64)
    by_release = np.lexsort((release, leaf))
    first_of_leaf = by_release[np.searchsorted(leaf[by_release], np.arange(n_leaves))]
    release[first_of_leaf] = np.minimum(release[first_of_leaf], start - _DAY)
    in_stock = rng.random(n) < _IN_STOCK

    # the words of the title: model series and number, which of the leaf's nouns, a feature or not
    words = np.stack([rng.integers(0, len(_SERIES), n), rng.integers(1, 10, n), rng.integers(0, 3, n),
                      rng.random(n) < 0.5, rng.integers(0, len(_CLOSERS), n)], axis=1).astype(np.int8)
    return SyntheticCatalog(leaf, brand, brand_local, tier, attrs, features, price, release, weight, in_stock,
                            words, vocab)


class ItemSampler:
    """Popularity-weighted draws of items released by a time, within groups.

    ``group`` int64 (n,) assigns every item to a group (say ``leaf * 8 + brand_local``);
    :meth:`draw` picks, for each request, an item of the requested group released at or before
    the requested time with probability proportional to ``weight``; -1 where the group has no
    such item. Cost: three binary searches per draw.
    """

    def __init__(self, group: np.ndarray, release: np.ndarray, weight: np.ndarray) -> None:
        self._order = np.lexsort((release, group))
        g = group[self._order].astype(np.int64)
        r = release[self._order].astype(np.int64)
        self._r0 = int(r.min()) if len(r) else 0
        self._key = (g << 40) | (r - self._r0)
        self._cw = np.concatenate([[0.0], np.cumsum(weight[self._order], dtype=np.float64)])

    def draw(self, group: np.ndarray, t: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Item indices int64 of shape (m,) for groups (m,) int, times (m,) int64, uniforms (m,) in [0, 1)."""
        g = group.astype(np.int64) << 40
        rel = t.astype(np.int64) - self._r0
        lo = np.searchsorted(self._key, g, side="left")
        hi = np.searchsorted(self._key, g | np.maximum(rel, 0), side="right")
        hi = np.where(rel < 0, lo, hi)  # before the first release of all: nothing exists yet
        empty = hi <= lo
        target = self._cw[lo] + u * (self._cw[hi] - self._cw[lo])
        idx = np.searchsorted(self._cw, target, side="right") - 1
        idx = np.clip(idx, lo, np.maximum(hi - 1, lo))
        out = self._order[np.minimum(idx, len(self._order) - 1)].astype(np.int64)
        out[empty] = -1
        return out
