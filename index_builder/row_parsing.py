"""One raw record (a dict from JSONL, CSV or Parquet) -> a validated row of the data contract.

Each helper returns the clean value or raises :class:`BadField` naming the field, what was
expected and what was found; the record sources (:mod:`tandem.index_builder.record_sources`) turn that
into a :class:`~index_builder.read_report.ReadError` with the file and line.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from tandem.retrieval.data import EVENT_CODE, EVENT_TYPES, Item, Query

__all__ = ["EventRow", "BadField", "show_value", "parse_ts", "parse_item", "parse_event_row", "parse_query"]

#: Row tuple of :func:`read_event_rows`: user_id, item_id, ts (epoch s), event code, value (NaN: none).
EventRow = tuple[str, str, int, int, float]

_MISSING: Any = object()
_NAN = float("nan")
# |ts| at or beyond this is not plausible as seconds (year 5138): most likely milliseconds.
_TS_LIMIT = 100_000_000_000
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f"})
_EVENT_EXPECTED = "one of " + ", ".join(EVENT_TYPES)


class BadField(Exception):
    def __init__(self, field: str | None, expected: str, value: Any = _MISSING, note: str = "") -> None:
        super().__init__(field)
        self.field = field
        self.message = f"expected {expected}, got {show_value(value)}{note}"


def show_value(value: Any) -> str:
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
    raise BadField(name, "a non-empty string or integer id", v)


def _text(rec: dict, name: str) -> str:
    v = rec.get(name, _MISSING)
    if type(v) is str:
        return v.strip()
    if _absent(v):
        return ""
    if type(v) is int:
        return str(v)
    raise BadField(name, "a string", v)


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
            raise BadField(name, expected, v) from None
    elif t is Decimal:
        x = float(v)
    else:
        raise BadField(name, expected, v)
    if x != x:
        return None
    if math.isinf(x):
        raise BadField(name, expected, v)
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
        ts = parse_ts(v)
    except OverflowError:
        raise BadField("ts", "epoch seconds or ISO-8601", v, " (milliseconds? divide by 1000)") from None
    except (ValueError, TypeError):
        raise BadField("ts", "epoch seconds or ISO-8601", v) from None
    if ts < 0:
        raise BadField("ts", "a time in 1970 or later (epoch seconds >= 0)", v)
    return ts


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
    raise BadField("event", _EVENT_EXPECTED, v)


def _event_row_slow(rec: dict) -> EventRow:
    user = _id(rec, "user_id")
    item = _id(rec, "item_id")
    ts = _ts(rec)
    code = _event_code(rec)
    value = _number(rec.get("value", _MISSING), "value", "a number")
    return (user, item, ts, code, _NAN if value is None else value)  # type: ignore[return-value]


def parse_event_row(rec: dict) -> EventRow:
    # Fast path for the common, well-formed JSON row; anything unusual goes the careful way.
    try:
        u = rec["user_id"]
        i = rec["item_id"]
        t = rec["ts"]
        code = EVENT_CODE[rec.get("event", "purchase")]
    except (KeyError, TypeError):
        return _event_row_slow(rec)
    if (type(u) is str and u and type(i) is str and i and type(t) is int and 0 <= t < _TS_LIMIT
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
                raise BadField("tags", 'a list of strings (or one "|"-separated string)', v)
    elif _absent(v):
        return ()
    else:
        raise BadField("tags", 'a list of strings (or one "|"-separated string)', v)
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
        raise BadField("category", 'a string with levels joined by " > " (or a list of levels)', v)
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
    raise BadField("in_stock", "true or false", v)


def parse_item(rec: dict) -> Item:
    item_id = _id(rec, "item_id")
    title = _text(rec, "title")
    description = _text(rec, "description")
    category = _category(rec)
    brand = _text(rec, "brand")
    price = _number(rec.get("price", _MISSING), "price", "a number >= 0")
    if price is not None and price < 0:
        raise BadField("price", "a number >= 0", rec.get("price"))
    return Item(item_id, title, description, category, brand, price, _tags(rec), _in_stock(rec))  # type: ignore[arg-type]


def parse_query(rec: dict) -> Query:
    query_id = _id(rec, "query_id")
    text = _text(rec, "query")
    if not text:
        raise BadField("query", "a non-empty string", rec.get("query", _MISSING))
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
        raise BadField("grade", "an integer 0..3", g)
    return Query(query_id, text, item_id, grade, _id(rec, "user_id", required=False))  # type: ignore[arg-type]
