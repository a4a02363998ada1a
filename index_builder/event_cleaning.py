"""Event cleaning on compact typed columns: events on unknown items, exact duplicates, bot-like
users and optional k-core filtering dropped, each counted (docs/data.md, "Cleaning")."""

from __future__ import annotations

import logging
import math
import time
from array import array
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from tandem.index_builder.cleaning_config import MAD_TO_SIGMA, CleaningConfig
from tandem.index_builder.cleaning_report import CleaningReport
from tandem.index_builder.readers import EventRow, ReadError, ReadStats
from tandem.retrieval.data import EVENT_CODE, Catalog, Event, Interactions

__all__ = ["EventColumns", "extra_rows", "clean_events", "flag_bots"]

_log = logging.getLogger("tandem.index_builder.cleaning")
_TS_LIMIT = 100_000_000_000  # as the readers: from here on it is not seconds (year 5138)


class EventColumns:
    """Append-only typed columns with interned user and item ids (about 21 bytes a row)."""

    def __init__(self) -> None:
        self.user_index: dict[str, int] = {}
        self.item_index: dict[str, int] = {}
        self.users = array("i")
        self.items = array("i")
        self.ts = array("q")
        self.events = array("b")
        self.values = array("f")

    def extend(self, rows: Iterable[EventRow]) -> int:
        users, items = self.user_index, self.item_index
        ua, ia, ta = self.users.append, self.items.append, self.ts.append
        ea, va = self.events.append, self.values.append
        n0 = len(self.users)
        for u, i, t, c, v in rows:
            ui = users.get(u)
            if ui is None:
                ui = users[u] = len(users)
            ii = items.get(i)
            if ii is None:
                ii = items[i] = len(items)
            ua(ui)
            ia(ii)
            ta(t)
            ea(c)
            va(v)
        return len(self.users) - n0

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The columns as numpy arrays (users, vocabulary items, ts, events, values); the object
        lets go of them, so the first filtered copy can free the originals."""
        out = (np.frombuffer(self.users, dtype=np.int32), np.frombuffer(self.items, dtype=np.int32),
               np.frombuffer(self.ts, dtype=np.int64), np.frombuffer(self.events, dtype=np.int8),
               np.frombuffer(self.values, dtype=np.float32))
        del self.users, self.items, self.ts, self.events, self.values
        return out


def extra_rows(events: Iterable[Event], strict: bool, stats: ReadStats) -> Iterator[EventRow]:
    """Rows of already-made Event objects, checked as the readers check file rows."""
    nan = float("nan")
    for n, e in enumerate(events, 1):
        stats.rows_read += 1
        code = EVENT_CODE.get(e.event) if isinstance(e.event, str) else None
        problem = None
        if not (isinstance(e.user_id, str) and e.user_id):
            problem = ("user_id", f"expected a non-empty string id, got {e.user_id!r}")
        elif not (isinstance(e.item_id, str) and e.item_id):
            problem = ("item_id", f"expected a non-empty string id, got {e.item_id!r}")
        elif isinstance(e.ts, bool) or not isinstance(e.ts, int) or not 0 <= e.ts < _TS_LIMIT:
            problem = ("ts", f"expected int epoch seconds from 1970 on, got {e.ts!r}")
        elif code is None:
            problem = ("event", f"expected one of {', '.join(EVENT_CODE)}, got {e.event!r}")
        elif e.value is not None and not (isinstance(e.value, int | float) and math.isfinite(e.value)):
            problem = ("value", f"expected a finite number or nothing, got {e.value!r}")
        if problem is not None:
            err = ReadError(stats.file, n, *problem)
            if strict:
                raise err
            stats.add(err)
            continue
        stats.rows_ok += 1
        yield (e.user_id, e.item_id, e.ts, code, nan if e.value is None else float(e.value))  # type: ignore[misc]


def _robust_z(x: np.ndarray, min_scale: float) -> np.ndarray:
    m = np.median(x)
    scale = max(MAD_TO_SIGMA * float(np.median(np.abs(x - m))), min_scale)
    return (x - m) / scale


def _active_hours(users: np.ndarray, ts: np.ndarray, n_users: int) -> np.ndarray:
    """Distinct clock hours with at least one event, per user: int64 (n_users,)."""
    if len(users) == 0:
        return np.zeros(n_users, dtype=np.int64)
    hours = ts // 3600
    h0 = int(hours.min())
    span = int(hours.max()) - h0 + 1
    if n_users * span < 2**62:
        hours -= h0  # in place: this becomes the (user, hour) key
        base = users.astype(np.int64)
        base *= span
        hours += base
        del base
        hours.sort()  # in place; np.unique would allocate several times more
        first = np.ones(len(hours), dtype=bool)
        np.not_equal(hours[1:], hours[:-1], out=first[1:])
        uniq = hours[first]
        del hours, first
        uniq //= span
        return np.bincount(uniq, minlength=n_users)
    order = np.lexsort((hours, users))
    u, h = users[order], hours[order]
    new = np.ones(len(u), dtype=bool)
    new[1:] = (u[1:] != u[:-1]) | (h[1:] != h[:-1])
    return np.bincount(u[new], minlength=n_users)


def _find_bots(users: np.ndarray, ts: np.ndarray, user_ids: list[str],
               config: CleaningConfig) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Bool (n_users,) of bot-like users and their report entries (most events first)."""
    n_users = len(user_ids)
    counts = np.bincount(users, minlength=n_users)
    hours = _active_hours(users, ts, n_users)
    return flag_bots(counts, hours, user_ids, config)


def flag_bots(counts: np.ndarray, hours: np.ndarray, user_ids: list[str],
              config: CleaningConfig) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The bot rule on per-user totals: ``counts`` and ``hours`` int64 (n_users,) events and distinct
    active clock hours of each user of ``user_ids``. Returns bool (n_users,) and the report entries
    (most events first). Shared by the local and the Spark engine."""
    n_users = len(user_ids)
    active = np.flatnonzero(counts > 0)
    bots = np.zeros(n_users, dtype=bool)
    if len(active) == 0:
        return bots, []
    rate = counts[active] / np.maximum(hours[active], 1)
    z_count = _robust_z(np.log(counts[active]), config.bot_min_scale)
    z_rate = _robust_z(np.log(rate), config.bot_min_scale)
    by_count = (z_count > config.bot_max_z) & (counts[active] >= config.bot_min_events)
    by_rate = (z_rate > config.bot_max_z) & (rate >= config.bot_min_hourly_rate)
    flagged = by_count | by_rate
    bots[active[flagged]] = True
    entries = []
    for j in np.flatnonzero(flagged).tolist():
        u = int(active[j])
        entries.append({
            "user_id": user_ids[u], "events": int(counts[u]), "active_hours": int(hours[u]),
            "events_per_active_hour": round(float(rate[j]), 2),
            "z_count": round(float(z_count[j]), 2), "z_rate": round(float(z_rate[j]), 2),
            "reasons": [r for r, hit in (("count", by_count[j]), ("rate", by_rate[j])) if hit],
        })
    entries.sort(key=lambda e: (-e["events"], e["user_id"]))
    return bots, entries


def _ev_val(events: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Event code and value bits in one uint64 (n,), every NaN with one bit pattern."""
    out = events.astype(np.uint64)
    out <<= np.uint64(32)
    bits = values.view(np.uint32).astype(np.uint64)
    bits[np.isnan(values)] = 0x7FC00000
    out |= bits
    return out


def _duplicate_rows(users: np.ndarray, items: np.ndarray, ts: np.ndarray, events: np.ndarray,
                    values: np.ndarray) -> np.ndarray:
    """Bool (n,) marking rows equal in every field to an earlier row.

    Two passes keep the extra memory near 17 bytes a row: a 64-bit hash of every row finds the
    rows whose hash occurs more than once (a small share), and only those are compared exactly.
    """
    n = len(users)
    dup = np.zeros(n, dtype=bool)
    if n < 2:
        return dup
    with np.errstate(over="ignore"):
        h = users.astype(np.uint64)
        h *= np.uint64(0x9E3779B97F4A7C15)
        t = items.astype(np.uint64)
        t *= np.uint64(0xC2B2AE3D27D4EB4F)
        h ^= t
        np.multiply(ts.view(np.uint64), np.uint64(0x165667B19E3779F9), out=t)
        h ^= t
        del t
        t = _ev_val(events, values)
        t *= np.uint64(0xD6E8FEB86659FD93)
        h ^= t
        del t
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(29)
    s = np.sort(h)
    repeated = np.unique(s[1:][s[1:] == s[:-1]])  # hash values met more than once (sorted)
    del s
    if len(repeated) == 0:
        return dup
    pos = np.searchsorted(repeated, h)
    np.minimum(pos, len(repeated) - 1, out=pos)
    cand = np.flatnonzero(repeated[pos] == h)  # rows sharing a hash, in file order
    del pos, h
    pair = (users[cand].astype(np.int64) << 32) | items[cand].astype(np.int64)
    ev_val = _ev_val(events[cand], values[cand]).view(np.int64)
    order = np.lexsort((ev_val, ts[cand], pair))  # stable: equal rows stay in file order
    p, t2, e = pair[order], ts[cand][order], ev_val[order]
    same = (p[1:] == p[:-1]) & (t2[1:] == t2[:-1]) & (e[1:] == e[:-1])
    dup[cand[order[1:][same]]] = True
    return dup


def _k_core(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, config: CleaningConfig,
            report: CleaningReport) -> np.ndarray:
    """Bool (n,) of rows that survive iterated (min_user_events, min_item_events) filtering."""
    keep = np.ones(len(users), dtype=bool)
    if config.min_user_events <= 1 and config.min_item_events <= 1:
        return keep
    u_before = np.count_nonzero(np.bincount(users, minlength=n_users))
    i_before = np.count_nonzero(np.bincount(items, minlength=n_items))
    rounds = 0
    while True:
        uc = np.bincount(users[keep], minlength=n_users)
        ic = np.bincount(items[keep], minlength=n_items)
        bad = keep & ((uc[users] < config.min_user_events) | (ic[items] < config.min_item_events))
        if not bad.any():
            break
        keep &= ~bad
        rounds += 1
    report.k_core = {
        "rounds": rounds,
        "users_removed": int(u_before - np.count_nonzero(np.bincount(users[keep], minlength=n_users))),
        "items_removed": int(i_before - np.count_nonzero(np.bincount(items[keep], minlength=n_items))),
        "events_removed": int(len(keep) - keep.sum()),
    }
    return keep


def clean_events(cols: EventColumns, catalog: Catalog, config: CleaningConfig, report: CleaningReport,
                 now: float | None = None) -> Interactions:
    """The cleaned interactions; ``now`` (epoch seconds, default the wall clock) is the reference
    of ``config.max_future_s``."""
    users, vocab_items, ts, events, values = cols.take()
    user_ids = list(cols.user_index)
    report.events_read = len(users)
    dropped = report.events_dropped

    limit = int(time.time() if now is None else now) + config.max_future_s
    future = ts > limit
    dropped["future_ts"] = int(np.count_nonzero(future))
    if dropped["future_ts"]:
        _log.warning("dropped %d events dated after %d (the clean's clock + max_future_s %d s), e.g. ts %d",
                     dropped["future_ts"], limit, config.max_future_s, int(ts[future][0]))
        keep = ~future
        users, vocab_items, ts, events, values = (users[keep], vocab_items[keep], ts[keep], events[keep],
                                                  values[keep])

    # item vocabulary of the events -> catalog rows (-1: not in the catalog). Items dropped by the
    # item rules have no events by construction (see build_catalog).
    to_catalog = np.fromiter((catalog.index.get(i, -1) for i in cols.item_index), dtype=np.int32,
                             count=len(cols.item_index))
    items = to_catalog[vocab_items] if len(vocab_items) else np.zeros(0, dtype=np.int32)
    del vocab_items, to_catalog
    dropped["unknown_item"] = int(np.count_nonzero(items == -1))
    if dropped["unknown_item"]:
        _log.warning("dropped %d events on item ids missing from the catalog", dropped["unknown_item"])
    keep = items >= 0
    users, items, ts, events, values = users[keep], items[keep], ts[keep], events[keep], values[keep]

    if config.drop_duplicate_events:
        dup = _duplicate_rows(users, items, ts, events, values)
        dropped["duplicate"] = int(dup.sum())
        if dropped["duplicate"]:
            keep = ~dup
            users, items, ts, events, values = users[keep], items[keep], ts[keep], events[keep], values[keep]

    if config.remove_bots:
        bots, report.bot_users = _find_bots(users, ts, user_ids, config)
        if report.bot_users:
            keep = ~bots[users]
            dropped["bot"] = int(len(keep) - keep.sum())
            users, items, ts, events, values = users[keep], items[keep], ts[keep], events[keep], values[keep]
            _log.warning("removed %d bot-like users with %d events (e.g. %s)", len(report.bot_users),
                         dropped["bot"], report.bot_users[0]["user_id"])

    keep = _k_core(users, items, len(user_ids), len(catalog), config, report)
    dropped["k_core"] = int(len(keep) - keep.sum())
    if dropped["k_core"]:
        users, items, ts, events, values = users[keep], items[keep], ts[keep], events[keep], values[keep]

    # users without a kept event leave the vocabulary; the rest keep their first-seen order
    present = np.bincount(users, minlength=len(user_ids)) > 0
    remap = np.cumsum(present, dtype=np.int64) - 1
    user_ids = [u for u, p in zip(user_ids, present.tolist(), strict=True) if p]
    users = remap[users].astype(np.int32) if len(users) else users
    report.events_kept = report.events = int(len(users))
    report.users = len(user_ids)
    report.items_with_events = int(np.count_nonzero(np.bincount(items, minlength=len(catalog))))
    return Interactions(user_ids, users, items, ts, events, values)
