"""Live catalog changes: upserted and deleted items applied to a loaded pipeline.

:func:`apply_catalog_changes` builds a *new* pipeline (copy-on-write) and never touches the one
it is given, so a request that holds the old one finishes on a consistent snapshot and the caller
swaps one reference (the server's :class:`~tandem.server.bundle_manager.BundleManager`): a reader
can never see an item whose id is mapped but whose vector is missing. The new pipeline shares the
user histories and the rankers.

Rows never move: an upsert of a known id rewrites its row, a new id gets the next row, a delete
marks the row removed. A removed row stays in every array (histories and item-CF still refer to
it) but leaves ``catalog.index`` (GetItem, SimilarItems, events and Search candidates treat it as
unknown) and fails every filter (:class:`~tandem.ranking.filters.FilterIndex`), which every
response path (retrieval, re-ranking, popularity backfill) goes through: whatever a source, a
memo or a cache still holds, a removed item is never returned. Upserting it again brings it back.

What a change recomputes (:func:`tandem.retrieval.live_items.grow_sources`): the text vectors and
the lexical index of rows whose text (title, description, category, brand, tags) changed, the
two-tower vectors of rows whose text or price changed, the filters and the ranking features'
item table of every row. Per-user memos are dropped when vectors changed (they summarise
vectors), kept otherwise. Cost: O(catalog) memory copies per batch (send changes in batches).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from tandem.ranking.item_table import ItemTable, _intern, item_table_inputs
from tandem.retrieval.base import QueryEncoder
from tandem.retrieval.data import Catalog, Item
from tandem.retrieval.live_items import grow_sources
from tandem.retrieval.registry import first_with

if TYPE_CHECKING:
    from tandem.ranking.pipeline import Pipeline

__all__ = ["CatalogChange", "apply_catalog_changes", "UPSERT", "DELETE"]

UPSERT = "upsert"
DELETE = "delete"


@dataclass(frozen=True)
class CatalogChange:
    """One live change: ``kind`` :data:`UPSERT` with the validated row ``item``, or :data:`DELETE`
    of ``item_id``."""

    kind: str
    item_id: str
    item: Item | None = None

    def __post_init__(self) -> None:
        if self.kind not in (UPSERT, DELETE):
            raise ValueError(f"CatalogChange.kind must be {UPSERT!r} or {DELETE!r}, got {self.kind!r}")
        if self.kind == UPSERT and (self.item is None or self.item.item_id != self.item_id):
            raise ValueError("an upsert carries the item row whose item_id it names")

    @classmethod
    def upsert(cls, item: Item) -> CatalogChange:
        return cls(UPSERT, item.item_id, item)

    @classmethod
    def delete(cls, item_id: str) -> CatalogChange:
        return cls(DELETE, item_id)


def _text_key(c: Catalog, i: int) -> tuple:
    return (c.titles[i], c.descriptions[i], c.categories[i], c.brands[i], tuple(c.tags[i]))


def apply_catalog_changes(pipeline: Pipeline, changes: Sequence[CatalogChange]) -> tuple[Pipeline, dict[str, int]]:
    """``pipeline`` with ``changes`` applied in order, as a new pipeline; and counts
    ``{"upserted", "added", "deleted", "unknown"}`` (``unknown``: deletes of ids it did not have).
    Raises ValueError when the bundle cannot take live changes (a source without support)."""
    old = pipeline.catalog
    n_old = len(old)
    removed = (np.zeros(n_old, dtype=bool) if pipeline.removed is None else pipeline.removed.copy())
    rows = {item_id: i for i, item_id in enumerate(old.item_ids)}  # removed rows too: an id keeps its row
    cols = {name: list(getattr(old, name)) for name in ("item_ids", "titles", "descriptions", "categories",
                                                         "brands", "tags")}
    prices, in_stock = list(old.prices), list(old.in_stock)
    imputed, outlier = list(old.price_imputed), list(old.price_outlier)
    removed_list = list(removed)
    text_rows: set[int] = set()
    attr_rows: set[int] = set()
    counts = {"upserted": 0, "added": 0, "deleted": 0, "unknown": 0}
    for change in changes:
        i = rows.get(change.item_id)
        if change.kind == DELETE:
            if i is None or removed_list[i]:
                counts["unknown"] += 1
            else:
                removed_list[i] = True
                counts["deleted"] += 1
            continue
        item = change.item
        assert item is not None
        price = np.nan if item.price is None else float(item.price)
        values = {"titles": item.title, "descriptions": item.description, "categories": item.category,
                  "brands": item.brand, "tags": tuple(item.tags)}
        if i is None:
            i = rows[item.item_id] = len(cols["item_ids"])
            cols["item_ids"].append(item.item_id)
            for name, v in values.items():
                cols[name].append(v)
            prices.append(price)
            in_stock.append(bool(item.in_stock))
            imputed.append(False)
            outlier.append(False)
            removed_list.append(False)
            text_rows.add(i)
            attr_rows.add(i)
            counts["added"] += 1
        else:
            before = (cols["titles"][i], cols["descriptions"][i], cols["categories"][i], cols["brands"][i],
                      tuple(cols["tags"][i]))
            if before != tuple(values.values()):
                text_rows.add(i)
                attr_rows.add(i)
            old_price = prices[i]
            if not (np.isnan(old_price) and np.isnan(price)) and old_price != np.float32(price):
                attr_rows.add(i)
            for name, v in values.items():
                cols[name][i] = v
            prices[i], in_stock[i], imputed[i], outlier[i] = price, bool(item.in_stock), False, False
            removed_list[i] = False
        counts["upserted"] += 1
    catalog = Catalog(prices=np.array(prices, dtype=np.float32), in_stock=np.array(in_stock, dtype=bool),
                      price_imputed=np.array(imputed, dtype=bool), price_outlier=np.array(outlier, dtype=bool),
                      **cols)
    removed = np.array(removed_list, dtype=bool)
    for i in np.flatnonzero(removed):
        del catalog.index[catalog.item_ids[i]]
    # rows whose text is back to what the sources already hold need no new vector
    text_rows -= {i for i in text_rows if i < n_old and _text_key(old, i) == _text_key(catalog, i)}
    text = np.array(sorted(text_rows), dtype=np.int64)
    attr = np.array(sorted(attr_rows | text_rows), dtype=np.int64)
    if len(catalog) == n_old and not attr.size:
        sources = pipeline.sources  # prices, stock and deletions only: the sources are unchanged
    else:
        query = first_with(QueryEncoder, pipeline.sources)
        encoder = getattr(query, "encoder", None)
        sources = grow_sources(pipeline.sources, catalog, text, attr,
                               None if encoder is None else lambda texts: encoder.encode(texts))
    inputs = ({"tt_vecs": pipeline.table.tt_vecs, "text_vecs": pipeline.table.text_vecs, "cf": pipeline.table.cf}
              if sources is pipeline.sources else item_table_inputs(sources))
    table = _item_table(pipeline.table, catalog, inputs)
    new = type(pipeline)(catalog, sources, table, pipeline.histories, pipeline.rankers, pipeline.config,
                         version=pipeline.version, built_at=pipeline.built_at, user_memos=pipeline.memos.capacity,
                         removed=removed if removed.any() else None)
    if sources is pipeline.sources:
        new.memos = pipeline.memos  # nothing a memo summarises changed
    return new, counts


def _item_table(old: ItemTable, catalog: Catalog, inputs: dict) -> ItemTable:
    """The ranking features' item table over ``catalog``: behaviour (popularity, trend, first seen)
    kept for known rows and empty for new ones; catalog-derived columns recomputed."""
    n = len(catalog)

    def pad(a: np.ndarray, fill) -> np.ndarray:
        out = np.full(n, fill, dtype=a.dtype)
        out[: a.shape[0]] = a
        return out

    tag_index: dict[str, int] = {}
    r, c = [], []
    for i, tags in enumerate(catalog.tags):
        for t in tags:
            r.append(i)
            c.append(tag_index.setdefault(t, len(tag_index)))
    tag_sets = sp.csr_matrix((np.ones(len(r), dtype=np.float32), (r, c)), shape=(n, max(1, len(tag_index))))
    with np.errstate(divide="ignore", invalid="ignore"):
        log_price = np.where(catalog.prices > 0, np.log(catalog.prices), np.nan).astype(np.float32)
    return ItemTable(**inputs, log_pop=pad(old.log_pop, 0), log_trend=pad(old.log_trend, 0),
                     leaf=_intern(catalog.categories), top=_intern([x.split(" > ")[0] if x else "" for x in catalog.categories]),
                     brand=_intern(catalog.brands), log_price=log_price, first_seen=pad(old.first_seen, -1),
                     tag_sets=tag_sets.tocsr(), now=old.now)
