"""In-memory, columnar views of a catalog and an interaction log.

Everything downstream of the readers (cleaning, splits, candidate sources, the ranker,
evaluation) works on these two classes. Items and users are addressed by dense integer
indices; string ids only appear at the edges (readers, bundle files, the server).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "EVENT_TYPES",
    "EVENT_CODE",
    "EVENT_WEIGHT",
    "Item",
    "Event",
    "Query",
    "Catalog",
    "Interactions",
]

#: Event types of the data contract, in funnel order. The position is the int8 code.
EVENT_TYPES: tuple[str, ...] = ("view", "click", "cart", "purchase", "rate")
EVENT_CODE: dict[str, int] = {name: code for code, name in enumerate(EVENT_TYPES)}
#: Default strength of each event type as implicit feedback (indexed by code).
EVENT_WEIGHT: np.ndarray = np.array([0.25, 0.5, 0.75, 1.0, 1.0], dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Item:
    """One validated catalog row (see docs/data.md)."""

    item_id: str
    title: str
    description: str = ""
    category: str = ""
    brand: str = ""
    price: float | None = None
    tags: tuple[str, ...] = ()
    in_stock: bool = True


@dataclass(frozen=True, slots=True)
class Event:
    """One validated event row; ``ts`` is epoch seconds."""

    user_id: str
    item_id: str
    ts: int
    event: str = "purchase"
    value: float | None = None


@dataclass(frozen=True, slots=True)
class Query:
    """One graded search judgement: ``grade`` 0 (irrelevant) .. 3 (exact)."""

    query_id: str
    query: str
    item_id: str
    grade: int
    user_id: str | None = None


@dataclass
class Catalog:
    """Columnar catalog. Row ``i`` is the item with dense index ``i``.

    ``prices`` is float32 of shape (n,), NaN where unknown; ``in_stock``, ``price_imputed``
    and ``price_outlier`` are bool arrays of shape (n,).
    """

    item_ids: list[str]
    titles: list[str]
    descriptions: list[str]
    categories: list[str]
    brands: list[str]
    prices: np.ndarray
    tags: list[tuple[str, ...]]
    in_stock: np.ndarray
    price_imputed: np.ndarray = field(default=None)  # type: ignore[assignment]
    price_outlier: np.ndarray = field(default=None)  # type: ignore[assignment]
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        self.prices = np.asarray(self.prices, dtype=np.float32)
        self.in_stock = np.asarray(self.in_stock, dtype=bool)
        if self.price_imputed is None:
            self.price_imputed = np.zeros(n, dtype=bool)
        if self.price_outlier is None:
            self.price_outlier = np.zeros(n, dtype=bool)
        for name in ("titles", "descriptions", "categories", "brands", "tags"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Catalog.{name} has {len(getattr(self, name))} rows, item_ids has {n}")
        for name in ("prices", "in_stock", "price_imputed", "price_outlier"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"Catalog.{name} has shape {getattr(self, name).shape}, expected ({n},)")
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        if len(self.index) != n:
            raise ValueError("Catalog.item_ids contains duplicates; resolve them before building a Catalog")

    @classmethod
    def from_items(cls, items: Iterable[Item]) -> Catalog:
        rows = list(items)
        return cls(
            item_ids=[r.item_id for r in rows],
            titles=[r.title for r in rows],
            descriptions=[r.description for r in rows],
            categories=[r.category for r in rows],
            brands=[r.brand for r in rows],
            prices=np.array([np.nan if r.price is None else r.price for r in rows], dtype=np.float32),
            tags=[tuple(r.tags) for r in rows],
            in_stock=np.array([r.in_stock for r in rows], dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    def item(self, i: int) -> Item:
        price = float(self.prices[i])
        return Item(
            item_id=self.item_ids[i],
            title=self.titles[i],
            description=self.descriptions[i],
            category=self.categories[i],
            brand=self.brands[i],
            price=None if np.isnan(price) else price,
            tags=self.tags[i],
            in_stock=bool(self.in_stock[i]),
        )

    def text(self, i: int) -> str:
        """The text a text encoder or lexical index sees for item ``i``."""
        parts = [self.titles[i], self.brands[i], self.categories[i], self.descriptions[i]]
        return ". ".join(p for p in parts if p)

    def subset(self, rows: np.ndarray) -> Catalog:
        """A new catalog with the given rows (int indices) in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        pick = rows.tolist()
        return Catalog(
            item_ids=[self.item_ids[i] for i in pick],
            titles=[self.titles[i] for i in pick],
            descriptions=[self.descriptions[i] for i in pick],
            categories=[self.categories[i] for i in pick],
            brands=[self.brands[i] for i in pick],
            prices=self.prices[rows],
            tags=[self.tags[i] for i in pick],
            in_stock=self.in_stock[rows],
            price_imputed=self.price_imputed[rows],
            price_outlier=self.price_outlier[rows],
        )


@dataclass
class Interactions:
    """Columnar event log over a fixed catalog.

    Arrays all have shape (n,): ``users`` int32 (index into ``user_ids``), ``items`` int32
    (index into the catalog), ``ts`` int64 epoch seconds, ``events`` int8 (``EVENT_CODE``),
    ``values`` float32 (NaN when absent). Row order is file order unless a method says otherwise.
    """

    user_ids: list[str]
    users: np.ndarray
    items: np.ndarray
    ts: np.ndarray
    events: np.ndarray
    values: np.ndarray
    user_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.users = np.asarray(self.users, dtype=np.int32)
        self.items = np.asarray(self.items, dtype=np.int32)
        self.ts = np.asarray(self.ts, dtype=np.int64)
        self.events = np.asarray(self.events, dtype=np.int8)
        self.values = np.asarray(self.values, dtype=np.float32)
        n = self.users.shape[0]
        for name in ("items", "ts", "events", "values"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"Interactions.{name} has shape {getattr(self, name).shape}, expected ({n},)")
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}

    @classmethod
    def empty(cls, user_ids: Sequence[str] = ()) -> Interactions:
        z = np.zeros(0)
        return cls(list(user_ids), z, z, z, z, z)

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def select(self, mask_or_rows: np.ndarray) -> Interactions:
        """Rows by bool mask or int indices; the user vocabulary is kept as is."""
        s = mask_or_rows
        return Interactions(
            self.user_ids, self.users[s], self.items[s], self.ts[s], self.events[s], self.values[s]
        )

    def chronological_order(self) -> np.ndarray:
        """Row indices sorted by (user, ts), ties kept in file order (stable)."""
        return np.lexsort((np.arange(len(self)), self.ts, self.users))

    def user_sequences(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR view of each user's chronological rows.

        Returns ``(indptr, rows)``: ``indptr`` int64 of shape (n_users + 1,), ``rows`` int64
        row indices into this log such that user ``u``'s events in time order are
        ``rows[indptr[u]:indptr[u + 1]]``.
        """
        rows = self.chronological_order()
        counts = np.bincount(self.users, minlength=self.n_users)
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, rows

    def concat(self, other: Interactions) -> Interactions:
        """Append ``other`` (same catalog), merging user vocabularies."""
        user_ids = list(self.user_ids)
        index = dict(self.user_index)
        remap = np.empty(other.n_users, dtype=np.int32)
        for j, u in enumerate(other.user_ids):
            if u not in index:
                index[u] = len(user_ids)
                user_ids.append(u)
            remap[j] = index[u]
        return Interactions(
            user_ids,
            np.concatenate([self.users, remap[other.users]]),
            np.concatenate([self.items, other.items]),
            np.concatenate([self.ts, other.ts]),
            np.concatenate([self.events, other.events]),
            np.concatenate([self.values, other.values]),
        )
