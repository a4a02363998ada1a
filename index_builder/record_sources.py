"""Record sources: ``(line or row number, dict)`` per row of a JSONL, CSV or Parquet file, read
one row (or one Parquet batch) at a time, with bad rows skipped and counted or raised (strict).

:func:`jsonl_rows` parses and converts in one loop (the hot path for large event files);
:func:`table_rows` does the same for CSV and Parquet.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from tandem.index_builder.data_files import file_format
from tandem.index_builder.read_report import ReadError, ReadStats
from tandem.index_builder.row_parsing import BadField, show_value

__all__ = ["jsonl_rows", "table_rows"]

T = TypeVar("T")

_PARQUET_BATCH = 65_536
_REQUIRED = {
    "items": ("item_id",),
    "events": ("user_id", "item_id", "ts"),
    "queries": ("query_id", "query", "item_id", "grade"),
}
_KNOWN = {
    "items": ("item_id", "title", "description", "category", "brand", "price", "tags", "in_stock"),
    "events": ("user_id", "item_id", "ts", "event", "value"),
    "queries": ("query_id", "query", "item_id", "grade", "user_id"),
}


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _skip(err: ReadError, strict: bool, stats: ReadStats, key: str) -> None:
    if strict:
        raise err
    stats.add(err, key)


def _json_error(raw: bytes) -> str:
    """The message for a line the fast scanner refused (json.loads gives the precise reason)."""
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError as exc:
        return f"malformed JSON: {exc.msg} (column {exc.colno})"
    except ValueError:  # UnicodeDecodeError
        return "malformed JSON: the line is not valid UTF-8"
    return f"expected a JSON object, got {show_value(rec)}"


def jsonl_rows(path: Path, convert: Callable[[dict], T], strict: bool, st: ReadStats) -> Iterator[T]:
    """Parse and convert in one loop: this is the hot path for large event files."""
    name = path.name
    scan = json.JSONDecoder().scan_once  # the C scanner, without json.loads' per-call overhead
    line = read = ok = 0
    raw_file = _open_binary(path)
    f = io.BufferedReader(raw_file, 1 << 20) if isinstance(raw_file, gzip.GzipFile) else raw_file
    try:
        with f:
            for raw in f:
                line += 1
                try:
                    text = raw.decode()
                    rec, end = scan(text, 0)
                    if type(rec) is not dict or (end != len(text) and text[end:].strip()):
                        raise ValueError
                except (StopIteration, ValueError):  # odd whitespace, bad JSON, not an object, not UTF-8
                    if not raw.strip():
                        continue
                    read += 1
                    try:
                        rec = json.loads(raw)
                    except ValueError:
                        rec = None
                    if type(rec) is not dict:
                        _skip(ReadError(name, line, None, _json_error(raw)), strict, st, "json")
                        continue
                else:
                    read += 1
                try:
                    out = convert(rec)
                except BadField as bad:
                    _skip(ReadError(name, line, bad.field, bad.message), strict, st, bad.field)  # type: ignore[arg-type]
                    continue
                ok += 1
                yield out
    finally:
        st.rows_read += read
        st.rows_ok += ok


def _check_columns(name: str, kind: str, columns: list[str], line: int) -> None:
    for col in _REQUIRED[kind]:
        if col not in columns:
            shown = ", ".join(columns[:12]) + (", ..." if len(columns) > 12 else "")
            raise ReadError(name, line, col, f"column missing (found columns: {shown}); "
                                             f"{kind} need {', '.join(_REQUIRED[kind])} (see docs/data.md)")


def _not_utf8(cells: list[str]) -> int | None:
    """Index of the first cell holding bytes that were not UTF-8 (decoded as surrogates), else None."""
    try:
        "".join(cells).encode("utf-8")  # one C call for the common, clean row
        return None
    except UnicodeEncodeError:
        return next(k for k, cell in enumerate(cells) if not cell.isascii() and _has_surrogate(cell))


def _has_surrogate(cell: str) -> bool:
    try:
        cell.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _bad_bytes(cell: str) -> str:
    raw = cell.encode("utf-8", "surrogateescape")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"byte 0x{raw[exc.start]:02x} in {show_value(raw.decode('utf-8', 'replace'))}"
    return "?"  # pragma: no cover


_ENCODING_HINT = ("the file is not UTF-8 (Latin-1 / Windows-1252?); convert it, e.g. "
                  "iconv -f cp1252 -t utf-8 FILE > FILE.utf8")


def _csv_records(path: Path, kind: str, strict: bool, stats: ReadStats) -> Iterator[tuple[int, dict]]:
    name = path.name
    opener = gzip.open if name.endswith(".gz") else open
    # bytes that are not UTF-8 decode to surrogates instead of failing a whole decoder chunk (which
    # named the wrong line and dropped the rest of the file); rows holding them are reported below
    with opener(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="") as f:  # type: ignore[operator]
        rdr = csv.reader(f)
        try:
            header = [h.strip() for h in next(rdr)]
        except StopIteration:
            header = []
        bad = _not_utf8(header)
        if bad is not None:
            raise ReadError(name, 1, None, f"the header has {_bad_bytes(header[bad])}: {_ENCODING_HINT}")
        _check_columns(name, kind, header, 1)
        width = len(header)
        while True:
            start = rdr.line_num + 1
            try:
                row = next(rdr)
            except StopIteration:
                break
            except csv.Error as exc:
                stats.rows_read += 1
                _skip(ReadError(name, start, None, f"malformed CSV: {exc}"), strict, stats, "csv")
                continue
            if not row:
                continue
            stats.rows_read += 1
            if len(row) > width:
                row = row[:width]
            bad = _not_utf8(row)
            if bad is not None:
                field = header[bad] if bad < width else None
                _skip(ReadError(name, start, field, f"{_bad_bytes(row[bad])}: {_ENCODING_HINT}"), strict, stats,
                      "encoding")
                continue
            yield start, dict(zip(header, row, strict=False))


def _parquet_records(path: Path, kind: str, strict: bool, stats: ReadStats) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    name = path.name
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError family
        raise ReadError(name, 0, None, f"not a readable Parquet file: {exc}") from None
    names = pf.schema_arrow.names
    _check_columns(name, kind, names, 0)
    wanted = [c for c in _KNOWN[kind] if c in names]
    row = 0
    for batch in pf.iter_batches(batch_size=_PARQUET_BATCH, columns=wanted):
        cols = batch.to_pydict()
        keys = list(cols)
        for values in zip(*cols.values(), strict=True):
            row += 1
            stats.rows_read += 1
            yield row, dict(zip(keys, values, strict=True))


def table_rows(path: Path, kind: str, convert: Callable[[dict], T], strict: bool,
                st: ReadStats) -> Iterator[T]:
    name = path.name
    records = (_csv_records if file_format(path) == "csv" else _parquet_records)(path, kind, strict, st)
    for line, rec in records:
        try:
            out = convert(rec)
        except BadField as bad:
            _skip(ReadError(name, line, bad.field, bad.message), strict, st, bad.field)  # type: ignore[arg-type]
            continue
        st.rows_ok += 1
        yield out
