"""Load a data folder into a clean :class:`Catalog` and :class:`Interactions`, with a report.

The readers validate rows one at a time; this module applies the rules that need the whole data
set (docs/data.md, "Cleaning"):

* items: duplicate ids resolved (the last row wins, the first row's position is kept); missing
  titles filled from the description (first sentence, at most ``title_max_words`` words), else
  the item is dropped, unless events refer to it (then it stays with an empty title: its
  interactions are real, and benchmark data sets such as Amazon Beauty hold such items); missing prices imputed with the median of the deepest category level that
  has prices (global median otherwise) and flagged; price outliers flagged, never deleted;
* events: rows dated more than ``max_future_s`` after the clean dropped; rows on items missing
  from the catalog dropped; exact duplicates (same user, item, ts,
  event, value) dropped, the first kept; bot-like users removed; optional k-core filtering.

Events stay in file order (``extra_events`` after the file's), so ties in time keep file
order. Events stream from the reader into compact typed columns: a 10M-row file needs about
21 bytes per row plus the id dictionaries, never one Python object per event.

This module assembles the stages; the rules live in :mod:`tandem.index_builder.item_cleaning` and
:mod:`tandem.index_builder.event_cleaning`, the thresholds in :mod:`tandem.index_builder.cleaning_config`, the
counts in :mod:`tandem.index_builder.cleaning_report`. The public names stay importable from here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from tandem.index_builder.cleaning_config import CleaningConfig
from tandem.index_builder.cleaning_report import CleaningReport, CleanResult
from tandem.index_builder.event_cleaning import EventColumns, clean_events, extra_rows
from tandem.index_builder.item_cleaning import build_catalog, read_catalog, title_from_description
from tandem.index_builder.readers import ReadStats, find_data_files, read_event_rows, read_queries
from tandem.retrieval.data import Catalog, Event, Query

__all__ = [
    "CleaningConfig",
    "CleaningReport",
    "CleanResult",
    "load_dataset",
    "load_queries",
    "title_from_description",
]

_log = logging.getLogger(__name__)


def load_dataset(data_dir: str | Path, config: CleaningConfig | None = None, strict: bool = False,
                 extra_events: Iterable[Event] | None = None, now: float | None = None,
                 catalog_edits: Iterable[tuple] | None = None) -> CleanResult:
    """Read, validate and clean a data folder (items, events; see docs/data.md). A folder
    without an events file gives empty interactions (a search-only shop).

    ``strict`` makes the first bad row a :class:`ReadError`; otherwise bad rows are skipped
    and counted in ``report.read``. ``extra_events`` (e.g. the server's event log) are appended
    after the file's events and cleaned with them; ``catalog_edits`` (the log's live catalog
    changes, :func:`~tandem.index_builder.event_log_reader.read_catalog_changes`) are applied to
    the file's items first. Events dated more than
    ``config.max_future_s`` after ``now`` (default: the wall clock) are dropped.
    """
    config = CleaningConfig() if config is None else config
    files = find_data_files(data_dir)
    report = CleaningReport(data_dir=str(files.folder))
    items = read_catalog(files.items, config, strict, report)
    if catalog_edits is not None:  # live catalog changes of the server's event log (UpsertItems, DeleteItems)
        from tandem.index_builder.event_log_reader import apply_catalog_edits

        items = apply_catalog_edits(items, catalog_edits)

    cols = EventColumns()
    stats = ReadStats()
    if files.events is None:
        _log.info("data folder %s has no events file: a search-only shop (no behaviour to learn from)", files.folder)
    else:
        cols.extend(read_event_rows(files.events, strict=strict, stats=stats))
        report.read["events"] = stats.to_dict()
    if extra_events is not None:
        extra = ReadStats(file="extra_events")
        report.extra_events = cols.extend(extra_rows(extra_events, strict, extra))
        report.read["extra_events"] = extra.to_dict()
    catalog = build_catalog(items, cols.item_index, config, report)
    del items
    interactions = clean_events(cols, catalog, config, report, now)
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
