"""Sequence windows of the two-tower model: users' training sequences cut into left-padded
windows, and the one window of a request's history, as int64 arrays."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Interactions
from tandem.retrieval.two_tower_model import EVENT_UNKNOWN, gap_buckets, length_buckets

__all__: list[str] = []


@dataclass
class _Batch:
    """Left-padded windows; rows are 1-based item rows (0 = padding), all int64 (b, l)."""

    items: np.ndarray
    events: np.ndarray
    gaps: np.ndarray
    lengths: np.ndarray
    recency: np.ndarray


def _distinct(items: np.ndarray, ts: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, ...]:
    """One history -> its distinct items in first-interaction order, with the first timestamp
    and the strongest event code per item."""
    uniq, first, inv = np.unique(items, return_index=True, return_inverse=True)
    strongest = np.full(uniq.shape[0], -1, dtype=np.int64)
    np.maximum.at(strongest, inv, events.astype(np.int64))
    order = np.argsort(first, kind="stable")
    return uniq[order], ts[first[order]], strongest[order]


def _request_arrays(req: RetrievalRequest, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    hist = np.asarray(req.history, dtype=np.int64)
    h = hist.shape[0]
    ts = np.asarray(req.history_ts, dtype=np.int64)
    has_ts = ts.shape == (h,) and h > 0
    if not has_ts:
        ts = np.zeros(h, dtype=np.int64)
    ev = np.asarray(req.history_events, dtype=np.int64)
    if ev.shape != (h,):
        ev = np.full(h, -1, dtype=np.int64)
    keep = (hist >= 0) & (hist < n_items)
    items, ts, ev = _distinct(hist[keep], ts[keep], ev[keep])
    return items, ts, ev, has_ts


def _window(
    items: np.ndarray, ts: np.ndarray, ev: np.ndarray, has_ts: bool, now: int | None, max_len: int
) -> tuple[np.ndarray, ...]:
    """Right-aligned model inputs of one distinct history (the last ``max_len`` items)."""
    n = items.shape[0]
    lo = max(0, n - max_len)
    it, t, e = items[lo:] + 1, ts[lo:], ev[lo:]
    prev_known = np.arange(lo, n) > 0
    prev_ts = np.concatenate([ts[lo - 1 : lo] if lo > 0 else np.zeros(1, dtype=np.int64), t[:-1]])
    gaps = gap_buckets(t - prev_ts, prev_known & has_ts)
    events = np.where(e >= 0, e + 1, EVENT_UNKNOWN)
    length = length_buckets(np.arange(lo + 1, n + 1))
    recency = np.ones(it.shape[0], dtype=np.int64)
    if now is not None and has_ts and n:
        recency[-1] = gap_buckets(np.array([now - ts[-1]]), np.array([True]))[0]
    return it, events, gaps, length, recency


def _stack(windows: Sequence[tuple[np.ndarray, ...]], width: int) -> _Batch:
    b = len(windows)
    arrays = [np.zeros((b, width), dtype=np.int64) for _ in range(5)]
    for r, win in enumerate(windows):
        n = win[0].shape[0]
        if n:
            for a, w in zip(arrays, win, strict=True):
                a[r, width - n :] = w
    return _Batch(*arrays)


def _training_windows(interactions: Interactions, n_items: int, max_len: int) -> tuple[_Batch, np.ndarray]:
    """Every user's distinct training sequence cut into windows of ``max_len + 1`` (the
    window's items are the inputs of its next positions). Returns the stacked windows
    (width max_len + 1) and per-window non-padding lengths."""
    indptr, rows = interactions.user_sequences()
    items_all, ts_all, ev_all = interactions.items, interactions.ts, interactions.events
    windows = []
    width = max_len + 1
    for u in range(interactions.n_users):
        r = rows[indptr[u] : indptr[u + 1]]
        if r.shape[0] < 2:
            continue
        items, ts, ev = _distinct(items_all[r].astype(np.int64), ts_all[r], ev_all[r])
        n = items.shape[0]
        if n < 2:
            continue
        it = items + 1
        prev_ts = np.concatenate([ts[:1], ts[:-1]])
        known = np.arange(n) > 0
        gaps = gap_buckets(ts - prev_ts, known)
        events = np.where(ev >= 0, ev + 1, EVENT_UNKNOWN)
        length = length_buckets(np.arange(1, n + 1))
        # the time from an item to the next event is what "now - last event" is at serving
        recency = np.ones(n, dtype=np.int64)
        recency[:-1] = gap_buckets(ts[1:] - ts[:-1], np.ones(n - 1, dtype=bool))
        for end in range(n, 1, -max_len):
            lo = max(0, end - width)
            windows.append(tuple(a[lo:end] for a in (it, events, gaps, length, recency)))
    batch = _stack(windows, width)
    return batch, (batch.items > 0).sum(1)
