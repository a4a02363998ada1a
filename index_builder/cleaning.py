"""Load a data folder into a clean :class:`Catalog` and :class:`Interactions`, with a report.

The readers validate rows one at a time; this module applies the rules that need the whole data
set (docs/data.md, "Cleaning"):

* items: duplicate ids resolved (the last row wins, the first row's position is kept); missing
  titles filled from the description (first sentence, at most ``title_max_words`` words), else
  the item is dropped, unless events refer to it (then it stays with an empty title: its
  interactions are real, and benchmark data sets such as Amazon Beauty hold such items); missing prices imputed with the median of the deepest category level that
  has prices (global median otherwise) and flagged; price outliers flagged, never deleted;
* events: rows on items missing from the catalog dropped; exact duplicates (same user, item, ts,
  event, value) dropped, the first kept; bot-like users removed; optional k-core filtering.

Events stay in file order (``extra_events`` after the file's), so ties in time keep file
order. Events stream from the reader into compact typed columns: a 10M-row file needs about
21 bytes per row plus the id dictionaries, never one Python object per event.
"""

from __future__ import annotations

import logging
import math
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from index_builder.readers import (
    EventRow,
    ReadError,
    ReadStats,
    find_data_files,
    read_event_rows,
    read_items,
    read_queries,
)
from retrieval.data import EVENT_CODE, Catalog, Event, Interactions, Item, Query

__all__ = [
    "CleaningConfig",
    "CleaningReport",
    "CleanResult",
    "load_dataset",
    "load_queries",
    "title_from_description",
]

_log = logging.getLogger(__name__)

_DROP_REASONS = ("unknown_item", "duplicate", "bot", "k_core")
_MAD_TO_SIGMA = 1.4826
_MIN_PRICE = 0.01  # log of a zero price


@dataclass(frozen=True)
class CleaningConfig:
    """Thresholds of the cleaning rules.

    Bots: a user is flagged when the robust z-score of log(event count) over all users exceeds
    ``bot_max_z`` and the user has at least ``bot_min_events`` events, or when the same holds for
    log(events per active hour) with at least ``bot_min_hourly_rate`` events per active hour.
    The z-score is (x - median) / max(1.4826 * MAD, ``bot_min_scale``). The absolute minimums
    keep small data sets, where the population is narrow, from flagging ordinary heavy users.

    Price outliers: the same z-score of log(price) within the deepest category level holding at
    least ``outlier_min_group`` priced items (else the whole catalog), with the scale floored at
    ``outlier_min_scale``; flagged when above ``outlier_max_z``.

    k-core: ``min_user_events`` / ``min_item_events`` > 0 repeatedly drop events of users / items
    with fewer events until nothing changes. Items stay in the catalog.
    """

    min_user_events: int = 0
    min_item_events: int = 0
    drop_duplicate_events: bool = True
    remove_bots: bool = True
    bot_max_z: float = 6.0
    bot_min_events: int = 1000
    bot_min_hourly_rate: float = 120.0
    bot_min_scale: float = 0.5
    outlier_max_z: float = 3.5
    outlier_min_scale: float = 0.25
    outlier_min_group: int = 5
    title_max_words: int = 12

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(v, bool):
                    raise ValueError(f"CleaningConfig.{f.name}: expected true or false, got {v!r}")
                continue
            kind = int if f.type == "int" else float
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)):
                raise ValueError(f"CleaningConfig.{f.name}: expected {'an integer' if kind is int else 'a number'}, "
                                 f"got {v!r}")
            if not math.isfinite(v):
                raise ValueError(f"CleaningConfig.{f.name}: expected a finite number, got {v!r}")
        for name in ("min_user_events", "min_item_events", "bot_min_events"):
            if getattr(self, name) < 0:
                raise ValueError(f"CleaningConfig.{name}: expected an integer >= 0 (0 turns it off), "
                                 f"got {getattr(self, name)}")
        for name in ("bot_max_z", "bot_min_scale", "bot_min_hourly_rate", "outlier_max_z", "outlier_min_scale"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CleaningConfig.{name}: expected a number > 0, got {getattr(self, name)}")
        for name in ("outlier_min_group", "title_max_words"):
            if getattr(self, name) < 1:
                raise ValueError(f"CleaningConfig.{name}: expected an integer >= 1, got {getattr(self, name)}")


@dataclass
class CleaningReport:
    """Every count of one :func:`load_dataset` run; ``to_dict()`` is JSON-able.

    ``read`` holds the readers' :class:`ReadStats` per source (``items``, ``events``,
    ``extra_events``, ``queries``): rows read, skipped by field, the first error messages.
    ``events_read`` counts the events that passed the readers (file and extra).
    """

    data_dir: str = ""
    items_read: int = 0
    items_kept: int = 0
    items_dropped: dict[str, int] = field(default_factory=lambda: {"no_title": 0})
    duplicate_item_ids: int = 0
    duplicate_item_examples: list[str] = field(default_factory=list)
    titles_filled: int = 0
    untitled_items_kept: int = 0
    prices_imputed: int = 0
    prices_missing: int = 0
    price_outliers: int = 0
    events_read: int = 0
    extra_events: int = 0
    events_kept: int = 0
    events_dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_DROP_REASONS, 0))
    bot_users: list[dict[str, Any]] = field(default_factory=list)
    k_core: dict[str, int] = field(default_factory=lambda: {"rounds": 0, "users_removed": 0,
                                                             "items_removed": 0, "events_removed": 0})
    read: dict[str, dict[str, Any]] = field(default_factory=dict)
    queries: dict[str, int] | None = None
    users: int = 0
    items: int = 0
    items_with_events: int = 0
    events: int = 0

    @property
    def rows_skipped(self) -> int:
        """Rows the readers skipped, all sources together."""
        return sum(r["rows_skipped"] for r in self.read.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A short human-readable account, one topic per line."""
        def fmt(d: dict[str, int]) -> str:
            parts = [f"{k} {v:,}" for k, v in d.items() if v]
            return ", ".join(parts) if parts else "none"

        skipped = {name: r["rows_skipped"] for name, r in self.read.items()}
        lines = [
            f"data: {self.data_dir}",
            f"items: {self.items_read:,} read, {self.items_kept:,} kept; dropped: {fmt(self.items_dropped)}; "
            f"duplicate ids {self.duplicate_item_ids:,}",
            f"titles filled from description: {self.titles_filled:,}, left empty (item has events): "
            f"{self.untitled_items_kept:,}; prices imputed: {self.prices_imputed:,}, "
            f"still missing: {self.prices_missing:,}, outliers flagged: {self.price_outliers:,}",
            f"events: {self.events_read:,} read (extra {self.extra_events:,}), {self.events_kept:,} kept; "
            f"dropped: {fmt(self.events_dropped)}",
            f"bad rows skipped by the readers: {fmt(skipped)}",
            f"bot users removed: {len(self.bot_users):,}"
            + (" (" + ", ".join(b["user_id"] for b in self.bot_users[:5])
               + (", ..." if len(self.bot_users) > 5 else "") + ")" if self.bot_users else ""),
        ]
        if self.k_core["rounds"]:
            k = self.k_core
            lines.append(f"k-core: {k['rounds']} rounds removed {k['users_removed']:,} users, "
                         f"{k['items_removed']:,} items, {k['events_removed']:,} events")
        if self.queries is not None:
            lines.append(f"queries: {self.queries['read']:,} read, {self.queries['kept']:,} kept, "
                         f"{self.queries['unknown_item']:,} on unknown items")
        lines.append(f"result: {self.users:,} users, {self.items:,} items ({self.items_with_events:,} with events), "
                     f"{self.events:,} events")
        return "\n".join(lines)


@dataclass(frozen=True)
class CleanResult:
    """What :func:`load_dataset` returns."""

    catalog: Catalog
    interactions: Interactions
    report: CleaningReport


# ---------------------------------------------------------------------------------------------
# Items


_TAG_RE = re.compile(r"<[^>]+>")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def title_from_description(description: str, max_words: int = 12) -> str:
    """A stand-in title: the description's first sentence, cut to ``max_words`` words.

    HTML tags are removed and a final full stop dropped; ``""`` when nothing is left.
    """
    text = _TAG_RE.sub(" ", description).strip()
    if not text:
        return ""
    first = _SENTENCE_END.split(text, maxsplit=1)[0]
    words = first.split()
    title = " ".join(words[:max_words])
    return title[:-1] if len(words) <= max_words and title.endswith(".") else title


def _read_catalog(path: Path, config: CleaningConfig, strict: bool, report: CleaningReport) -> list[Item]:
    """Items of the file, duplicate ids resolved and missing titles filled where possible."""
    stats = ReadStats()
    by_id: dict[str, Item] = {}
    for item in read_items(path, strict=strict, stats=stats):
        if item.item_id in by_id:
            report.duplicate_item_ids += 1
            if len(report.duplicate_item_examples) < 20:
                report.duplicate_item_examples.append(item.item_id)
        by_id[item.item_id] = item  # last wins; the position stays the first row's
    report.read["items"] = stats.to_dict()
    report.items_read = stats.rows_ok
    if report.duplicate_item_ids:
        _log.warning("%s: %d rows repeat an earlier item_id (e.g. %s); the last row of each id wins",
                     path.name, report.duplicate_item_ids, ", ".join(report.duplicate_item_examples[:5]))
    items = list(by_id.values())
    for n, item in enumerate(items):
        if not item.title:
            title = title_from_description(item.description, config.title_max_words)
            if title:
                items[n] = Item(item.item_id, title, item.description, item.category, item.brand, item.price,
                                item.tags, item.in_stock)
                report.titles_filled += 1
    return items


def _build_catalog(items: list[Item], referenced: dict[str, int], config: CleaningConfig,
                   report: CleaningReport) -> Catalog:
    """The catalog without the items that have neither text nor events."""
    dropped = {it.item_id for it in items if not it.title and it.item_id not in referenced}
    report.items_dropped["no_title"] = len(dropped)
    report.untitled_items_kept = sum(1 for it in items if not it.title) - len(dropped)
    if dropped:
        _log.warning("dropped %d items with neither a title nor a description nor any event", len(dropped))
    if report.untitled_items_kept:
        _log.warning("kept %d items without a title or description because events refer to them",
                     report.untitled_items_kept)
    catalog = Catalog.from_items(it for it in items if it.item_id not in dropped)
    _clean_prices(catalog, config, report)
    report.items_kept = report.items = len(catalog)
    return catalog


def _category_keys(category: str) -> list[str]:
    """Category prefixes, deepest first, ending with "" (the whole catalog)."""
    if not category:
        return [""]
    levels = category.split(" > ")
    return [" > ".join(levels[:k]) for k in range(len(levels), 0, -1)] + [""]


def _clean_prices(catalog: Catalog, config: CleaningConfig, report: CleaningReport) -> None:
    prices = catalog.prices.astype(np.float64)
    known = ~np.isnan(prices)
    if not known.any():
        report.prices_missing = len(catalog)
        return
    keys = [_category_keys(c) for c in catalog.categories]
    members: dict[str, list[int]] = {}
    for i in np.flatnonzero(known).tolist():
        for k in keys[i]:
            members.setdefault(k, []).append(i)
    logp = np.log(np.maximum(prices, _MIN_PRICE))
    median: dict[str, float] = {}
    centre: dict[str, tuple[float, float]] = {}
    for k, rows in members.items():
        idx = np.asarray(rows)
        median[k] = float(np.median(prices[idx]))
        if len(rows) >= config.outlier_min_group or k == "":
            lp = logp[idx]
            m = float(np.median(lp))
            scale = max(_MAD_TO_SIGMA * float(np.median(np.abs(lp - m))), config.outlier_min_scale)
            centre[k] = (m, scale)

    imputed = np.zeros(len(catalog), dtype=bool)
    outlier = np.zeros(len(catalog), dtype=bool)
    for i in range(len(catalog)):
        if known[i]:
            m, scale = next(centre[k] for k in keys[i] if k in centre)
            outlier[i] = abs(logp[i] - m) / scale > config.outlier_max_z
        else:
            prices[i] = next(median[k] for k in keys[i] if k in median)
            imputed[i] = True
    catalog.prices = prices.astype(np.float32)
    catalog.price_imputed = imputed
    catalog.price_outlier = outlier
    report.prices_imputed = int(imputed.sum())
    report.price_outliers = int(outlier.sum())
    if report.price_outliers:
        _log.info("flagged %d price outliers", report.price_outliers)


# ---------------------------------------------------------------------------------------------
# Events


class _EventColumns:
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


def _extra_rows(events: Iterable[Event], strict: bool, stats: ReadStats) -> Iterator[EventRow]:
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
        elif isinstance(e.ts, bool) or not isinstance(e.ts, int):
            problem = ("ts", f"expected int epoch seconds, got {e.ts!r}")
        elif code is None:
            problem = ("event", f"expected one of {', '.join(EVENT_CODE)}, got {e.event!r}")
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
    scale = max(_MAD_TO_SIGMA * float(np.median(np.abs(x - m))), min_scale)
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


def _clean_events(cols: _EventColumns, catalog: Catalog, config: CleaningConfig, report: CleaningReport) -> Interactions:
    users, vocab_items, ts, events, values = cols.take()
    user_ids = list(cols.user_index)
    report.events_read = len(users)
    dropped = report.events_dropped

    # item vocabulary of the events -> catalog rows (-1: not in the catalog). Items dropped by the
    # item rules have no events by construction (see _build_catalog).
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


def load_dataset(data_dir: str | Path, config: CleaningConfig | None = None, strict: bool = False,
                 extra_events: Iterable[Event] | None = None) -> CleanResult:
    """Read, validate and clean a data folder (items, events; see docs/data.md).

    ``strict`` makes the first bad row a :class:`ReadError`; otherwise bad rows are skipped
    and counted in ``report.read``. ``extra_events`` (e.g. the server's event log) are appended
    after the file's events and cleaned with them.
    """
    config = CleaningConfig() if config is None else config
    files = find_data_files(data_dir)
    report = CleaningReport(data_dir=str(files.folder))
    items = _read_catalog(files.items, config, strict, report)

    cols = _EventColumns()
    stats = ReadStats()
    cols.extend(read_event_rows(files.events, strict=strict, stats=stats))
    report.read["events"] = stats.to_dict()
    if extra_events is not None:
        extra = ReadStats(file="extra_events")
        report.extra_events = cols.extend(_extra_rows(extra_events, strict, extra))
        report.read["extra_events"] = extra.to_dict()
    catalog = _build_catalog(items, cols.item_index, config, report)
    del items
    interactions = _clean_events(cols, catalog, config, report)
    return CleanResult(catalog, interactions, report)


def load_queries(data_dir: str | Path, catalog: Catalog, *, strict: bool = False,
                 report: CleaningReport | None = None) -> list[Query] | None:
    """Graded queries of ``data_dir`` whose item is in ``catalog``; None when there is no queries file.

    Queries on unknown items are dropped, counted in ``report.queries`` (when given) and logged.
    """
    files = find_data_files(data_dir)
    if files.queries is None:
        return None
    stats = ReadStats()
    queries: list[Query] = []
    unknown = 0
    for q in read_queries(files.queries, strict=strict, stats=stats):
        if q.item_id in catalog.index:
            queries.append(q)
        else:
            unknown += 1
    if unknown:
        _log.warning("%s: dropped %d judgements on item ids missing from the catalog", files.queries.name, unknown)
    if report is not None:
        report.read["queries"] = stats.to_dict()
        report.queries = {"read": stats.rows_ok, "kept": len(queries), "unknown_item": unknown}
    return queries
