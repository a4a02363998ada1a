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
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from retrieval.data import EVENT_CODE, EVENT_TYPES, Event, Item, Query

__all__ = [
    "SUFFIXES",
    "DataFiles",
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

#: Accepted file name endings, in the order they are looked for.
SUFFIXES: tuple[str, ...] = (".jsonl", ".jsonl.gz", ".csv", ".csv.gz", ".parquet")

#: Row tuple of :func:`read_event_rows`: user_id, item_id, ts (epoch s), event code, value (NaN: none).
EventRow = tuple[str, str, int, int, float]

_MISSING: Any = object()
_NAN = float("nan")
# |ts| at or beyond this is not plausible as seconds (year 5138): most likely milliseconds.
_TS_LIMIT = 100_000_000_000
_PARQUET_BATCH = 65_536
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})
_EVENT_EXPECTED = "one of " + ", ".join(EVENT_TYPES)

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


class ReadError(ValueError):
    """A row (or a whole file) that breaks the data contract.

    ``file`` is the file name, ``line`` the 1-based line or row number (0 for the file as a
    whole), ``field`` the offending field (None when the row itself is malformed).
    """

    def __init__(self, file: str, line: int, field: str | None, message: str) -> None:
        self.file, self.line, self.field, self.message = file, line, field, message
        where = f"{file}:{line}: " if line else f"{file}: "
        text = f'{where}field "{field}": {message}' if field else where + message
        super().__init__(text)

    def __reduce__(self):  # keep it picklable for multiprocessing callers
        return (ReadError, (self.file, self.line, self.field, self.message))


@dataclass
class ReadStats:
    """Counts of one read: every row seen, the good ones, the skipped ones by field.

    ``skipped`` maps a field name (``"json"`` / ``"csv"`` for rows that could not be parsed)
    to the number of rows skipped for it; ``errors`` keeps the first :attr:`MAX_ERRORS` messages.
    """

    file: str = ""
    rows_read: int = 0
    rows_ok: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    MAX_ERRORS: ClassVar[int] = 20

    @property
    def rows_skipped(self) -> int:
        return sum(self.skipped.values())

    def add(self, error: ReadError, key: str | None = None) -> None:
        """Count one skipped row under ``key`` (default: the error's field)."""
        key = key or error.field or "row"
        self.skipped[key] = self.skipped.get(key, 0) + 1
        if len(self.errors) < self.MAX_ERRORS:
            self.errors.append(str(error))

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "rows_read": self.rows_read, "rows_ok": self.rows_ok,
                "rows_skipped": self.rows_skipped, "skipped": dict(sorted(self.skipped.items())),
                "errors": list(self.errors)}


@dataclass(frozen=True)
class DataFiles:
    """The files of one data folder; ``queries`` is None when the folder has none."""

    folder: Path
    items: Path
    events: Path
    queries: Path | None = None


def file_format(path: str | Path) -> str:
    """``"jsonl"``, ``"csv"`` or ``"parquet"`` from the file name; gzip is handled by the opener."""
    name = Path(path).name
    for suffix in (".jsonl.gz", ".jsonl", ".csv.gz", ".csv", ".parquet"):
        if name.endswith(suffix):
            return suffix.split(".")[1]
    raise ValueError(f"{path}: unknown data file type; name it with one of the endings "
                     f"{', '.join(SUFFIXES)} (see docs/data.md)")


def find_data_files(data_dir: str | Path) -> DataFiles:
    """Locate ``items.*``, ``events.*`` and the optional ``queries.*`` in ``data_dir``.

    Raises FileNotFoundError when the folder, its items or its events are missing, and
    ValueError when one kind is present in two formats (the reader would have to guess).
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"data folder {folder} does not exist or is not a folder; point --data at the "
                                "folder holding items.jsonl.gz and events.jsonl.gz (see docs/data.md)")
    found: dict[str, Path | None] = {}
    for stem in ("items", "events", "queries"):
        hits = [folder / (stem + s) for s in SUFFIXES if (folder / (stem + s)).is_file()]
        if len(hits) > 1:
            raise ValueError(f"data folder {folder} has {stem} in more than one format "
                             f"({', '.join(p.name for p in hits)}); keep one and move the others away")
        if not hits and stem != "queries":
            near = sorted(p.name for p in folder.iterdir() if p.name.startswith(stem))
            hint = f"; found {', '.join(near)}, which is not an accepted name" if near else ""
            raise FileNotFoundError(f"data folder {folder} has no {stem} file: expected one of "
                                    f"{', '.join(stem + s for s in SUFFIXES)}{hint} (see docs/data.md)")
        found[stem] = hits[0] if hits else None
    return DataFiles(folder, found["items"], found["events"], found["queries"])  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Field coercion. Each helper returns the clean value or raises _Bad(field, expected, value).


class _Bad(Exception):
    def __init__(self, field: str | None, expected: str, value: Any = _MISSING, note: str = "") -> None:
        super().__init__(field)
        self.field = field
        self.message = f"expected {expected}, got {_show(value)}{note}"


def _show(value: Any) -> str:
    if value is _MISSING:
        return "nothing (the field is missing)"
    if isinstance(value, (datetime, date)):
        value = value.isoformat()
    elif isinstance(value, Decimal):
        value = str(value)
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=True, default=repr)
    except (TypeError, ValueError):  # pragma: no cover - default=repr makes this unreachable in practice
        text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _absent(value: Any) -> bool:
    return value is _MISSING or value is None or value == "" or (type(value) is float and value != value)


def _id(rec: dict, name: str, required: bool = True) -> str | None:
    v = rec.get(name, _MISSING)
    t = type(v)
    if t is str:
        if v:
            return v
    elif t is int:
        return str(v)
    elif t is float and v.is_integer():
        return str(int(v))
    if not required and _absent(v):
        return None
    raise _Bad(name, "a non-empty string or integer id", v)


def _text(rec: dict, name: str) -> str:
    v = rec.get(name, _MISSING)
    if type(v) is str:
        return v.strip()
    if _absent(v):
        return ""
    if type(v) is int:
        return str(v)
    raise _Bad(name, "a string", v)


def _number(v: Any, name: str, expected: str) -> float | None:
    """A finite float, None when absent; strings are parsed (CSV)."""
    t = type(v)
    if t is float or t is int:
        x = float(v)
    elif _absent(v):
        return None
    elif t is str:
        try:
            x = float(v)
        except ValueError:
            raise _Bad(name, expected, v) from None
    elif t is Decimal:
        x = float(v)
    else:
        raise _Bad(name, expected, v)
    if x != x:
        return None
    if math.isinf(x):
        raise _Bad(name, expected, v)
    return x


def parse_ts(v: Any) -> int:
    """Epoch seconds from an int, a float, a digit string, an ISO-8601 string or a datetime.

    ISO-8601 without a time zone, and naive datetimes, are taken as UTC. Raises ValueError
    when ``v`` is none of these or is out of the plausible range (milliseconds are refused).
    """
    t = type(v)
    if t is int:
        ts = v
    elif t is float:
        if not math.isfinite(v):
            raise ValueError(v)
        ts = math.floor(v)
    elif t is str:
        s = v.strip()
        if s.lstrip("-").isdigit():
            ts = int(s)
        else:
            dt = datetime.fromisoformat(s)  # ValueError on anything else
            ts = _epoch(dt)
    elif isinstance(v, datetime):
        ts = _epoch(v)
    elif isinstance(v, date):
        ts = _epoch(datetime(v.year, v.month, v.day))
    else:
        raise ValueError(v)
    if not -_TS_LIMIT < ts < _TS_LIMIT:
        raise OverflowError(v)
    return ts


def _epoch(dt: datetime) -> int:
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return math.floor(dt.timestamp())


def _ts(rec: dict) -> int:
    v = rec.get("ts", _MISSING)
    try:
        return parse_ts(v)
    except OverflowError:
        raise _Bad("ts", "epoch seconds or ISO-8601", v, " (milliseconds? divide by 1000)") from None
    except (ValueError, TypeError):
        raise _Bad("ts", "epoch seconds or ISO-8601", v) from None


def _event_code(rec: dict) -> int:
    v = rec.get("event", _MISSING)
    if _absent(v):
        return EVENT_CODE["purchase"]
    if type(v) is str:
        code = EVENT_CODE.get(v)
        if code is None:
            code = EVENT_CODE.get(v.strip().lower())
        if code is not None:
            return code
    raise _Bad("event", _EVENT_EXPECTED, v)


def _event_row_slow(rec: dict) -> EventRow:
    user = _id(rec, "user_id")
    item = _id(rec, "item_id")
    ts = _ts(rec)
    code = _event_code(rec)
    value = _number(rec.get("value", _MISSING), "value", "a number")
    return (user, item, ts, code, _NAN if value is None else value)  # type: ignore[return-value]


def _event_row(rec: dict) -> EventRow:
    # Fast path for the common, well-formed JSON row; anything unusual goes the careful way.
    try:
        u = rec["user_id"]
        i = rec["item_id"]
        t = rec["ts"]
        code = EVENT_CODE[rec.get("event", "purchase")]
    except (KeyError, TypeError):
        return _event_row_slow(rec)
    if (type(u) is str and u and type(i) is str and i and type(t) is int and -_TS_LIMIT < t < _TS_LIMIT
            and rec.get("value") is None):
        return (u, i, t, code, _NAN)
    return _event_row_slow(rec)


def _tags(rec: dict) -> tuple[str, ...]:
    v = rec.get("tags", _MISSING)
    if type(v) is str:
        parts = v.split("|")
    elif isinstance(v, (list, tuple)):
        parts = []
        for x in v:
            if type(x) is str:
                parts.append(x)
            elif type(x) is int:
                parts.append(str(x))
            else:
                raise _Bad("tags", 'a list of strings (or one "|"-separated string)', v)
    elif _absent(v):
        return ()
    else:
        raise _Bad("tags", 'a list of strings (or one "|"-separated string)', v)
    return tuple(dict.fromkeys(p.strip() for p in parts if p.strip()))


def _category(rec: dict) -> str:
    v = rec.get("category", _MISSING)
    if isinstance(v, (list, tuple)) and all(type(x) is str for x in v):
        levels = list(v)
    elif type(v) is str:
        levels = v.split(">")
    elif _absent(v):
        return ""
    else:
        raise _Bad("category", 'a string with levels joined by " > " (or a list of levels)', v)
    return " > ".join(p.strip() for p in levels if p.strip())


def _in_stock(rec: dict) -> bool:
    v = rec.get("in_stock", _MISSING)
    if v is True or v is False:
        return v
    if _absent(v):
        return True
    if type(v) is int and v in (0, 1):
        return bool(v)
    if type(v) is str:
        s = v.strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise _Bad("in_stock", "true or false", v)


def _item(rec: dict) -> Item:
    item_id = _id(rec, "item_id")
    title = _text(rec, "title")
    description = _text(rec, "description")
    category = _category(rec)
    brand = _text(rec, "brand")
    price = _number(rec.get("price", _MISSING), "price", "a number >= 0")
    if price is not None and price < 0:
        raise _Bad("price", "a number >= 0", rec.get("price"))
    return Item(item_id, title, description, category, brand, price, _tags(rec), _in_stock(rec))  # type: ignore[arg-type]


def _query(rec: dict) -> Query:
    query_id = _id(rec, "query_id")
    text = _text(rec, "query")
    if not text:
        raise _Bad("query", "a non-empty string", rec.get("query", _MISSING))
    item_id = _id(rec, "item_id")
    g = rec.get("grade", _MISSING)
    grade: int | None = None
    if type(g) is int:
        grade = g
    elif type(g) is float and g.is_integer():
        grade = int(g)
    elif type(g) is str and g.strip().isdigit():
        grade = int(g)
    if grade is None or not 0 <= grade <= 3:
        raise _Bad("grade", "an integer 0..3", g)
    return Query(query_id, text, item_id, grade, _id(rec, "user_id", required=False))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Record sources: (line or row number, dict) per row, whatever the format.


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
    return f"expected a JSON object, got {_show(rec)}"


def _jsonl_rows(path: Path, convert: Callable[[dict], T], strict: bool, st: ReadStats) -> Iterator[T]:
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
                except _Bad as bad:
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


def _csv_records(path: Path, kind: str, strict: bool, stats: ReadStats) -> Iterator[tuple[int, dict]]:
    name = path.name
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as f:  # type: ignore[operator]
        rdr = csv.reader(f)
        try:
            header = [h.strip() for h in next(rdr)]
        except StopIteration:
            header = []
        _check_columns(name, kind, header, 1)
        width = len(header)
        while True:
            start = rdr.line_num + 1
            try:
                row = next(rdr)
            except StopIteration:
                break
            except (csv.Error, UnicodeDecodeError) as exc:
                stats.rows_read += 1
                _skip(ReadError(name, start, None, f"malformed CSV: {exc}"), strict, stats, "csv")
                continue
            if not row:
                continue
            stats.rows_read += 1
            if len(row) > width:
                row = row[:width]
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


def _table_rows(path: Path, kind: str, convert: Callable[[dict], T], strict: bool,
                st: ReadStats) -> Iterator[T]:
    name = path.name
    records = (_csv_records if file_format(path) == "csv" else _parquet_records)(path, kind, strict, st)
    for line, rec in records:
        try:
            out = convert(rec)
        except _Bad as bad:
            _skip(ReadError(name, line, bad.field, bad.message), strict, st, bad.field)  # type: ignore[arg-type]
            continue
        st.rows_ok += 1
        yield out


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
    rows = _jsonl_rows(path, convert, strict, st) if file_format(path) == "jsonl" else \
        _table_rows(path, kind, convert, strict, st)
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
    return _read(path, "items", _item, strict, stats)


def read_event_rows(path: str | Path, *, strict: bool = False,
                    stats: ReadStats | None = None) -> Iterator[EventRow]:
    """Validated event rows as ``(user_id, item_id, ts, event_code, value)`` tuples.

    ``ts`` is int epoch seconds, ``event_code`` the int code of :data:`EVENT_CODE`, ``value`` a
    float (NaN when absent). The lean path for large files: no object per row beyond the tuple.
    """
    return _read(path, "events", _event_row, strict, stats)


def read_events(path: str | Path, *, strict: bool = False, stats: ReadStats | None = None) -> Iterator[Event]:
    """Validated events of an events file, in file order."""
    rows = read_event_rows(path, strict=strict, stats=stats)
    return (Event(u, i, t, EVENT_TYPES[c], None if v != v else v) for u, i, t, c, v in rows)


def read_queries(path: str | Path, *, strict: bool = False, stats: ReadStats | None = None) -> Iterator[Query]:
    """Validated graded queries of a queries file, in file order."""
    return _read(path, "queries", _query, strict, stats)
