"""Catalog cleaning: duplicate ids, titles filled from descriptions, untitled items dropped unless
events refer to them, missing prices imputed and price outliers flagged (docs/data.md, "Cleaning")."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from tandem.index_builder.cleaning_config import MAD_TO_SIGMA, CleaningConfig
from tandem.index_builder.cleaning_report import CleaningReport
from tandem.index_builder.readers import ReadStats, read_items
from tandem.retrieval.data import Catalog, Item

__all__ = ["title_from_description", "read_catalog", "resolve_items", "build_catalog"]

_log = logging.getLogger("tandem.index_builder.cleaning")

_MIN_PRICE = 0.01  # log of a zero price
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


def read_catalog(path: Path, config: CleaningConfig, strict: bool, report: CleaningReport) -> list[Item]:
    """Items of the file, duplicate ids resolved and missing titles filled where possible."""
    stats = ReadStats()
    return resolve_items(read_items(path, strict=strict, stats=stats), stats, path.name, config, report)


def resolve_items(rows: Iterable[Item], stats: ReadStats, name: str, config: CleaningConfig,
                  report: CleaningReport) -> list[Item]:
    """Validated items in file order -> duplicate ids resolved, missing titles filled; ``stats`` is
    the read's (complete once ``rows`` is exhausted). Shared by the local and the Spark engine."""
    by_id: dict[str, Item] = {}
    for item in rows:
        if item.item_id in by_id:
            report.duplicate_item_ids += 1
            if len(report.duplicate_item_examples) < 20:
                report.duplicate_item_examples.append(item.item_id)
        by_id[item.item_id] = item  # last wins; the position stays the first row's
    report.read["items"] = stats.to_dict()
    report.items_read = stats.rows_ok
    if report.duplicate_item_ids:
        _log.warning("%s: %d rows repeat an earlier item_id (e.g. %s); the last row of each id wins",
                     name, report.duplicate_item_ids, ", ".join(report.duplicate_item_examples[:5]))
    items = list(by_id.values())
    for n, item in enumerate(items):
        if not item.title:
            title = title_from_description(item.description, config.title_max_words)
            if title:
                items[n] = Item(item.item_id, title, item.description, item.category, item.brand, item.price,
                                item.tags, item.in_stock)
                report.titles_filled += 1
    return items


def build_catalog(items: list[Item], referenced: dict[str, int], config: CleaningConfig,
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
            scale = max(MAD_TO_SIGMA * float(np.median(np.abs(lp - m))), config.outlier_min_scale)
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
