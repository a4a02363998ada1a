"""Streaming, validating readers for the data contract (docs/data.md).

A data folder holds ``items.*``, ``events.*`` and optionally ``queries.*``, each JSONL, CSV or
Parquet, JSONL and CSV optionally gzip-compressed; the format is chosen by the extension.

Readers yield one validated record at a time and never hold a whole file: JSONL and CSV are read
line by line, Parquet by row batches. A row that breaks the contract is a :class:`ReadError`
whose text names the file, the 1-based line (CSV: the header is line 1; Parquet: the row number),
the field, what was expected and what was found::

    events.jsonl.gz:1234: field "ts": expected epoch seconds or ISO-8601, got "yesterday"

Lenient by default: bad rows are skipped and counted in a :class:`ReadStats`; ``strict=True``
raises on the first. Problems that spoil every row (a required CSV/Parquet column missing, a
corrupt gzip stream) raise in both modes.

:func:`read_event_rows` is the lean path the cleaning stage uses for large event files: it yields
plain tuples instead of :class:`~retrieval.data.Event` objects.

The work is split by job: :mod:`tandem.index_builder.data_files` (which files, which format),
:mod:`tandem.index_builder.row_parsing` (one record -> a validated row), :mod:`tandem.index_builder.record_sources`
(records of a JSONL, CSV or Parquet file), :mod:`tandem.index_builder.read_report` (errors and counts);
every public name stays importable from here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from tandem.index_builder.data_files import SUFFIXES, DataFiles, file_format, find_data_files
from tandem.index_builder.read_report import ReadError, ReadStats
from tandem.index_builder.record_sources import jsonl_rows, table_rows
from tandem.index_builder.row_parsing import EventRow, parse_event_row, parse_item, parse_query, parse_ts
from tandem.retrieval.data import EVENT_TYPES, Event, Item, Query

__all__ = [
    "SUFFIXES",
    "DataFiles",
    "EventRow",
    "ReadError",
    "ReadStats",
    "find_data_files",
    "file_format",
    "parse_ts",
    "read_items",
    "read_events",
    "read_event_rows",
    "read_queries",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")


def _read(path: str | Path, kind: str, convert: Callable[[dict], T], strict: bool,
          stats: ReadStats | None) -> Iterator[T]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    file_format(path)  # unknown endings fail here, at the call
    st = stats if stats is not None else ReadStats()
    if not st.file:
        st.file = path.name
    return _convert(path, kind, convert, strict, st)


def _convert(path: Path, kind: str, convert: Callable[[dict], T], strict: bool, st: ReadStats) -> Iterator[T]:
    name = path.name
    rows = jsonl_rows(path, convert, strict, st) if file_format(path) == "jsonl" else \
        table_rows(path, kind, convert, strict, st)
    try:
        yield from rows
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream, a disk error
        raise ReadError(name, 0, None, f"cannot read the file after {st.rows_read} rows: {exc}") from exc
    if st.rows_skipped:
        fields = ", ".join(f"{k}: {v}" for k, v in sorted(st.skipped.items()))
        _log.warning("%s: skipped %d of %d rows (%s); first: %s", name, st.rows_skipped, st.rows_read,
                     fields, st.errors[0])


def read_items(path: str | Path, *, strict: bool = False, stats: ReadStats | None = None) -> Iterator[Item]:
    """Validated catalog rows of an items file, in file order.

    A missing title is read as ``""`` (cleaning fills it from the description or drops the item).
    """
    return _read(path, "items", parse_item, strict, stats)


def read_event_rows(path: str | Path, *, strict: bool = False,
                    stats: ReadStats | None = None) -> Iterator[EventRow]:
    """Validated event rows as ``(user_id, item_id, ts, event_code, value)`` tuples.

    ``ts`` is int epoch seconds, ``event_code`` the int code of :data:`EVENT_CODE`, ``value`` a
    float (NaN when absent). The lean path for large files: no object per row beyond the tuple.
    """
    return _read(path, "events", parse_event_row, strict, stats)


def read_events(path: str | Path, *, strict: bool = False, stats: ReadStats | None = None) -> Iterator[Event]:
    """Validated events of an events file, in file order."""
    rows = read_event_rows(path, strict=strict, stats=stats)
    return (Event(u, i, t, EVENT_TYPES[c], None if v != v else v) for u, i, t, c, v in rows)


def read_queries(path: str | Path, *, strict: bool = False, stats: ReadStats | None = None) -> Iterator[Query]:
    """Validated graded queries of a queries file, in file order."""
    return _read(path, "queries", parse_query, strict, stats)
