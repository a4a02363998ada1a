"""The one interface every candidate source honours.

A source is fitted offline on a catalog and training interactions, saved into a bundle
folder, loaded back, and asked for candidates with a :class:`RetrievalRequest`. The shared
contract test (tests/retrieval/test_source_contract.py) runs every source through it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from tandem.retrieval.data import Catalog, Interactions

__all__ = [
    "ScratchTables", "RetrievalRequest", "Candidates", "CandidateSource", "IdSet", "read_source_meta",
    "ItemVectors", "UserEncoder", "QueryEncoder", "ItemSimilarity", "HistoryMemo", "CatalogScorer", "ItemScorer"]


@dataclass(frozen=True)
class RetrievalRequest:
    """What a source may look at.

    ``history`` int64 (h,): the user's item indices in time order (oldest first);
    ``history_ts`` int64 (h,) epoch seconds and ``history_events`` int8 (h,) event codes,
    both aligned with ``history`` (may be empty arrays). ``query`` is set for Search,
    ``item`` (a catalog index) for SimilarItems. ``now`` is the request time in epoch
    seconds (None: the latest time the source has seen).

    ``memo`` is a per-user scratch dict that lives as long as the user's history is unchanged
    (the server keeps one per user and starts a fresh one when an event arrives); None means
    nothing is kept. A source may store there what it derives from the history alone (the
    user's vector or profile, never anything that depends on ``k``, ``query`` or ``item``)
    under a key prefixed with its name, and must give the same answer with or without it.
    """

    history: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    history_ts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    history_events: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int8))
    query: str | None = None
    item: int | None = None
    user_id: str | None = None
    now: int | None = None
    memo: dict | None = field(default=None, compare=False, repr=False)
    _excluded: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    def excluded(self, n: int) -> IdSet:
        """The ids a source never returns for this request, over a catalog of ``n`` items: the
        history and ``item``. Built once per request and shared by its sources."""
        found = self._excluded.get(n)
        if found is None:
            members = np.asarray(self.history, dtype=np.int64)
            if self.item is not None:
                members = np.append(members, np.int64(self.item))
            found = self._excluded[n] = IdSet(members, n)
        return found


@dataclass(frozen=True)
class Candidates:
    """A source's answer: ``items`` int64 (m,) catalog indices, best first, unique;
    ``scores`` float32 (m,) non-increasing; ``source`` the source's name."""

    items: np.ndarray
    scores: np.ndarray
    source: str

    def __post_init__(self) -> None:
        if self.items.shape != self.scores.shape or self.items.ndim != 1:
            raise ValueError(f"Candidates: items {self.items.shape} and scores {self.scores.shape} differ")

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @classmethod
    def empty(cls, source: str) -> Candidates:
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), source)

    @classmethod
    def top_k(cls, scores: np.ndarray, k: int, source: str, exclude: np.ndarray | None = None) -> Candidates:
        """Best ``k`` of a dense score vector over the whole catalog (float, shape (n_items,)),
        ties to the lower item index (as :func:`tandem.retrieval.item_ranks.rank_items` ranks
        them, so that a caller's candidates get the ranks retrieval gives).

        ``exclude`` item indices are never returned; -inf scores are never returned.
        """
        scores = np.asarray(scores, dtype=np.float32).copy()
        if exclude is not None and len(exclude):
            scores[np.asarray(exclude, dtype=np.int64)] = -np.inf
        k = min(k, scores.shape[0])
        if k <= 0:
            return cls.empty(source)
        part = np.argpartition(-scores, k - 1)[:k]
        kth = scores[part].min()
        # which of the items tied at the k-th score make it: the lowest indices, not argpartition's pick
        above = np.flatnonzero(scores > kth)
        part = np.concatenate([above, np.flatnonzero(scores == kth)[: k - above.shape[0]]])
        part = part[np.lexsort((part, -scores[part]))]
        part = part[np.isfinite(scores[part])]
        return cls(part.astype(np.int64), scores[part], source)


class IdSet:
    """A set of catalog indices in ``[0, n)`` held as an n-byte table.

    Membership of a few hundred ids costs a few microseconds, where ``np.isin`` sorts both
    arrays on every call (~50 us); requests test "is it in the history?" several times.
    Ids outside ``[0, n)`` (FAISS's -1 padding included) are never members."""

    __slots__ = ("n", "size", "_table")

    def __init__(self, members: np.ndarray, n: int) -> None:
        self.n = int(n)
        self._table = np.zeros(self.n + 1, dtype=bool)  # the last slot answers out-of-range ids
        m = np.asarray(members, dtype=np.int64)
        self._table[m[(m >= 0) & (m < self.n)]] = True
        #: the number of distinct members
        self.size = int(np.count_nonzero(self._table))

    @property
    def table(self) -> np.ndarray:
        """bool (n + 1,): the membership table (slot n, for out-of-range ids, is False); read only."""
        return self._table

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """bool array shaped like ``ids``: which of them are members."""
        ids = np.asarray(ids, dtype=np.int64)
        return self._table[np.where((ids >= 0) & (ids < self.n), ids, self.n)]


class ScratchTables:
    """Tables of ``n`` slots, every slot ``fill`` between uses: a compiled loop fills the few
    slots a request needs (a map from catalog index to candidate position, say), reads them and
    resets them, in time proportional to what it touched rather than to ``n``.

    ``with tables.borrow() as table:`` lends one; the borrower must leave every slot ``fill``
    again. A table whose borrower raised is dropped rather than reused. Thread-safe: the pool
    grows to as many tables as calls ran at once."""

    def __init__(self, n: int, dtype: type = np.int32, fill: float = -1) -> None:
        self.n = int(n)
        self.dtype = dtype
        self.fill = fill
        self._free: list[np.ndarray] = []
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self) -> Iterator[np.ndarray]:
        with self._lock:
            table = self._free.pop() if self._free else None
        if table is None:
            table = np.full(self.n, self.fill, dtype=self.dtype)
        yield table
        with self._lock:
            self._free.append(table)


@runtime_checkable
class CandidateSource(Protocol):
    """fit / retrieve / save / load, as every candidate source implements them."""

    name: str

    def fit(self, catalog: Catalog, interactions: Interactions) -> CandidateSource:
        """Learn from a catalog and (training) interactions; returns self."""
        ...

    def retrieve(self, request: RetrievalRequest, k: int) -> Candidates:
        """Up to ``k`` candidates for the request; empty when the source has nothing to say
        (e.g. an item-CF source asked for a user with no history)."""
        ...

    def save(self, folder: Path) -> list[Path]:
        """Write the fitted state into ``folder`` (safe formats only); returns the files written."""
        ...

    @classmethod
    def load(cls, folder: Path, catalog: Catalog) -> CandidateSource:
        """Read back what :meth:`save` wrote."""
        ...


# -- capabilities ----------------------------------------------------------------------------
# What a source can do beyond retrieving. The ranking stage asks for a capability, never for a
# source by name; the registry (retrieval.registry) declares which sources have which, and the
# shared contract test checks that each declared capability is really there and consistent.


@runtime_checkable
class ItemVectors(Protocol):
    """A source whose items live in a vector space."""

    def encode_items(self) -> np.ndarray:
        """float32 (n_items, d): every catalog item's vector, row = catalog index."""
        ...


@runtime_checkable
class UserEncoder(Protocol):
    """A source that maps a user's history to a vector in the space of its item vectors
    (the ranking features' user-item dot product)."""

    def encode_items(self) -> np.ndarray:
        """float32 (n_items, d), as :class:`ItemVectors`."""
        ...

    def encode_users(self, requests: Sequence[RetrievalRequest]) -> np.ndarray:
        """float32 (b, d): one vector per request, from its history; the same vector whether a
        request comes alone or in a batch. Keeps the vector in a request's memo when it has one."""
        ...


@runtime_checkable
class QueryEncoder(Protocol):
    """A source that maps a search query to a vector in the space of its item vectors
    (the ranking features' query-item and history-item similarities)."""

    def encode_items(self) -> np.ndarray:
        """float32 (n_items, d), as :class:`ItemVectors`."""
        ...

    def encode_query(self, query: str) -> np.ndarray:
        """float32 (d,): the query's vector."""
        ...


@runtime_checkable
class ItemSimilarity(Protocol):
    """A source holding an item-item similarity matrix: ``similarity`` csr float32 (n, n),
    row = an item a user had, column = a candidate (the ranking features' CF columns)."""

    similarity: Any


@runtime_checkable
class HistoryMemo(Protocol):
    """A source that derives something from the history alone and keeps it in the request's
    memo (:attr:`RetrievalRequest.memo`); the pipeline's warm-up calls it for recent users."""

    def remember(self, request: RetrievalRequest) -> Any:
        """Compute (or read) the request's history-derived state, keeping it in ``request.memo``."""
        ...


@runtime_checkable
class CatalogScorer(Protocol):
    """A source that scores the whole catalog for a batch of requests (the evaluator's full
    ranking); a request's row is the same alone or in a batch."""

    def score_all(self, requests: Sequence[RetrievalRequest]) -> np.ndarray:
        """float32 (b, n_items): every item's score for each request (history not excluded)."""
        ...


@runtime_checkable
class ItemScorer(Protocol):
    """A source that scores items a caller names, without retrieving (Search's
    ``candidate_item_ids``: the caller's candidates get the per-source features retrieval would
    have given them)."""

    def score_items(self, request: RetrievalRequest, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For ``items`` int64 (m,) catalog indices: float32 (m,) the score :meth:`retrieve` gives
        each, NaN where retrieve would never return it (the request's history or item, no
        matching term, no answer for this request); and int32 (m,) the 1-based rank each would
        have in retrieve's list were ``k`` unlimited (0 where the score is NaN)."""
        ...


def read_source_meta(meta_path: Path, owner: str, format_version: int, catalog: Catalog) -> dict:
    """Read a source's saved JSON metadata, refusing a newer format or another catalog's size."""
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} is missing; was this folder written by {owner}.save?")
    meta = json.loads(meta_path.read_text())
    if meta.get("format_version", 0) > format_version:
        raise ValueError(
            f"{meta_path} has format_version {meta['format_version']}, newer than this code reads "
            f"({format_version}); upgrade tandem or rebuild the bundle"
        )
    if meta["n_items"] != len(catalog):
        raise ValueError(
            f"{meta_path} was fitted on {meta['n_items']} items, the catalog has {len(catalog)}; "
            "load it with the catalog of the same bundle"
        )
    return meta
