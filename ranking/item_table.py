"""The per-item arrays the ranking features read, computed once per bundle.

:class:`ItemTable` holds vectors, popularity, category and brand ids, prices, first-seen times,
tags and the item-CF neighbour matrix; :func:`build_item_table` computes it from the catalog and
the training interactions, :func:`save_item_table` / :func:`load_item_table` keep the
catalog-derived part in a bundle (vectors and the CF matrix belong to their sources), and
:func:`item_table_inputs` takes those from the sources by capability.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from tandem.retrieval.base import CandidateSource, ItemSimilarity, QueryEncoder, ScratchTables, UserEncoder
from tandem.retrieval.data import Catalog, Interactions
from tandem.retrieval.registry import first_with

__all__ = ["ItemTable", "build_item_table", "save_item_table", "load_item_table", "item_table_inputs",
           "CF_TRANSPOSE_MAX_NNZ"]

_DAY = 86400.0

#: Item-CF matrices up to this many entries also keep a transposed copy for the reverse-similarity
#: feature (8 bytes an entry; 4M entries on the 100k-item synthetic shop = 33 MB).
CF_TRANSPOSE_MAX_NNZ = 50_000_000


@dataclass
class ItemTable:
    """Per-item arrays, all with first dimension n_items.

    ``tt_vecs`` float32 (n, d1) two-tower item vectors (or None); ``text_vecs`` float32 (n, d2)
    L2-normalised text vectors (or None); ``cf`` csr (n, n) item-item similarity, row = the item
    a user had, column = the candidate (or None); ``log_pop`` / ``log_trend`` float32 (n,);
    ``leaf`` / ``top`` / ``brand`` int32 (n,) category-leaf, top-level-category and brand ids
    (-1 unknown); ``log_price`` float32 (n,) NaN unknown; ``first_seen`` int64 (n,) epoch seconds
    (-1 never seen); ``tag_sets`` csr (n, n_tags) binary.
    """

    tt_vecs: np.ndarray | None
    text_vecs: np.ndarray | None
    cf: sp.csr_matrix | None
    log_pop: np.ndarray
    log_trend: np.ndarray
    leaf: np.ndarray
    top: np.ndarray
    brand: np.ndarray
    log_price: np.ndarray
    first_seen: np.ndarray
    tag_sets: sp.csr_matrix
    now: int

    def __post_init__(self) -> None:
        self.cf_t: sp.csr_matrix | None = None
        if self.cf is not None:
            if not self.cf.has_sorted_indices:
                self.cf.sort_indices()  # the look-ups search within rows
            if self.cf.nnz <= CF_TRANSPOSE_MAX_NNZ:
                # column j of cf as a row: "how similar is each candidate to the last item?" reads one
                # contiguous row instead of searching 300 rows (~0.2 ms of cache misses per request)
                self.cf_t = self.cf.T.tocsr()
                self.cf_t.sort_indices()
        # leaf, top-level category and brand ids in one id space (leaf ids, then top-level ids, then
        # brand ids; unknown = the space's size), so the three affinity features are one look-up
        sizes = [int(a.max()) + 1 if a.size else 0 for a in (self.leaf, self.top, self.brand)]
        self.affinity_space = sum(sizes)
        ids = np.stack([self.leaf, self.top, self.brand], axis=1).astype(np.int64) + np.cumsum([0] + sizes[:2])
        known = np.stack([self.leaf, self.top, self.brand], axis=1) >= 0
        self.affinity_ids = np.where(known, ids, self.affinity_space).astype(np.int32)
        self._kernel: dict[str, np.ndarray] | None = None
        # per-request scratch of the compiled feature loop: item -> candidate position, and dense
        # value tables over the affinity and tag id spaces (see retrieval.base.ScratchTables)
        self.positions = ScratchTables(self.n_items, np.int32, -1)
        self.affinity_values = ScratchTables(self.affinity_space + 1, np.float32, 0.0)
        self.tag_values = ScratchTables(self.tag_sets.shape[1], np.float32, 0.0)

    def kernel_arrays(self) -> dict[str, np.ndarray]:
        """The arrays :func:`compute_features`' compiled loop reads, in the dtypes it was compiled
        for (converted once; views where they already are). Vectors absent read as (0, 0)."""
        if self._kernel is None:
            tags = self.tag_sets

            def vecs(v: np.ndarray | None) -> np.ndarray:
                return np.zeros((0, 0), np.float32) if v is None else np.ascontiguousarray(v, dtype=np.float32)

            self._kernel = {
                "tt_vecs": vecs(self.tt_vecs), "text_vecs": vecs(self.text_vecs),
                "tag_indptr": tags.indptr.astype(np.int64), "tag_indices": tags.indices.astype(np.int32),
                "tag_data": tags.data.astype(np.float32), "leaf": self.leaf.astype(np.int32),
                "log_price": self.log_price.astype(np.float32), "log_pop": self.log_pop.astype(np.float32),
                "log_trend": self.log_trend.astype(np.float32), "first_seen": self.first_seen.astype(np.int64),
            }
        return self._kernel

    @property
    def n_items(self) -> int:
        return int(self.log_pop.shape[0])


def _intern(values: Sequence[str]) -> np.ndarray:
    index: dict[str, int] = {}
    out = np.empty(len(values), dtype=np.int32)
    for i, v in enumerate(values):
        out[i] = -1 if not v else index.setdefault(v, len(index))
    return out


def build_item_table(
    catalog: Catalog,
    interactions: Interactions,
    *,
    tt_vecs: np.ndarray | None = None,
    text_vecs: np.ndarray | None = None,
    cf: sp.csr_matrix | None = None,
    trend_half_life_days: float = 14.0,
) -> ItemTable:
    """Per-item feature arrays from the catalog and the training interactions."""
    n = len(catalog)
    counts = np.bincount(interactions.items, minlength=n).astype(np.float64)
    now = int(interactions.ts.max()) if len(interactions) else 0
    age_days = (now - interactions.ts) / _DAY
    decay = np.power(0.5, age_days / trend_half_life_days)
    trend = np.bincount(interactions.items, weights=decay, minlength=n)
    first_seen = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_seen, interactions.items, interactions.ts)
    first_seen[first_seen == np.iinfo(np.int64).max] = -1
    leaf = _intern(catalog.categories)
    top = _intern([c.split(" > ")[0] if c else "" for c in catalog.categories])
    brand = _intern(catalog.brands)
    tag_index: dict[str, int] = {}
    rows, cols = [], []
    for i, tags in enumerate(catalog.tags):
        for t in tags:
            rows.append(i)
            cols.append(tag_index.setdefault(t, len(tag_index)))
    tag_sets = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n, max(1, len(tag_index)))
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        log_price = np.where(catalog.prices > 0, np.log(catalog.prices), np.nan).astype(np.float32)
    return ItemTable(
        tt_vecs=tt_vecs,
        text_vecs=text_vecs,
        cf=cf.tocsr() if cf is not None else None,
        log_pop=np.log1p(counts).astype(np.float32),
        log_trend=np.log1p(trend).astype(np.float32),
        leaf=leaf,
        top=top,
        brand=brand,
        log_price=log_price,
        first_seen=first_seen,
        tag_sets=tag_sets.tocsr(),
        now=now,
    )


def save_item_table(table: ItemTable, folder: Path) -> list[Path]:
    """Write the catalog-derived arrays (vectors and the CF matrix belong to their sources)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "item_table.npz"
    tags = table.tag_sets.tocsr()
    np.savez(path, log_pop=table.log_pop, log_trend=table.log_trend, leaf=table.leaf, top=table.top,
             brand=table.brand, log_price=table.log_price, first_seen=table.first_seen,
             tag_data=tags.data, tag_indices=tags.indices, tag_indptr=tags.indptr,
             tag_shape=np.array(tags.shape, dtype=np.int64), now=np.array(table.now, dtype=np.int64))
    return [path]


def load_item_table(folder: Path, *, tt_vecs: np.ndarray | None = None, text_vecs: np.ndarray | None = None,
                    cf: sp.csr_matrix | None = None) -> ItemTable:
    with np.load(Path(folder) / "item_table.npz", allow_pickle=False) as z:
        tag_sets = sp.csr_matrix((z["tag_data"], z["tag_indices"], z["tag_indptr"]), shape=tuple(z["tag_shape"]))
        return ItemTable(tt_vecs=tt_vecs, text_vecs=text_vecs, cf=cf.tocsr() if cf is not None else None,
                         log_pop=z["log_pop"], log_trend=z["log_trend"], leaf=z["leaf"], top=z["top"],
                         brand=z["brand"], log_price=z["log_price"], first_seen=z["first_seen"],
                         tag_sets=tag_sets, now=int(z["now"]))


def item_table_inputs(sources: Mapping[str, CandidateSource]) -> dict[str, Any]:
    """The table's source-owned parts, by capability: ``tt_vecs`` the item vectors of the user
    encoder (the user-item dot product), ``text_vecs`` those of the query encoder (query-item
    and history-item similarities), ``cf`` the item-item similarity; None where no source has it."""
    user, query = first_with(UserEncoder, sources), first_with(QueryEncoder, sources)
    cf = first_with(ItemSimilarity, sources)
    return {"tt_vecs": None if user is None else user.encode_items(),
            "text_vecs": None if query is None else query.encode_items(),
            "cf": None if cf is None else cf.similarity}
