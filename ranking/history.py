"""Per-user interaction histories: the bundle's base histories plus live events.

The base part is a CSR snapshot written by the builder; live events recorded by the server
are appended per user under a lock. Readers get numpy copies, so a request never sees a
history change half-way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.data import EVENT_CODE, Catalog, Event, Interactions

__all__ = ["UserHistory", "HistoryStore"]


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


class HistoryStore:
    """Thread-safe user histories over one catalog."""

    def __init__(self, user_ids: list[str], indptr: np.ndarray, items: np.ndarray, ts: np.ndarray,
                 events: np.ndarray, max_len: int = 200) -> None:
        self._user_index = {u: i for i, u in enumerate(user_ids)}
        self._user_ids = list(user_ids)
        self._indptr = np.asarray(indptr, dtype=np.int64)
        self._items = np.asarray(items, dtype=np.int64)
        self._ts = np.asarray(ts, dtype=np.int64)
        self._events = np.asarray(events, dtype=np.int8)
        self._live: dict[str, list[tuple[int, int, int]]] = {}
        self._lock = threading.Lock()
        self.max_len = max_len
        self.newest_ts = int(self._ts.max()) if self._ts.size else 0

    @classmethod
    def from_interactions(cls, interactions: Interactions, max_len: int = 200) -> HistoryStore:
        indptr, rows = interactions.user_sequences()
        return cls(interactions.user_ids, indptr, interactions.items[rows], interactions.ts[rows],
                   interactions.events[rows], max_len=max_len)

    @property
    def user_ids(self) -> list[str]:
        """Every known user: the bundle's users, then users first seen live."""
        with self._lock:
            return self._user_ids + [u for u in self._live if u not in self._user_index]

    @property
    def n_users(self) -> int:
        with self._lock:
            return len(self._user_ids) + sum(1 for u in self._live if u not in self._user_index)

    def knows(self, user_id: str) -> bool:
        with self._lock:
            return user_id in self._user_index or user_id in self._live

    def get(self, user_id: str | None) -> UserHistory:
        """The user's history (base + live), at most ``max_len`` newest events."""
        if user_id is None:
            return UserHistory.empty()
        with self._lock:
            u = self._user_index.get(user_id)
            live = list(self._live.get(user_id, ()))
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
        return base

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
                if len(rows) > 4 * self.max_len:
                    del rows[: len(rows) - self.max_len]
                self.newest_ts = max(self.newest_ts, int(ev.ts))
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
    def load(cls, folder: Path, max_len: int = 200) -> HistoryStore:
        folder = Path(folder)
        with np.load(folder / "histories.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("indptr", "items", "ts", "events")}
        text = (folder / "users.txt").read_text(encoding="utf-8")
        user_ids = text.split("\n")[:-1] if text else []
        return cls(user_ids, max_len=max_len, **arrays)
