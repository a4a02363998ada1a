"""The synthetic shop: Tandem's embedded default data set, with known truth and known dirt.

:func:`generate` writes a data folder in the data contract's layout (docs/data.md)::

    items.jsonl.gz     the catalog, dirt included (see below)
    events.jsonl.gz    view / click / cart / purchase / rate events, dirt included
    queries.jsonl.gz   graded search judgements (grade 0..3)
    truth.json         generator parameters, counts, the injected dirt (ids and counts), the
                       cleaning result to expect, the complement relation, how each query was made
    truth_items.npy    per-item truth as a structured array (row k = item ``i{k:07d}``): leaf,
                       brand, price tier, release time, popularity, true price, event count ...

The world (category tree, vocabularies, complements) is in :mod:`tandem.index_builder.synthetic_vocab`,
the catalog in :mod:`tandem.index_builder.synthetic_catalog`, shoppers in
:mod:`tandem.index_builder.synthetic_events`, queries in :mod:`tandem.index_builder.synthetic_queries`.

Dirt, injected at the configured rates into disjoint sets of items and into ordinary users'
events, so that every count in ``truth.json["dirt"]`` is exact: duplicate item ids (a later row
re-defines the item with another price and stock flag), missing titles (some with a description
to fill from, some without), missing prices, price outliers (x50 or x0.01), exact duplicate
events, events on item ids missing from the catalog, and bots (users with thousands of events
seconds apart). ``dirt=False`` writes clean files.

Output is deterministic for a seed and configuration, byte for byte (gzip headers carry no time).
Events stream: users are simulated and written in fixed-size chunks, so memory does not grow with
the number of events.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from tandem.index_builder.synthetic_catalog import SyntheticCatalog, item_id, make_catalog
from tandem.index_builder.synthetic_events import EventChunk, ShopSimulator
from tandem.index_builder.synthetic_queries import make_queries
from tandem.index_builder.synthetic_vocab import MAX_ATTRIBUTES, shop_vocabulary
from tandem.index_builder.writers import open_text_out
from tandem.retrieval.data import EVENT_TYPES

__all__ = ["SyntheticConfig", "GenerationSummary", "generate", "TRUTH_FORMAT", "ITEM_TRUTH_DTYPE"]

_log = logging.getLogger(__name__)

#: Version of the truth.json / truth_items.npy layout.
TRUTH_FORMAT = 1
#: Row layout of truth_items.npy.
ITEM_TRUTH_DTYPE = np.dtype([
    ("leaf", "<i2"), ("brand", "<i2"), ("tier", "<i1"), ("attrs", "<i1", (MAX_ATTRIBUTES,)),
    ("features", "<i1", (2,)), ("release", "<i8"), ("weight", "<f8"), ("price", "<f8"),
    ("in_stock", "?"), ("events", "<i8"),
])
_USERS_PER_CHUNK = 10_000  # fixed: the random streams are per chunk, so this is part of the output
_SEP = (", ", ": ")
# Independent random streams, one per purpose (SeedSequence entropy = [seed, purpose, chunk]).
_CATALOG, _ITEM_DIRT, _USERS, _EVENT_DIRT, _QUERIES, _IDS = range(6)


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of :func:`generate`; every field is validated.

    ``events_per_user`` is the target mean for ordinary users (bots excluded). Dirt rates are
    shares of items (item dirt) or of ordinary users' events (event dirt);
    ``missing_title_with_description`` is the share of untitled items that keep a description.
    ``bots`` None means ``clip(users // 1000, 2, 20)``. ``start`` is the window's first second.
    """

    items: int = 5000
    users: int = 3000
    seed: int = 0
    events_per_user: float = 30.0
    days: int = 90
    queries: int = 300
    dirt: bool = True
    duplicate_event_rate: float = 0.005
    unknown_item_event_rate: float = 0.002
    duplicate_item_rate: float = 0.005
    missing_title_rate: float = 0.01
    missing_title_with_description: float = 0.6
    missing_price_rate: float = 0.01
    price_outlier_rate: float = 0.004
    bots: int | None = None
    start: int = 1_704_067_200  # 2024-01-01T00:00:00Z

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "bots" and v is None:
                continue
            if f.name == "dirt":
                if not isinstance(v, bool):
                    raise ValueError(f"SyntheticConfig.dirt: expected true or false, got {v!r}")
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"SyntheticConfig.{f.name}: expected a number, got {v!r}")
            if f.type in ("int", "int | None") and not isinstance(v, int):
                raise ValueError(f"SyntheticConfig.{f.name}: expected an integer, got {v!r}")
        for name, low in (("items", 1), ("users", 1), ("days", 2), ("queries", 0), ("seed", 0), ("start", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"SyntheticConfig.{name}: expected an integer >= {low}, got {getattr(self, name)}")
        if self.events_per_user < 1:
            raise ValueError(f"SyntheticConfig.events_per_user: expected a number >= 1, got {self.events_per_user}")
        if self.bots is not None and self.bots < 0:
            raise ValueError(f"SyntheticConfig.bots: expected an integer >= 0 or None (automatic), got {self.bots}")
        rates = ("duplicate_event_rate", "unknown_item_event_rate", "duplicate_item_rate", "missing_title_rate",
                 "missing_title_with_description", "missing_price_rate", "price_outlier_rate")
        for name in rates:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"SyntheticConfig.{name}: expected a share in [0, 1], got {getattr(self, name)}")
        item_share = (self.duplicate_item_rate + self.missing_title_rate + self.missing_price_rate
                      + self.price_outlier_rate)
        if item_share > 0.5:
            raise ValueError(f"SyntheticConfig: the item dirt rates add up to {item_share:.2f}; keep them "
                             "under 0.5 so that dirty items stay a minority")

    @property
    def n_bots(self) -> int:
        """Bots actually generated (0 without dirt)."""
        if not self.dirt:
            return 0
        return self.bots if self.bots is not None else int(np.clip(self.users // 1000, 2, 20))


@dataclass(frozen=True)
class GenerationSummary:
    """What :func:`generate` wrote; ``files`` maps a role to the path written."""

    out_dir: str
    files: dict[str, str]
    items: int
    item_rows: int
    users: int
    bots: int
    events: int
    queries: int
    judgements: int
    seconds: float
    event_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stream(seed: int, purpose: int, chunk: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, purpose, chunk]))


def _share(rate: float, n: int) -> int:
    """How many of ``n`` get a dirt of this rate: rounded, at least one when the rate is not 0."""
    return 0 if rate <= 0 or n == 0 else max(1, round(rate * n))


# ---------------------------------------------------------------------------------------------
# Items


def _item_dirt(config: SyntheticConfig, n: int) -> dict[str, np.ndarray]:
    """Disjoint sets of item indices (sorted int64) for each kind of item dirt."""
    kinds = ("duplicate_id", "title_filled", "title_dropped", "missing_price", "outlier_high", "outlier_low")
    if not config.dirt:
        return {k: np.zeros(0, dtype=np.int64) for k in kinds}
    untitled = _share(config.missing_title_rate, n)
    filled = round(untitled * config.missing_title_with_description)
    outliers = _share(config.price_outlier_rate, n)
    sizes = (_share(config.duplicate_item_rate, n), filled, untitled - filled,
             _share(config.missing_price_rate, n), (outliers + 1) // 2, outliers // 2)
    if sum(sizes) > n:
        raise ValueError(f"items: {n} items are too few for the dirt rates; raise --items or pass --no-dirt")
    perm = _stream(config.seed, _ITEM_DIRT).permutation(n)
    cut = np.cumsum((0,) + sizes)
    return {k: np.sort(perm[cut[j]: cut[j + 1]]) for j, k in enumerate(kinds)}


def _q(text: str) -> str:
    """A JSON string literal. The shop's words are plain ASCII without quotes or backslashes
    (checked by shop_vocabulary), so only the title forms of the dirt need json.dumps."""
    return '"' + text + '"'


def _item_line(item: str, title: str | None, description: str | None, category: str, brand: str,
               price: float | None, tags: list[str], in_stock: bool) -> str:
    """One items.jsonl row; ``title`` None leaves the key out, "null" writes JSON null."""
    parts = ['{"item_id": ' + _q(item)]
    if title is not None:
        parts.append('"title": ' + ("null" if title == "null" else _q(title)))
    if description is not None:
        parts.append('"description": ' + _q(description))
    parts.append('"category": ' + _q(category))
    parts.append('"brand": ' + _q(brand))
    if price is not None:
        parts.append('"price": ' + repr(float(price)))
    parts.append('"tags": [' + ", ".join(map(_q, tags)) + "]")
    parts.append('"in_stock": ' + ("true" if in_stock else "false") + "}")
    return ", ".join(parts)


def _write_items(path: Path, cat: SyntheticCatalog, dirt: dict[str, np.ndarray], seed: int) -> tuple[int, dict]:
    """Write the items file; returns (rows written, the price written for outliers and re-definitions)."""
    rng = _stream(seed, _ITEM_DIRT, 1)
    n = len(cat)
    kind = np.zeros(n, dtype=np.int8)
    names = ("duplicate_id", "title_filled", "title_dropped", "missing_price", "outlier_high", "outlier_low")
    for j, name in enumerate(names, 1):
        kind[dirt[name]] = j
    title_forms = ("", "null", None)  # empty string, JSON null, key left out
    prices = cat.price.tolist()
    stock = cat.in_stock.tolist()
    paths = [lf.path for lf in cat.vocab.leaves]
    leaf = cat.leaf.tolist()
    brand = [cat.brand_names[b] for b in cat.brand.tolist()]
    written: dict[str, dict[str, float]] = {"outlier_price": {}, "redefined_price": {}}
    rows = 0
    block = 50_000
    with open_text_out(path, compresslevel=3) as out:
        for lo in range(0, n, block):
            buf: list[str] = []
            kinds = kind[lo: lo + block].tolist()
            for k, kd, (title, description, tags) in zip(range(lo, lo + len(kinds)), kinds,
                                                           cat.texts(lo, lo + block), strict=True):
                price: float | None = prices[k]
                if kd in (2, 3):
                    title = title_forms[int(rng.integers(0, 3))]
                    if kd == 3:
                        description = None
                elif kd == 4:
                    price = None
                elif kd in (5, 6):
                    price = max(0.01, round(prices[k] * (50.0 if kd == 5 else 0.01), 2))
                    written["outlier_price"][item_id(k)] = price
                buf.append(_item_line(item_id(k), title, description, paths[leaf[k]], brand[k], price, tags,
                                      stock[k]))
            out.write("\n".join(buf) + "\n")
            rows += len(buf)
        # re-definitions come later in the file: another price (within 15%), the stock flag flipped
        buf = []
        for k in rng.permutation(dirt["duplicate_id"]).tolist():
            price = round(prices[k] * float(rng.uniform(0.85, 1.15)), 2)
            written["redefined_price"][item_id(k)] = price
            title, description, tags = cat.texts(k, k + 1)[0]
            buf.append(_item_line(item_id(k), title, description, paths[leaf[k]], brand[k], price, tags,
                                  not stock[k]))
        if buf:
            out.write("\n".join(buf) + "\n")
            rows += len(buf)
    return rows, written


# ---------------------------------------------------------------------------------------------
# Events


class _EventWriter:
    """Formats event rows as JSON lines from pre-built pieces (the hot loop of large runs)."""

    def __init__(self, user_ids: list[str], n_items: int) -> None:
        self.users = ['{"user_id": "' + u + '", "item_id": "' for u in user_ids]
        self.items = [item_id(k) + '", "ts": ' for k in range(n_items)]
        # suffix by code; rate events carry their value (1..5): index 5 + value - 1
        self.suffix = [f', "event": "{e}"}}' for e in EVENT_TYPES]
        self.suffix += [f', "event": "rate", "value": {float(v)}}}' for v in range(1, 6)]

    def lines(self, chunk: EventChunk) -> str:
        sfx = chunk.events.astype(np.int64)
        rated = ~np.isnan(chunk.values)
        sfx[rated] = len(EVENT_TYPES) + chunk.values[rated].astype(np.int64) - 1
        us, its, sf = self.users, self.items, self.suffix
        return "".join([us[u] + its[i] + str(t) + sf[s] + "\n" for u, i, t, s in zip(
            chunk.users.tolist(), chunk.items.tolist(), chunk.ts.tolist(), sfx.tolist(), strict=True)])


def _add_event_dirt(rng: np.random.Generator, chunk: EventChunk, ordinary: np.ndarray, config: SyntheticConfig,
                    n_items: int, n_ghosts: int) -> tuple[EventChunk, int, int]:
    """Insert exact duplicates and unknown-item copies of ordinary users' rows a little after
    their source row; returns (chunk, duplicates added, unknown-item rows added)."""
    n = len(chunk)
    if not config.dirt or n == 0:
        return chunk, 0, 0
    dup = np.flatnonzero(ordinary & (rng.random(n) < config.duplicate_event_rate))
    ghost = np.flatnonzero(ordinary & (rng.random(n) < config.unknown_item_event_rate))
    dup_rows = chunk.take(dup)
    ghost_rows = chunk.take(ghost)
    ghost_rows.items = n_items + rng.integers(0, n_ghosts, len(ghost))
    key = np.concatenate([2 * np.arange(n), 2 * np.minimum(dup + rng.integers(0, 50, len(dup)), n - 1) + 1,
                          2 * np.minimum(ghost + rng.integers(0, 50, len(ghost)), n - 1) + 1])
    merged = EventChunk.concat([chunk, dup_rows, ghost_rows])
    return merged.take(np.argsort(key, kind="stable")), len(dup), len(ghost)


# ---------------------------------------------------------------------------------------------


def generate(out_dir: str | Path, config: SyntheticConfig | None = None) -> GenerationSummary:
    """Write the synthetic shop to ``out_dir`` (created if needed); see the module docstring."""
    config = SyntheticConfig() if config is None else config
    t_start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = shop_vocabulary()
    start = config.start
    end = start + config.days * 86_400
    cat = make_catalog(_stream(config.seed, _CATALOG), config.items, vocab, start, end)
    n = len(cat)
    n_ghosts = max(5, n // 200) if config.dirt else 0
    ghost_ids = [item_id(n + k) for k in range(n_ghosts)]

    dirt = _item_dirt(config, n)
    item_rows, written_prices = _write_items(out / "items.jsonl.gz", cat, dirt, config.seed)
    _log.info("items: %d rows (%d items)", item_rows, n)

    n_bots = config.n_bots
    n_users = config.users + n_bots
    width = max(7, len(str(n_users - 1)))
    perm = _stream(config.seed, _IDS).permutation(n_users)
    user_ids = [f"u{k:0{width}d}" for k in perm.tolist()]
    sim = ShopSimulator(cat, vocab, start, end, config.events_per_user)
    writer = _EventWriter(user_ids, n + n_ghosts)
    item_events = np.zeros(n + n_ghosts, dtype=np.int64)
    type_counts = np.zeros(len(EVENT_TYPES), dtype=np.int64)
    n_dup = n_ghost_rows = bot_events = ordinary_events = 0
    bot_counts: dict[str, int] = {}
    with open_text_out(out / "events.jsonl.gz", compresslevel=1) as f:
        for c, first in enumerate(range(0, config.users, _USERS_PER_CHUNK)):
            count = min(_USERS_PER_CHUNK, config.users - first)
            chunk = sim.users(_stream(config.seed, _USERS, c), first, count)
            ordinary_events += len(chunk)
            if c == 0 and n_bots:  # bots hide among the first chunk's users
                bots = sim.bots(_stream(config.seed, _USERS, 1_000_000), config.users, n_bots)
                bot_events = len(bots)
                for b, k in zip(*np.unique(bots.users, return_counts=True), strict=True):
                    bot_counts[user_ids[int(b)]] = int(k)
                chunk = EventChunk.concat([chunk, bots])
            chunk = chunk.take(np.argsort(chunk.ts, kind="stable"))  # a log is written in time order
            chunk, d, g = _add_event_dirt(_stream(config.seed, _EVENT_DIRT, c), chunk,
                                          chunk.users < config.users, config, n, n_ghosts)
            n_dup += d
            n_ghost_rows += g
            item_events += np.bincount(chunk.items, minlength=n + n_ghosts)
            type_counts += np.bincount(chunk.events, minlength=len(EVENT_TYPES))
            f.write(writer.lines(chunk))
            _log.debug("events: chunk %d, users %d..%d, %d rows", c, first, first + count - 1, len(chunk))
    total_events = int(item_events.sum())
    _log.info("events: %d rows (%d users, %d bots)", total_events, config.users, n_bots)

    judgeable = np.ones(n, dtype=bool)
    judgeable[dirt["title_dropped"]] = False  # cleaning may drop these
    queries, query_truth = make_queries(_stream(config.seed, _QUERIES), cat, vocab, config.queries, judgeable)
    with open_text_out(out / "queries.jsonl.gz", compresslevel=6) as f:
        for q in queries:
            f.write(json.dumps({"query_id": q.query_id, "query": q.query, "item_id": q.item_id, "grade": q.grade},
                               ensure_ascii=False, separators=_SEP) + "\n")

    item_truth = np.zeros(n, dtype=ITEM_TRUTH_DTYPE)
    for name in ("leaf", "brand", "tier", "attrs", "features", "release", "weight", "price", "in_stock"):
        item_truth[name] = getattr(cat, name)
    item_truth["events"] = item_events[:n]
    np.save(out / "truth_items.npy", item_truth, allow_pickle=False)

    ids = {k: [item_id(i) for i in v.tolist()] for k, v in dirt.items()}
    untitled_no_text = dirt["title_dropped"]
    with_events = untitled_no_text[item_events[untitled_no_text] > 0]
    truth = {
        "format": TRUTH_FORMAT,
        "generator": "tandem.index_builder.synthetic",
        "seed": config.seed,
        "config": asdict(config),
        "window": {"start": start, "end": end},
        "files": {"items": "items.jsonl.gz", "events": "events.jsonl.gz", "queries": "queries.jsonl.gz",
                  "item_truth": "truth_items.npy"},
        "counts": {
            "items": n, "item_rows": item_rows, "users": config.users, "bots": n_bots,
            "events": total_events, "ordinary_user_events": ordinary_events, "bot_events": bot_events,
            "event_types": dict(zip(EVENT_TYPES, type_counts.tolist(), strict=True)),
            "queries": len(query_truth), "judgements": len(queries),
            "events_per_session_expected": round(sim.events_per_session, 4),
        },
        "categories": {
            "tops": list(vocab.tops), "leaves": [lf.path for lf in vocab.leaves],
            "complements": [list(p) for p in vocab.complement_pairs()],
        },
        "dirt": {
            "enabled": config.dirt,
            "duplicate_item_ids": ids["duplicate_id"],
            "redefined_prices": written_prices["redefined_price"],
            "missing_title_with_description": ids["title_filled"],
            "missing_title_without_description": ids["title_dropped"],
            "missing_title_without_description_with_events": [item_id(i) for i in with_events.tolist()],
            "missing_price": ids["missing_price"],
            "price_outliers_high": ids["outlier_high"],
            "price_outliers_low": ids["outlier_low"],
            "outlier_prices": written_prices["outlier_price"],
            "duplicate_events": n_dup,
            "unknown_item_events": n_ghost_rows,
            "unknown_item_ids": ghost_ids,
            "bots": dict(sorted(bot_counts.items())),
        },
        # what index_builder.cleaning.load_dataset (default config) should report on these files
        "expected_cleaning": {
            "duplicate_item_ids": len(ids["duplicate_id"]),
            "titles_filled": len(ids["title_filled"]),
            "items_dropped_no_title": len(untitled_no_text) - len(with_events),
            "untitled_items_kept": len(with_events),
            "prices_imputed": len(ids["missing_price"]),
            "price_outliers": len(ids["outlier_high"]) + len(ids["outlier_low"]),
            "events_dropped": {"unknown_item": n_ghost_rows, "duplicate": n_dup, "bot": bot_events},
            "bot_users": sorted(bot_counts),
        },
        "queries": [t.to_dict() for t in query_truth],
    }
    (out / "truth.json").write_text(json.dumps(truth, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - t_start
    return GenerationSummary(
        out_dir=str(out),
        files={"items": str(out / "items.jsonl.gz"), "events": str(out / "events.jsonl.gz"),
               "queries": str(out / "queries.jsonl.gz"), "truth": str(out / "truth.json"),
               "item_truth": str(out / "truth_items.npy")},
        items=n, item_rows=item_rows, users=config.users, bots=n_bots, events=total_events,
        queries=len(query_truth), judgements=len(queries), seconds=round(seconds, 3),
        event_counts=truth["counts"]["event_types"],
    )
