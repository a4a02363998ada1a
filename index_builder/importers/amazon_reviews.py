"""Import McAuley's Amazon review dumps (2014 and 2018 releases) into a Tandem data folder.

Reviews, one record a line (JSON in both releases; a Python literal is accepted too):
``reviewerID``, ``asin``, ``unixReviewTime`` (``reviewTime`` "MM DD, YYYY" when it is missing),
``overall``. Each review becomes one event ``rate`` with ``value = overall``. Why ``rate`` and
not ``purchase``: a review proves the user rated the item, not that they bought it (the 2014
release has no purchase flag and the 2018 ``verified`` flag is false for many reviews), and the
stars only mean something as a rating: a 1-star review is not a vote for the item. ``rate``
weighs as much as ``purchase`` in the default implicit weights (``retrieval.data.EVENT_WEIGHT``),
so nothing is lost for implicit models; ``--min-rating 4`` keeps only the positive ones.

Meta, one record a line, the layout detected per line:

* 2014: Python literals (single quotes), parsed with ``ast.literal_eval`` (never ``eval``) after
  ``json.loads`` fails; ``categories`` is a list of category paths (the first becomes the
  category), ``price`` a number, ``description`` a string.
* 2018: JSON; ``category`` is one path (a list of levels), ``price`` a string such as
  ``"$12.99"`` or a range ``"$5.99 - $9.99"`` (the lower bound is kept: the "from" price a shop
  shows), ``description`` a list of paragraphs.

Titles, brands, categories and descriptions lose HTML tags and entities. An item without a
title takes the first words of its description; with neither it is left out and counted, and
so are its reviews (an event must name a catalog item). Only items that have reviews are
written, in meta file order; events keep review file order (reviews have day resolution, so a
user's same-day reviews keep the dump's order, which is arbitrary).

Streaming: pass 1 turns reviews into events (a staging file) and collects the reviewed asins;
pass 2 streams the meta into items; pass 3, only when some reviewed asin got no item, copies the
staged events without those. Memory holds the sets of asins and users, never the rows.
Output is staged under temporary names and renamed into place only when all passes succeed.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import logging
import math
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from tandem.index_builder.cleaning import title_from_description
from tandem.index_builder.readers import SUFFIXES, ReadError, ReadStats
from tandem.index_builder.writers import open_text_out, write_events, write_items
from tandem.retrieval.data import Event, Item

__all__ = ["AmazonImportSummary", "import_amazon_reviews", "parse_record", "parse_price", "meta_layout",
           "review_layout"]

_log = logging.getLogger(__name__)

_NUM = r"(\d[\d,]*(?:\.\d+)?)"
_PRICE_RE = re.compile(rf"\$?\s*{_NUM}(?:\s*-\s*\$?\s*{_NUM})?")
_TAG_RE = re.compile(r"<[^>]*>")
_SPACE_RE = re.compile(r"\s+")
_TS_LIMIT = 100_000_000_000  # beyond this an epoch in seconds is implausible (milliseconds?)
_KEYS_2014 = frozenset({"categories", "salesRank", "imUrl", "related"})
_KEYS_2018 = frozenset({"category", "main_cat", "also_buy", "also_view", "feature", "tech1", "tech2", "rank",
                        "date", "image", "similar_item", "details", "fit"})


# ---------------------------------------------------------------------------------------------
# Parsing single records


def parse_record(line: str) -> tuple[dict, bool]:
    """One dump line as a dict: JSON first, else a Python literal (never evaluated as code).

    Returns ``(record, was_python_literal)``. Raises ValueError saying why the line is neither.
    ``ast.literal_eval`` accepts only literals (strings, numbers, tuples, lists, dicts, sets,
    booleans, None), so a line such as ``__import__('os').system('...')`` is refused, and the
    same text inside a quoted string is plain data.
    """
    try:
        rec = json.loads(line)
        literal = False
    except (ValueError, RecursionError):
        try:
            rec = ast.literal_eval(line.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            raise ValueError("malformed line: neither JSON nor a Python literal") from None
        literal = True
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object ({{...}}), got {type(rec).__name__}")
    return rec, literal


def review_layout(rec: dict) -> str:
    """``"2018"`` (has ``verified``, ``vote``, ``style`` or ``image``), ``"2014"`` (``helpful``) or ``"unknown"``."""
    if "verified" in rec or "vote" in rec or "style" in rec or "image" in rec:
        return "2018"
    return "2014" if "helpful" in rec else "unknown"


def meta_layout(rec: dict, literal: bool) -> str:
    """``"2014"`` (a Python literal or 2014-only keys), ``"2018"`` (2018-only keys) or ``"unknown"``."""
    if literal or not _KEYS_2014.isdisjoint(rec):
        return "2014"
    return "2018" if not _KEYS_2018.isdisjoint(rec) else "unknown"


def parse_price(value: Any) -> float | None:
    """A price in currency units, or None when there is none or it cannot be read.

    2014 numbers are taken as they are (negative, NaN or infinite: None); 2018 strings such as
    ``"$12.99"`` or ``"$1,299.00"`` are read; a range ``"$5.99 - $9.99"`` gives its lower bound.
    Anything else (``""``, HTML or script fragments found in some 2018 lines) gives None.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if isinstance(value, str):
        m = _PRICE_RE.fullmatch(value.strip())
        if m:
            low = float(m.group(1).replace(",", ""))
            return min(low, float(m.group(2).replace(",", ""))) if m.group(2) else low
    return None


def _clean_text(s: str) -> str:
    return _SPACE_RE.sub(" ", html.unescape(_TAG_RE.sub(" ", s))).strip()


class _Bad(Exception):
    """A field that spoils its line: ``field`` names it, the message says what was expected."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message)
        self.field, self.message = field, message


def _show(v: Any) -> str:
    text = json.dumps(v, ensure_ascii=False, default=repr) if v is not _MISSING else "nothing (the field is missing)"
    return text if len(text) <= 60 else text[:57] + "..."


_MISSING: Any = object()


def _id(rec: dict, name: str) -> str:
    v = rec.get(name, _MISSING)
    if type(v) is not str or not v.strip():
        raise _Bad(name, f"expected a non-empty string, got {_show(v)}")
    return v.strip()


def _review_ts(rec: dict) -> int:
    v = rec.get("unixReviewTime", _MISSING)
    if v is _MISSING or v is None:
        rt = rec.get("reviewTime")
        if type(rt) is str:
            try:
                return int(datetime.strptime(rt.strip(), "%m %d, %Y").replace(tzinfo=UTC).timestamp())
            except ValueError:
                pass
        raise _Bad("unixReviewTime", f"expected epoch seconds (or reviewTime \"MM DD, YYYY\"), got {_show(v)}")
    if type(v) is float and v.is_integer():
        v = int(v)
    elif type(v) is str and v.strip().isdigit():
        v = int(v.strip())
    if type(v) is not int:
        raise _Bad("unixReviewTime", f"expected epoch seconds, got {_show(v)}")
    if not 0 <= v < _TS_LIMIT:
        raise _Bad("unixReviewTime", f"expected epoch seconds, got {v}" + (" (milliseconds?)" if v > 0 else ""))
    return v


def _rating(rec: dict) -> float:
    v = rec.get("overall", _MISSING)
    if type(v) is str:
        try:
            v = float(v)
        except ValueError:
            pass
    if type(v) not in (int, float) or not 1 <= v <= 5:
        raise _Bad("overall", f"expected a star rating 1..5, got {_show(v)}")
    return float(v)


def _text_field(rec: dict, name: str) -> str:
    """A string field (a list of strings is joined with spaces), cleaned of HTML; absent -> ""."""
    v = rec.get(name)
    if v is None:
        return ""
    if type(v) is str:
        return _clean_text(v)
    if isinstance(v, list) and all(type(x) is str for x in v):
        return _clean_text(" ".join(v))
    raise _Bad(name, f"expected a string or a list of strings, got {_show(v)}")


def _category(rec: dict) -> str:
    """2014 ``categories`` (list of paths: the first one) or 2018 ``category`` (one path)."""
    v = rec.get("categories")
    if v is not None:
        ok = isinstance(v, list) and all(isinstance(p, list) and all(type(x) is str for x in p) for p in v)
        if not ok:
            raise _Bad("categories", f"expected a list of category paths (lists of strings), got {_show(v)}")
        path = v[0] if v else []
    else:
        path = rec.get("category")
        if path is None:
            return ""
        if not (isinstance(path, list) and all(type(x) is str for x in path)):
            raise _Bad("category", f"expected a list of category levels, got {_show(path)}")
    # ">" separates levels in the data contract, so it must not appear inside one.
    levels = (_clean_text(x).replace(">", "/") for x in path)
    return " > ".join(x for x in levels if x)


# ---------------------------------------------------------------------------------------------
# The import


@dataclass
class AmazonImportSummary:
    """What one import read, wrote and left out.

    ``reviews`` / ``meta`` are per-file :class:`~index_builder.readers.ReadStats`: ``rows_read``
    non-blank lines, ``skipped`` malformed lines by field (``"line"`` when the line itself did not
    parse), ``errors`` the first messages as ``file:line: reason``. ``dropped`` counts rows left out
    on purpose: ``below_min_rating`` reviews, ``no_title`` items (neither title nor description),
    ``duplicate_asin`` meta lines after the first, ``events_without_item`` reviews of an item
    with no usable meta line.
    """

    out_dir: Path
    users: int = 0
    items: int = 0
    events: int = 0
    reviews: ReadStats = field(default_factory=ReadStats)
    meta: ReadStats = field(default_factory=ReadStats)
    layouts: dict[str, dict[str, int]] = field(default_factory=lambda: {"reviews": {}, "meta": {}})
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("below_min_rating", "no_title", "duplicate_asin", "events_without_item"), 0))
    titles_from_description: int = 0
    prices_unreadable: int = 0
    meta_not_reviewed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"users": self.users, "items": self.items, "events": self.events,
                "reviews": self.reviews.to_dict(), "meta": self.meta.to_dict(),
                "layouts": self.layouts, "dropped": dict(self.dropped),
                "titles_from_description": self.titles_from_description,
                "prices_unreadable": self.prices_unreadable, "meta_not_reviewed": self.meta_not_reviewed}

    def summary(self) -> str:
        """A few lines for the console."""

        def counts(d: dict[str, int]) -> str:
            return ", ".join(f"{k} {v:,}" for k, v in sorted(d.items()) if v) or "none"

        r, m, d = self.reviews, self.meta, self.dropped
        lines = [
            f"wrote {self.out_dir}: {self.users:,} users, {self.items:,} items, {self.events:,} events "
            "(rate, value = stars)",
            f"reviews: {r.rows_read:,} lines (layout: {counts(self.layouts['reviews'])}); "
            f"malformed skipped: {counts(r.skipped)}; below --min-rating: {d['below_min_rating']:,}",
            f"meta: {m.rows_read:,} lines (layout: {counts(self.layouts['meta'])}); "
            f"malformed skipped: {counts(m.skipped)}; not reviewed: {self.meta_not_reviewed:,}; "
            f"no title or description: {d['no_title']:,}; duplicate asin: {d['duplicate_asin']:,}",
            f"titles from description: {self.titles_from_description:,}; "
            f"prices unreadable: {self.prices_unreadable:,}; "
            f"reviews of items without a catalog entry dropped: {d['events_without_item']:,}",
        ]
        errors = r.errors + m.errors
        if errors:
            lines.append("first problems:")
            lines.extend(f"  {e}" for e in errors[:10])
        return "\n".join(lines)


def _open_lines(path: Path) -> IO[bytes]:
    """Binary lines; gzip recognised by its magic bytes, whatever the name."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _records(path: Path, stats: ReadStats, strict: bool) -> Iterator[tuple[int, dict, bool]]:
    """(line number, record, was a Python literal) for each line that parses; others are counted."""
    stats.file = path.name
    n = 0
    try:
        with _open_lines(path) as f:
            for n, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                stats.rows_read += 1
                try:
                    rec, literal = parse_record(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    _skip(ReadError(path.name, n, None, "the line is not valid UTF-8"), stats, strict, "line")
                    continue
                except ValueError as exc:
                    _skip(ReadError(path.name, n, None, str(exc)), stats, strict, "line")
                    continue
                yield n, rec, literal
    except (EOFError, OSError, zlib.error) as exc:
        raise ValueError(f"{path}: unreadable after line {n} ({exc}); the file is truncated or corrupt, "
                         "download it again") from None


def _skip(err: ReadError, stats: ReadStats, strict: bool, key: str | None = None) -> None:
    if strict:
        raise err
    stats.add(err, key)


def _events(path: Path, min_rating: float | None, strict: bool, s: AmazonImportSummary,
            asins: set[str]) -> Iterator[Event]:
    layouts = s.layouts["reviews"]
    for n, rec, _ in _records(path, s.reviews, strict):
        try:
            user, asin, ts, stars = _id(rec, "reviewerID"), _id(rec, "asin"), _review_ts(rec), _rating(rec)
        except _Bad as bad:
            _skip(ReadError(path.name, n, bad.field, bad.message), s.reviews, strict)
            continue
        s.reviews.rows_ok += 1
        layout = review_layout(rec)
        layouts[layout] = layouts.get(layout, 0) + 1
        if min_rating is not None and stars < min_rating:
            s.dropped["below_min_rating"] += 1
            continue
        asins.add(asin)
        yield Event(user, asin, ts, "rate", stars)


def _items(path: Path, reviewed: set[str], strict: bool, s: AmazonImportSummary, kept: set[str]) -> Iterator[Item]:
    layouts = s.layouts["meta"]
    for n, rec, literal in _records(path, s.meta, strict):
        try:
            asin = _id(rec, "asin")
            title, description = _text_field(rec, "title"), _text_field(rec, "description")
            brand, category = _text_field(rec, "brand"), _category(rec)
        except _Bad as bad:
            _skip(ReadError(path.name, n, bad.field, bad.message), s.meta, strict)
            continue
        s.meta.rows_ok += 1
        layout = meta_layout(rec, literal)
        layouts[layout] = layouts.get(layout, 0) + 1
        if asin not in reviewed:
            s.meta_not_reviewed += 1
            continue
        if asin in kept:
            s.dropped["duplicate_asin"] += 1
            continue
        if not title:
            title = title_from_description(description)
            if not title:
                s.dropped["no_title"] += 1
                continue
            s.titles_from_description += 1
        raw_price = rec.get("price")
        price = parse_price(raw_price)
        if price is None and raw_price not in (None, ""):
            s.prices_unreadable += 1
        kept.add(asin)
        yield Item(asin, title, description, category, brand, price)


def _copy_known(staged: Path, final: Path, known: set[str]) -> tuple[int, set[str], int]:
    """Copy staged event lines whose item is in ``known``; returns (kept, users, dropped)."""
    users: set[str] = set()
    kept = dropped = 0
    with gzip.open(staged, "rb") as src, open_text_out(final) as out:
        for raw in src:
            rec = json.loads(raw)
            if rec["item_id"] in known:
                out.write(raw.decode("utf-8"))
                users.add(rec["user_id"])
                kept += 1
            else:
                dropped += 1
    return kept, users, dropped


def _check_out_dir(out_dir: Path) -> None:
    for stem in ("items", "events"):
        for suffix in SUFFIXES:
            other = out_dir / (stem + suffix)
            if suffix != ".jsonl.gz" and other.exists():
                raise ValueError(f"{out_dir} already holds {other.name}; the import writes {stem}.jsonl.gz and a "
                                 "data folder may hold only one format: choose an empty --out folder")


def import_amazon_reviews(reviews: str | Path, meta: str | Path, out_dir: str | Path, *,
                          min_rating: float | None = None, strict: bool = False) -> AmazonImportSummary:
    """Write ``items.jsonl.gz``, ``events.jsonl.gz`` and ``source.json`` into ``out_dir``.

    Lenient by default: malformed lines are skipped and counted; ``strict=True`` raises
    :class:`~index_builder.readers.ReadError` (a ValueError naming file and line) on the first,
    leaving ``out_dir`` as it was.
    """
    reviews, meta, out_dir = Path(reviews), Path(meta), Path(out_dir)
    for p, flag in ((reviews, "--reviews"), (meta, "--meta")):
        if not p.is_file():
            raise FileNotFoundError(f"{flag} {p} does not exist or is not a file")
    if min_rating is not None and not 1 <= min_rating <= 5:
        raise ValueError(f"--min-rating must be between 1 and 5 (Amazon stars), got {min_rating}")
    _check_out_dir(out_dir)
    s = AmazonImportSummary(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = {name: out_dir / f".importing.{name}" for name in ("events.jsonl.gz", "items.jsonl.gz",
                                                                "source.json")}
    staged_all_events = out_dir / ".importing.all-events.jsonl.gz"
    try:
        reviewed: set[str] = set()
        users: set[str] = set()

        def events() -> Iterator[Event]:
            for e in _events(reviews, min_rating, strict, s, reviewed):
                users.add(e.user_id)
                yield e

        n_events = write_events(staged_all_events, events())
        kept: set[str] = set()
        s.items = write_items(staged["items.jsonl.gz"], _items(meta, reviewed, strict, s, kept))
        if kept == reviewed:
            staged_all_events.replace(staged["events.jsonl.gz"])
            s.events, s.users = n_events, len(users)
        else:
            users.clear()
            s.events, users_kept, s.dropped["events_without_item"] = _copy_known(
                staged_all_events, staged["events.jsonl.gz"], kept)
            s.users = len(users_kept)
        source = {
            "importer": "tandem import amazon-reviews",
            "inputs": {"reviews": {"path": str(reviews), "bytes": reviews.stat().st_size},
                       "meta": {"path": str(meta), "bytes": meta.stat().st_size}},
            "event_rule": "one 'rate' event per review, value = overall (1..5 stars), ts = unixReviewTime "
                      "(day resolution)",
            "timestamps": "real (from the reviews)",
            "min_rating": min_rating,
            "item_rule": "reviewed asins with a title (or a description to take one from), in meta order; "
                     "category = the first 2014 category path or the 2018 category; price of a range = "
                     "its lower bound",
            **s.to_dict(),
        }
        with open(staged["source.json"], "w", encoding="utf-8") as f:
            json.dump(source, f, indent=2, ensure_ascii=False)
            f.write("\n")
        for name, path in staged.items():
            os.replace(path, out_dir / name)
    finally:
        for path in (*staged.values(), staged_all_events):
            path.unlink(missing_ok=True)
    for st in (s.reviews, s.meta):
        if st.rows_skipped:
            _log.warning("%s: %d malformed lines skipped (%s); first: %s", st.file, st.rows_skipped,
                         ", ".join(f"{k} {v}" for k, v in sorted(st.skipped.items())), st.errors[0])
    if s.dropped["events_without_item"]:
        _log.warning("%d reviews dropped: their item has no meta line with a title or description",
                     s.dropped["events_without_item"])
    return s
