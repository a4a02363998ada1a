"""Per-user interaction histories: the bundle's base histories plus live events.

The base part is a CSR snapshot written by the builder; live events recorded by the server
are appended per user under a lock. Readers get numpy copies, so a request never sees a
history change half-way.

Live events are capped per user: at most ``live_max`` (default ``max_len``) of a user's newest
live events (by ``ts``; equal times by arrival) are kept; a request never reads more than the
``max_len`` newest of base and live together, so a cap of ``max_len`` loses nothing a request
could see. The list is trimmed when it reaches twice the cap, so memory stays below
``2 * live_max`` events a user. (The number of users with live events is not capped: it grows
until the next bundle is loaded, when the event log is replayed into fresh stores.)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tandem.retrieval.data import EVENT_CODE, Catalog, Event, Interactions

__all__ = ["UserHistory", "HistoryStore", "UserMemos", "DEFAULT_USER_MEMOS"]

#: Users whose memos are kept by default (about 10 KB each on the 100k-item shop).
DEFAULT_USER_MEMOS = 50_000


@dataclass(frozen=True)
class UserHistory:
    """``items`` int64 (h,), ``ts`` int64 (h,), ``events`` int8 (h,), oldest first."""

    items: np.ndarray
    ts: np.ndarray
    events: np.ndarray

    @classmethod
    def empty(cls) -> UserHistory:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int8))

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def extend(self, items: np.ndarray, ts: np.ndarray, events: np.ndarray) -> UserHistory:
        if items.shape[0] == 0:
            return self
        items_ = np.concatenate([self.items, items])
        ts_ = np.concatenate([self.ts, ts])
        ev_ = np.concatenate([self.events, events])
        order = np.argsort(ts_, kind="stable")
        return UserHistory(items_[order], ts_[order], ev_[order])


def _ts_of(row: tuple[int, int, int]) -> int:
    return row[1]


class HistoryStore:
    """Thread-safe user histories over one catalog."""

    def __init__(self, user_ids: list[str], indptr: np.ndarray, items: np.ndarray, ts: np.ndarray,
                 events: np.ndarray, max_len: int = 200, live_max: int | None = None) -> None:
        if max_len < 1:
            raise ValueError(f"history max_len must be >= 1, got {max_len}")
        if live_max is not None and live_max < 1:
            raise ValueError(f"history live_max must be >= 1 (live events kept per user), got {live_max}")
        self._user_index = {u: i for i, u in enumerate(user_ids)}
        self._user_ids = list(user_ids)
        self._indptr = np.asarray(indptr, dtype=np.int64)
        self._items = np.asarray(items, dtype=np.int64)
        self._ts = np.asarray(ts, dtype=np.int64)
        self._events = np.asarray(events, dtype=np.int8)
        self._live: dict[str, list[tuple[int, int, int]]] = {}
        self._versions: dict[str, int] = {}  # user -> clock value of the user's newest live event
        self._clock = 0
        self._lock = threading.Lock()
        self.max_len = max_len
        self.live_max = max_len if live_max is None else int(live_max)
        self.newest_ts = int(self._ts.max()) if self._ts.size else 0

    @classmethod
    def from_interactions(cls, interactions: Interactions, max_len: int = 200,
                          live_max: int | None = None) -> HistoryStore:
        indptr, rows = interactions.user_sequences()
        return cls(interactions.user_ids, indptr, interactions.items[rows], interactions.ts[rows],
                   interactions.events[rows], max_len=max_len, live_max=live_max)

    @property
    def user_ids(self) -> list[str]:
        """Every known user: the bundle's users, then users first seen live."""
        with self._lock:
            return self._user_ids + [u for u in self._live if u not in self._user_index]

    @property
    def n_users(self) -> int:
        with self._lock:
            return len(self._user_ids) + sum(1 for u in self._live if u not in self._user_index)

    def most_recent_users(self, n: int) -> list[str]:
        """Up to ``n`` users with a history, the most recently active first."""
        with self._lock:
            lengths = np.diff(self._indptr)
            last = np.where(lengths > 0, self._ts[np.maximum(self._indptr[1:] - 1, 0)], np.iinfo(np.int64).min)
            newest = dict(zip(self._user_ids, last.tolist(), strict=True))
            for u, rows in self._live.items():
                if rows:
                    newest[u] = max(newest.get(u, np.iinfo(np.int64).min), max(r[1] for r in rows))
        ranked = sorted((u for u, t in newest.items() if t > np.iinfo(np.int64).min), key=lambda u: -newest[u])
        return ranked[: max(0, n)]

    def base_arrays(self) -> tuple[dict[str, int], np.ndarray, np.ndarray, np.ndarray]:
        """The bundle's histories, read-only: ``(user id -> user index, indptr int64 (n_users + 1,),
        items int64 (m,), ts int64 (m,))``, each user's events in time order (ties in file order)."""
        return self._user_index, self._indptr, self._items, self._ts

    def live_count(self, user_id: str) -> int:
        """Live events held for ``user_id`` (at most ``2 * live_max``)."""
        with self._lock:
            return len(self._live.get(user_id, ()))

    def knows(self, user_id: str) -> bool:
        with self._lock:
            return user_id in self._user_index or user_id in self._live

    def get(self, user_id: str | None) -> UserHistory:
        """The user's history (base + live), at most ``max_len`` newest events."""
        return self.get_versioned(user_id)[0]

    def get_versioned(self, user_id: str | None) -> tuple[UserHistory, int]:
        """The user's history and its version: a number that changes whenever an event is
        recorded for the user (0 while only the bundle's history exists), read together."""
        if user_id is None:
            return UserHistory.empty(), 0
        with self._lock:
            u = self._user_index.get(user_id)
            live = list(self._live.get(user_id, ()))
            version = self._versions.get(user_id, 0)
        if u is None:
            base = UserHistory.empty()
        else:
            s, e = self._indptr[u], self._indptr[u + 1]
            base = UserHistory(self._items[s:e], self._ts[s:e], self._events[s:e])
        if live:
            arr = np.array(live, dtype=np.int64)
            base = base.extend(arr[:, 0], arr[:, 1], arr[:, 2].astype(np.int8))
        if len(base) > self.max_len:
            base = UserHistory(base.items[-self.max_len:], base.ts[-self.max_len:], base.events[-self.max_len:])
        return base, version

    def record(self, events: Iterable[Event], catalog: Catalog) -> int:
        """Append events on known items; returns how many were applied."""
        applied = 0
        with self._lock:
            for ev in events:
                i = catalog.index.get(ev.item_id)
                if i is None:
                    continue
                rows = self._live.setdefault(ev.user_id, [])
                rows.append((i, int(ev.ts), EVENT_CODE.get(ev.event, EVENT_CODE["purchase"])))
                if len(rows) >= 2 * self.live_max:
                    rows.sort(key=_ts_of)  # stable: equal times keep their arrival order
                    del rows[: len(rows) - self.live_max]
                self.newest_ts = max(self.newest_ts, int(ev.ts))
                self._clock += 1
                self._versions[ev.user_id] = self._clock
                applied += 1
        return applied

    def save(self, folder: Path) -> list[Path]:
        """Base histories as npz (live events live in the server's event log, not here)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "histories.npz"
        np.savez(path, indptr=self._indptr, items=self._items, ts=self._ts, events=self._events)
        users = folder / "users.txt"
        users.write_text("\n".join(self._user_ids) + ("\n" if self._user_ids else ""), encoding="utf-8")
        return [path, users]

    @classmethod
    def load(cls, folder: Path, max_len: int = 200, live_max: int | None = None) -> HistoryStore:
        folder = Path(folder)
        with np.load(folder / "histories.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("indptr", "items", "ts", "events")}
        text = (folder / "users.txt").read_text(encoding="utf-8")
        user_ids = text.split("\n")[:-1] if text else []
        return cls(user_ids, max_len=max_len, live_max=live_max, **arrays)


class UserMemos:
    """Per-user scratch dicts for ``RetrievalRequest.memo``, one per (user, history version).

    A source keeps there what it derives from the user's history alone (the two-tower user
    vector, the text profile, the ranking features' history summary), so that while the
    history is unchanged a request only searches and scores. A newer history version gets a
    fresh dict. At most ``capacity`` users are kept, the least recently asked dropped first;
    ``capacity`` 0 keeps nothing. Thread-safe.
    """

    def __init__(self, capacity: int = DEFAULT_USER_MEMOS) -> None:
        self._memos: OrderedDict[str, tuple[int, dict]] = OrderedDict()
        self._lock = threading.Lock()
        self.capacity = 0
        self.resize(capacity)
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._memos)

    def resize(self, capacity: int) -> None:
        """Keep at most ``capacity`` users from now on (the least recently asked go first)."""
        if capacity < 0:
            raise ValueError(f"user memo capacity must be >= 0, got {capacity}")
        with self._lock:
            self.capacity = int(capacity)
            while len(self._memos) > self.capacity:
                self._memos.popitem(last=False)

    def get(self, user_id: str, version: int) -> dict | None:
        """The memo of ``user_id`` at history ``version`` (a new empty one on a miss); None
        when the capacity is 0."""
        if self.capacity == 0:
            return None
        with self._lock:
            entry = self._memos.get(user_id)
            if entry is not None and entry[0] == version:
                self._memos.move_to_end(user_id)
                self.hits += 1
                return entry[1]
            memo: dict = {}
            self._memos[user_id] = (version, memo)
            self._memos.move_to_end(user_id)
            while len(self._memos) > self.capacity:
                self._memos.popitem(last=False)
            self.misses += 1
            return memo
