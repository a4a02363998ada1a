"""Incremental item-CF: :class:`ItemCF`'s transition similarity kept up to date from live events.

:class:`LiveItemCF` is fed every event the server applies (the pipeline's ``record_events``, so
live ingestion and the event-log replay on a restart or bundle swap take the same path). It keeps
each user's sequence of distinct items (the bundle's base histories, plus live events), and after
each batch recomputes, from those sequences, the rows of the similarity that the batch changed,
then publishes a new matrix in one reference swap: a reader holds either the old matrix or the new
one, never a half-updated row, and the Recommend / SimilarItems read path is :class:`ItemCF`'s,
untouched.

Exactness. A row is recomputed with the batch formula (:meth:`ItemCF._transition`: window,
distance decay, reverse weight, half-life, popularity damping, top-``n_neighbours``, row
normalisation) over every sequence holding its item, so after the events of a batch the matrix
equals ``ItemCF.fit`` over the bundle's events followed by the live ones (float32 values within
float64 rounding, neighbours ranked on those float32 values with ties to the lower column, as the
batch does). Which rows change:

* a new (user, item) pair inserted at position ``p`` of the user's sequence changes the pairs
  whose later item sits at ``>= p``: the rows of the items from ``p - window`` on;
* ``pop_exponent > 0`` divides column ``c`` by ``pop(c) ** pop_exponent`` (``pop`` = distinct
  users): a global normalisation, so a new user of ``c`` lowers ``c`` in *every* row. Exact
  formulation: a row where ``c`` is outside the kept top-k keeps its top-k (``c`` only falls), so
  only the rows whose kept neighbours include ``c`` are recomputed; when ``pop(c)`` falls (an
  evicted user), every row co-occurring with ``c`` is;
* ``half_life_days`` weighs a pair by ``0.5 ** ((newest - ts) / half_life)``: a newer event
  rescales every entry by the same factor. Rows are kept in the frame of the bundle's newest event
  and published scaled by ``0.5 ** ((newest - that) / half_life)`` (an O(nnz) copy per batch that
  moves ``newest``; none with ``row_normalise``, where the factor cancels). In that frame a pair
  weighs twice as much per half-life it is newer than the bundle: float32 holds 128 half-lives.

Cosine and Jaccard similarities are not updated live (:func:`live_supported` says why).

Bounded memory. The bundle's sequences are held once (32 bytes per distinct user-item pair).
Live state is each *live user*'s whole sequence (the bundle's part copied on their first live
event); ``max_entries`` caps the sum of their lengths (measured: about 120 bytes an entry for
users with 20 items, 290 for users with 2, so at most ~450 bytes an entry). Beyond it, the least
recently active live users are evicted: their live events are forgotten by item-CF (their base sequence stands again),
the rows they touched are recomputed, and :attr:`LiveItemCF.evicted_users` /
``evicted_entries`` count them. Item-CF then equals a batch build over the bundle's events plus the
live events of the users still held. The matrix itself keeps ``n_neighbours`` entries per row, as
the bundle's does.

Catalog items added at run time (live catalog updates) get a row and a column when the server
swaps in the grown catalog (:meth:`LiveItemCF.rebind`); from then on their events update item-CF like
any other. Events of items beyond the matrix (none in the server, which refuses unknown items) are
ignored and counted in :attr:`LiveItemCF.ignored_events`.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numba as nb
import numpy as np
import scipy.sparse as sp

from tandem.retrieval.item_cf import ItemCF, ItemCFConfig

__all__ = ["DEFAULT_LIVE_ENTRIES", "LiveEvent", "LiveItemCF", "live_supported"]

log = logging.getLogger(__name__)

#: Default cap on the live users' sequence entries: 60 MB (users with 20 items, ~120 bytes an
#: entry) to 225 MB (users with one item each, ~450 bytes an entry).
DEFAULT_LIVE_ENTRIES = 500_000

_SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One applied event, resolved to the catalog: ``item`` is the catalog index."""

    user_id: str
    item: int
    ts: int


def live_supported(config: ItemCFConfig) -> str | None:
    """Why item-CF with ``config`` cannot be updated live, or None when it can."""
    if config.similarity != "transition":
        return (f"item_cf.similarity = {config.similarity!r} normalises by both items' user counts over "
                "every pair; only the transition similarity is updated live")
    return None


class _Sequence:
    """One live user's distinct items, oldest first: ``items`` int64 and ``ts`` int64 (first time)."""

    __slots__ = ("items", "ts", "base")

    def __init__(self, items: np.ndarray, ts: np.ndarray, base: int) -> None:
        self.items = items
        self.ts = ts
        self.base = base  # the user's index in the base histories, or -1


class LiveItemCF:
    """Keeps ``source.similarity`` equal to a batch fit over the base and the live events.

    ``indptr`` int64 (n_users + 1,), ``items`` int64 and ``ts`` int64 (m,): the base histories
    (each user's events in time order, ties in file order), ``user_index`` their user ids. Thread-safe:
    :meth:`record` serialises writers; readers read ``source.similarity`` without a lock.
    """

    def __init__(self, source: ItemCF, user_index: Mapping[str, int], indptr: np.ndarray, items: np.ndarray,
                 ts: np.ndarray, max_entries: int = DEFAULT_LIVE_ENTRIES) -> None:
        reason = live_supported(source.config)
        if reason is not None:
            raise ValueError(f"live item-CF: {reason}")
        self.source = source
        self.config: ItemCFConfig = source.config
        self.n = source.n_items
        self.max_entries = _check_cap(max_entries)
        self._user_index = user_index
        self._lock = threading.Lock()
        c = self.config
        self._decay = np.array([c.distance_decay ** (d - 1) for d in range(1, c.window + 1)], dtype=np.float64)
        self._base_sequences(np.asarray(indptr, dtype=np.int64), np.asarray(items, dtype=np.int64),
                             np.asarray(ts, dtype=np.int64))
        self._live: OrderedDict[str, _Sequence] = OrderedDict()  # least recently active first
        self._live_inv: dict[int, set[str]] = {}
        self.entries = 0
        self.evicted_users = 0
        self.evicted_entries = 0
        self.ignored_events = 0
        self.rows_recomputed = 0
        self.batches = 0
        # rows are computed in the frame of the base's newest event (see the module docstring)
        self._ref_matrix = source.similarity
        one = np.zeros(1, np.int64)
        self._pairs(one, one, one, one, one + 1, 1.0, [], [])  # compiles (or loads) the kernel now

    @classmethod
    def for_interactions(cls, source: ItemCF, interactions: object, max_entries: int = DEFAULT_LIVE_ENTRIES
                         ) -> LiveItemCF:
        """Over the base histories of ``interactions`` (a :class:`~tandem.retrieval.data.Interactions`)."""
        indptr, rows = interactions.user_sequences()  # type: ignore[attr-defined]
        return cls(source, interactions.user_index, indptr, interactions.items[rows],  # type: ignore[attr-defined]
                   interactions.ts[rows], max_entries)  # type: ignore[attr-defined]

    # -- base --------------------------------------------------------------------------------
    def _base_sequences(self, indptr: np.ndarray, items: np.ndarray, ts: np.ndarray) -> None:
        n_users = indptr.shape[0] - 1
        users = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(indptr))
        keep = (items >= 0) & (items < self.n)
        users, items, ts = users[keep], items[keep], ts[keep]
        self._newest_base = int(ts.max()) if ts.size else 0
        self.newest = self._newest_base
        _, first = np.unique(users * (self.n + 1) + items, return_index=True)
        first.sort()  # rows are in (user, time) order: the first occurrence of each pair, in order
        self._d_items, self._d_ts = items[first], ts[first]
        d_users = users[first]
        self._d_indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(d_users, minlength=n_users), out=self._d_indptr[1:])
        order = np.argsort(self._d_items, kind="stable")
        self._inv_users = d_users[order]
        self._inv_pos = order - self._d_indptr[d_users[order]]
        self._inv_indptr = np.zeros(self.n + 1, dtype=np.int64)
        np.cumsum(np.bincount(self._d_items, minlength=self.n), out=self._inv_indptr[1:])
        self._touched = np.zeros(n_users, dtype=bool)  # base users whose sequence is live now
        self.pop = np.bincount(self._d_items, minlength=self.n).astype(np.float64)

    def _base_of(self, u: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self._d_indptr[u], self._d_indptr[u + 1]
        return self._d_items[s:e], self._d_ts[s:e]

    # -- stats -------------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters for metrics and status: live users and entries, evictions, ignored events."""
        with self._lock:
            return {"live_users": len(self._live), "live_entries": self.entries, "max_entries": self.max_entries,
                    "evicted_users": self.evicted_users, "evicted_entries": self.evicted_entries,
                    "ignored_events": self.ignored_events, "rows_recomputed": self.rows_recomputed,
                    "batches": self.batches}

    def resize(self, max_entries: int) -> None:
        """Cap the live entries at ``max_entries`` from now on (evicting at once if above)."""
        with self._lock:
            self.max_entries = _check_cap(max_entries)
            dirty: set[int] = set()
            pop_down: set[int] = set()
            self._evict(dirty, pop_down, keep=None)
            self._publish(dirty, set(), pop_down, self.newest)

    def rebind(self, source: ItemCF) -> None:
        """Publish into ``source`` from now on: the copy of the item-CF source that a live catalog
        change made (tandem.retrieval.live_items), whose matrix has rows and columns for the items it
        added. Items up to its size are updated from then on (new items have no base events); the
        live sequences, counters and the reference frame carry over."""
        with self._lock:
            n = source.n_items
            if n < self.n:
                raise ValueError(f"live item-CF: cannot shrink from {self.n} to {n} items")
            if n > self.n:
                extra = n - self.n
                self.pop = np.concatenate([self.pop, np.zeros(extra)])
                self._inv_indptr = np.concatenate([self._inv_indptr, np.full(extra, self._inv_indptr[-1])])
                m = self._ref_matrix
                self._ref_matrix = sp.csr_matrix(
                    (m.data, m.indices, np.concatenate([m.indptr, np.full(extra, m.indptr[-1])])), shape=(n, n))
                self._ref_matrix.has_sorted_indices = True
                self.n = n
            self.source = source
            source.live = self

    # -- writing -----------------------------------------------------------------------------
    def record(self, events: Iterable[LiveEvent]) -> int:
        """Apply ``events`` (in arrival order) and publish the changed rows; returns how many
        changed a sequence."""
        with self._lock:
            dirty: set[int] = set()
            pop_up: set[int] = set()
            pop_down: set[int] = set()
            newest = self.newest
            changed = 0
            for ev in events:
                i = int(ev.item)
                if not 0 <= i < self.n:
                    self.ignored_events += 1
                    continue
                newest = max(newest, int(ev.ts))
                if self._apply(ev.user_id, i, int(ev.ts), dirty, pop_up):
                    changed += 1
                if self.entries > self.max_entries:
                    self._evict(dirty, pop_down, keep=ev.user_id)
            self._publish(dirty, pop_up, pop_down, newest)
            return changed

    def _sequence(self, user_id: str) -> _Sequence:
        seq = self._live.get(user_id)
        if seq is not None:
            self._live.move_to_end(user_id)
            return seq
        u = self._user_index.get(user_id, -1)
        if u >= 0:
            items, ts = self._base_of(u)
            items, ts = items.copy(), ts.copy()
            self._touched[u] = True
        else:
            items, ts = np.zeros(0, np.int64), np.zeros(0, np.int64)
        seq = self._live[user_id] = _Sequence(items, ts, u)
        for i in items.tolist():
            self._live_inv.setdefault(i, set()).add(user_id)
        self.entries += items.shape[0]
        return seq

    def _apply(self, user_id: str, i: int, ts: int, dirty: set[int], pop_up: set[int]) -> bool:
        seq = self._sequence(user_id)
        w = self.config.window
        where = np.flatnonzero(seq.items == i)
        if where.size:
            old = int(where[0])
            if ts >= seq.ts[old]:
                return False  # not earlier than its first time: the sequence stands
            dirty.update(seq.items[max(0, old - w):].tolist())  # covers every row the move touches
            items, times = np.delete(seq.items, old), np.delete(seq.ts, old)
        else:
            items, times = seq.items, seq.ts
            self.pop[i] += 1
            pop_up.add(i)
            self._live_inv.setdefault(i, set()).add(user_id)
            self.entries += 1
        p = int(np.searchsorted(times, ts, side="right"))  # equal times: after the earlier arrivals
        seq.items, seq.ts = np.insert(items, p, i), np.insert(times, p, ts)
        dirty.update(seq.items[max(0, p - w):].tolist())
        return True

    def _evict(self, dirty: set[int], pop_down: set[int], keep: str | None) -> None:
        while self.entries > self.max_entries and self._live:
            user_id = next(iter(self._live))
            if user_id == keep:
                if len(self._live) == 1:
                    return
                self._live.move_to_end(user_id)
                continue
            seq = self._live.pop(user_id)
            base_items = self._base_of(seq.base)[0] if seq.base >= 0 else np.zeros(0, np.int64)
            if seq.base >= 0:
                self._touched[seq.base] = False
            in_base = set(base_items.tolist())
            for i in seq.items.tolist():
                users = self._live_inv.get(i)
                if users is not None:
                    users.discard(user_id)
                    if not users:
                        del self._live_inv[i]
                if i not in in_base:
                    self.pop[i] -= 1
                    pop_down.add(i)
            dirty.update(seq.items.tolist())
            self.entries -= seq.items.shape[0]
            self.evicted_users += 1
            self.evicted_entries += seq.items.shape[0]

    # -- rows --------------------------------------------------------------------------------
    def _contributions(self, r: int, reverse: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every (column, weight) pair row ``r``'s raw counts sum, in the reference frame
        (``reverse`` in place of ``reverse_weight`` when given)."""
        rw = self.config.reverse_weight if reverse is None else reverse
        cols: list[np.ndarray] = []
        wts: list[np.ndarray] = []
        s, e = self._inv_indptr[r], self._inv_indptr[r + 1]
        users, pos = self._inv_users[s:e], self._inv_pos[s:e]
        keep = ~self._touched[users]
        users, pos = users[keep], pos[keep]
        if users.size:
            start = self._d_indptr[users]
            self._pairs(self._d_items, self._d_ts, start, start + pos, self._d_indptr[users + 1], rw, cols, wts)
        for user_id in self._live_inv.get(r, ()):
            seq = self._live[user_id]
            p = np.flatnonzero(seq.items == r)
            self._pairs(seq.items, seq.ts, np.zeros(1, np.int64), p.astype(np.int64),
                        np.array([seq.items.shape[0]], np.int64), rw, cols, wts)
        if not cols:
            return np.zeros(0, np.int64), np.zeros(0, np.float64)
        return np.concatenate(cols), np.concatenate(wts)

    def _pairs(self, items: np.ndarray, ts: np.ndarray, start: np.ndarray, at: np.ndarray, end: np.ndarray,
               reverse: float, cols: list[np.ndarray], wts: list[np.ndarray]) -> None:
        """The pairs of the item at flat positions ``at`` (of sequences ``[start, end)``) with the
        items up to ``window`` after it (weight ``decay ** (d-1)``) and before it (times ``reverse``)."""
        h = self.config.half_life_days
        c, w = _pair_weights(items, ts, start, at, end, self._decay, float(reverse),
                             -1.0 if h is None else float(h), self._newest_base)
        cols.append(c)
        wts.append(w)

    def _row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Row ``r`` as the batch computes it (reference frame): columns int32 ascending, values float32."""
        c = self.config
        cols, wts = self._contributions(r)
        if cols.size == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.float32)
        if cols.size * 8 > self.n:  # many pairs: a dense sum beats sorting them
            sums = np.bincount(cols, weights=wts, minlength=self.n)
            cols = np.flatnonzero(sums)
            sums = sums[cols]
        else:
            cols, inverse = np.unique(cols, return_inverse=True)
            sums = np.bincount(inverse, weights=wts)
        keep = cols != r
        cols, sums = cols[keep], sums[keep]
        if c.pop_exponent > 0:
            sums = sums * (1.0 / np.maximum(self.pop[cols], 1.0) ** c.pop_exponent)
        order = np.lexsort((cols, -sums.astype(np.float32)))[: c.n_neighbours]
        cols, sums = cols[order], sums[order]
        back = np.argsort(cols)
        cols, sums = cols[back], sums[back]
        if c.row_normalise:
            total = sums.sum()
            sums = sums * (1.0 / total if total > 0 else 1.0)
        return cols.astype(np.int32), sums.astype(np.float32)

    def _co_items(self, i: int) -> set[int]:
        """Every item within ``window`` of ``i`` in some sequence (the rows that may hold column ``i``)."""
        out = set(self._contributions(i, reverse=1.0)[0].tolist())  # both directions, whatever reverse_weight
        out.discard(i)
        return out

    def _rows_holding(self, column: int, rows: set[int]) -> set[int]:
        """Those of ``rows`` whose kept neighbours include ``column`` (reference matrix)."""
        m = self._ref_matrix
        out = set()
        for r in rows:
            lo, hi = m.indptr[r], m.indptr[r + 1]
            k = lo + int(np.searchsorted(m.indices[lo:hi], column))
            if k < hi and m.indices[k] == column:
                out.add(r)
        return out

    def _publish(self, dirty: set[int], pop_up: set[int], pop_down: set[int], newest: int) -> None:
        c = self.config
        if c.pop_exponent > 0:
            for i in pop_down:
                dirty |= self._co_items(i)
            for i in pop_up - pop_down:
                dirty |= self._rows_holding(i, self._co_items(i))
        moved = newest != self.newest
        self.newest = newest
        if not dirty and not (moved and self._scaled):
            return
        rows = np.array(sorted(dirty), dtype=np.int64)
        new = [self._row(int(r)) for r in rows]
        self._ref_matrix = _replace_rows(self._ref_matrix, rows, new)
        self.rows_recomputed += rows.size
        self.batches += 1
        published = self._ref_matrix
        if self._scaled:
            g = 0.5 ** ((self.newest - self._newest_base) / _SECONDS_PER_DAY / c.half_life_days)
            published = sp.csr_matrix(((published.data.astype(np.float64) * g).astype(np.float32),
                                       published.indices, published.indptr), shape=published.shape)
            published.has_sorted_indices = True
        self.source.similarity = published  # one reference swap: readers see the old or the new matrix

    @property
    def _scaled(self) -> bool:
        return self.config.half_life_days is not None and not self.config.row_normalise


@nb.njit(nogil=True, cache=True)
def _pair_weights(items, ts, start, at, end, decay, reverse, half_life_days, newest):  # pragma: no cover - compiled
    """For each flat position ``at[k]`` of a sequence ``[start[k], end[k])`` of ``items`` (first
    times ``ts``): the items up to ``window = decay.size`` after it, weighted ``decay[d - 1]``, and
    (``reverse`` > 0) those before it, weighted ``decay[d - 1] * reverse``; each times
    ``0.5 ** (age_days / half_life_days)`` of the later item when ``half_life_days`` > 0, as
    :meth:`ItemCF._transition` weighs them. Returns ``cols`` int64 and ``weights`` float64."""
    w = decay.shape[0]
    m = at.shape[0]
    cols = np.empty(m * w * 2, dtype=np.int64)
    wts = np.empty(m * w * 2, dtype=np.float64)
    n = 0
    for k in range(m):
        a = at[k]
        for d in range(w):
            j = a + d + 1
            if j >= end[k]:
                break
            x = decay[d]
            if half_life_days > 0:
                x = x * 0.5 ** (((newest - ts[j]) / _SECONDS_PER_DAY) / half_life_days)
            cols[n] = items[j]
            wts[n] = x
            n += 1
        if reverse > 0:
            hl = 1.0
            if half_life_days > 0:
                hl = 0.5 ** (((newest - ts[a]) / _SECONDS_PER_DAY) / half_life_days)
            for d in range(w):
                j = a - d - 1
                if j < start[k]:
                    break
                cols[n] = items[j]
                wts[n] = (decay[d] * hl) * reverse
                n += 1
    return cols[:n], wts[:n]


def _check_cap(max_entries: int) -> int:
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 0:
        raise ValueError(f"item_cf_live_entries must be an integer >= 0 (live sequence entries kept), "
                         f"got {max_entries!r}")
    return max_entries


def _replace_rows(m: sp.csr_matrix, rows: np.ndarray, new: list[tuple[np.ndarray, np.ndarray]]) -> sp.csr_matrix:
    """A copy of ``m`` (sorted indices) with ``rows`` (ascending) replaced by ``new`` (columns, values)."""
    if rows.size == 0:
        return m
    lengths = np.diff(m.indptr)
    lengths[rows] = [c.shape[0] for c, _ in new]
    indptr = np.zeros(m.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=indptr[1:])
    idx_parts, data_parts = [], []
    prev = 0
    for r, (cols, vals) in zip(rows.tolist(), new, strict=True):
        idx_parts += [m.indices[m.indptr[prev]: m.indptr[r]], cols]
        data_parts += [m.data[m.indptr[prev]: m.indptr[r]], vals]
        prev = r + 1
    idx_parts.append(m.indices[m.indptr[prev]:])
    data_parts.append(m.data[m.indptr[prev]:])
    indices = np.concatenate(idx_parts).astype(m.indices.dtype, copy=False)
    if indices.size < np.iinfo(np.int32).max:
        indptr = indptr.astype(np.int32)
    out = sp.csr_matrix((np.concatenate(data_parts).astype(np.float32, copy=False), indices, indptr),
                        shape=m.shape)
    out.has_sorted_indices = True
    return out


