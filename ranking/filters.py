"""Business filters and diversity caps, applied to ranked catalog indices."""

from __future__ import annotations

import numpy as np

from tandem.ranking.api import Filters
from tandem.retrieval.base import IdSet
from tandem.retrieval.data import Catalog

__all__ = ["FilterIndex", "apply_filters"]


class FilterIndex:
    """Per-item arrays the filters need, built once per bundle."""

    def __init__(self, catalog: Catalog, removed: np.ndarray | None = None) -> None:
        self.catalog = catalog
        #: bool (n,) items deleted by a live catalog change: they never pass (None: none deleted)
        self.removed = removed if removed is not None and removed.any() else None
        self.prices = catalog.prices
        self.in_stock = catalog.in_stock
        self.categories = np.array(catalog.categories, dtype=object)
        self.brands = np.array(catalog.brands, dtype=object)

    def keep_mask(self, items: np.ndarray, filters: Filters, exclude: np.ndarray | IdSet | None = None) -> np.ndarray:
        """bool (m,) for candidate catalog indices ``items`` int64 (m,); ``exclude`` item indices
        (or a request's ready-made :class:`IdSet` of them) never pass."""
        keep = np.ones(items.shape[0], dtype=bool) if self.removed is None else ~self.removed[items]
        if isinstance(exclude, IdSet):
            if exclude.size:
                keep &= ~exclude.contains(items)
        elif exclude is not None and exclude.size:
            keep &= ~IdSet(exclude, len(self.catalog)).contains(items)
        if filters.exclude_item_ids:
            ids = [self.catalog.index[i] for i in filters.exclude_item_ids if i in self.catalog.index]
            if ids:
                keep &= ~np.isin(items, np.array(ids, dtype=np.int64))
        if filters.in_stock_only:
            keep &= self.in_stock[items]
        if filters.price_min is not None or filters.price_max is not None:
            p = self.prices[items]
            ok = ~np.isnan(p)
            if filters.price_min is not None:
                ok &= p >= filters.price_min
            if filters.price_max is not None:
                ok &= p <= filters.price_max
            keep &= ok
        if filters.brands:
            keep &= np.isin(self.brands[items], list(filters.brands))
        if filters.categories:
            cats = self.categories[items]
            ok = np.zeros(items.shape[0], dtype=bool)
            for c in filters.categories:
                ok |= np.array([x == c or x.startswith(c + " > ") for x in cats], dtype=bool)
            keep &= ok
        return keep


def apply_filters(index: FilterIndex, ranked: np.ndarray, filters: Filters, k: int,
                  exclude: np.ndarray | IdSet | None = None) -> np.ndarray:
    """Positions into ``ranked`` (best first) of the first ``k`` items that pass the filters
    and the diversity caps; int64 (<= k,)."""
    keep = np.flatnonzero(index.keep_mask(ranked, filters, exclude))
    if not (filters.max_per_brand or filters.max_per_category):
        return keep[:k]
    out: list[int] = []
    per_brand: dict[str, int] = {}
    per_cat: dict[str, int] = {}
    for pos in keep:
        i = int(ranked[pos])
        b, c = index.brands[i], index.categories[i]
        if filters.max_per_brand and b and per_brand.get(b, 0) >= filters.max_per_brand:
            continue
        if filters.max_per_category and c and per_cat.get(c, 0) >= filters.max_per_category:
            continue
        per_brand[b] = per_brand.get(b, 0) + 1
        per_cat[c] = per_cat.get(c, 0) + 1
        out.append(int(pos))
        if len(out) >= k:
            break
    return np.array(out, dtype=np.int64)
