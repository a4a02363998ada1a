"""Import McAuley's Amazon review dumps (2014 and 2018 layouts) into the canonical format.

Reviews (both years are JSON lines): ``reviewerID``, ``asin``, ``unixReviewTime``, ``overall``.
Each review becomes an event ``rate`` with ``value = overall``: a review implies the user
bought the item, and keeping the star rating as the value lets a consumer tell a 1-star from
a 5-star purchase (``rate`` counts as strongly as ``purchase`` in the default event weights).

Meta: 2014 lines are Python literals (single quotes), parsed with ``ast.literal_eval`` and never
``eval``; 2018 lines are JSON. The layout is detected per line. ``categories`` (2014, a list of
category paths) or ``category`` (2018, one path) becomes ``" > "``-joined levels; a 2018 price
string ``"$12.99"`` or range ``"$5.00 - $9.00"`` becomes a number (a range's lower bound).
"""

from __future__ import annotations

import ast
import gzip
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from index_builder.cleaning import title_from_description
from index_builder.writers import write_events, write_items
from retrieval.data import Event, Item

__all__ = ["AmazonImportSummary", "import_amazon_reviews", "parse_meta_line", "parse_price"]

log = logging.getLogger(__name__)
_PRICE = re.compile(r"\$?\s*([0-9][0-9,]*(?:\.[0-9]+)?)")


def _open(path: Path) -> IO[str]:
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


@dataclass
class AmazonImportSummary:
    users: int = 0
    items: int = 0
    events: int = 0
    skipped: Counter = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def note(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        if len(self.errors) < 20:
            self.errors.append(message)

    def to_dict(self) -> dict:
        return {"users": self.users, "items": self.items, "events": self.events,
                "skipped": dict(self.skipped), "errors": list(self.errors)}


def parse_price(value: Any) -> float | None:
    """2014 numbers as they are; 2018 strings like ``"$12.99"`` or ``"$5 - $9"`` (lower bound)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if isinstance(value, str):
        m = _PRICE.search(value)
        if m and len(value) < 40:
            return float(m.group(1).replace(",", ""))
    return None


def parse_meta_line(line: str) -> dict:
    """One meta record: JSON first, else a Python literal (2014). Raises ValueError."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        try:
            rec = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
            raise ValueError(f"neither JSON nor a Python literal ({type(exc).__name__})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"expected an object, got {type(rec).__name__}")
    return rec


def _category(rec: dict) -> str:
    cats = rec.get("categories")
    if isinstance(cats, list) and cats:
        first = cats[0]
        if isinstance(first, list):
            return " > ".join(str(c) for c in first if c)
        return " > ".join(str(c) for c in cats if isinstance(c, str) and c)
    cat = rec.get("category")
    if isinstance(cat, list):
        return " > ".join(str(c) for c in cat if isinstance(c, str) and c)
    return ""


def _description(rec: dict) -> str:
    d = rec.get("description")
    if isinstance(d, list):
        return " ".join(str(x) for x in d if isinstance(x, str))
    return d if isinstance(d, str) else ""


def _reviews(path: Path, min_rating: float | None, strict: bool, summary: AmazonImportSummary) -> Iterator[Event]:
    with _open(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                if not isinstance(rec, dict):
                    raise ValueError("expected a JSON object")
                user, asin = rec.get("reviewerID"), rec.get("asin")
                if not isinstance(user, str) or not user:
                    raise ValueError('field "reviewerID": missing')
                if not isinstance(asin, str) or not asin:
                    raise ValueError('field "asin": missing')
                ts = rec.get("unixReviewTime")
                if isinstance(ts, bool) or not isinstance(ts, int):
                    raise ValueError(f'field "unixReviewTime": expected epoch seconds, got {ts!r}')
                rating = rec.get("overall")
                if rating is not None and (isinstance(rating, bool) or not isinstance(rating, (int, float))):
                    raise ValueError(f'field "overall": expected a number, got {rating!r}')
            except ValueError as exc:
                msg = f"{path.name}:{line_no}: {exc}"
                if strict:
                    raise ValueError(msg) from None
                summary.note("bad_review", msg)
                continue
            if min_rating is not None and (rating is None or rating < min_rating):
                summary.skipped["below_min_rating"] += 1
                continue
            yield Event(user, asin, ts, "rate", None if rating is None else float(rating))


def import_amazon_reviews(reviews: Path, meta: Path, out_dir: Path, *, min_rating: float | None = None,
                          strict: bool = False) -> AmazonImportSummary:
    """Write ``items.jsonl.gz`` (items that have reviews), ``events.jsonl.gz`` and ``source.json``."""
    reviews, meta, out_dir = Path(reviews), Path(meta), Path(out_dir)
    for p in (reviews, meta):
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = AmazonImportSummary()
    asins: set[str] = set()
    users: set[str] = set()
    events_path = out_dir / "events.jsonl.gz"
    tmp_events = out_dir / ".events.tmp.jsonl.gz"

    def events() -> Iterator[Event]:
        for ev in _reviews(reviews, min_rating, strict, summary):
            asins.add(ev.item_id)
            users.add(ev.user_id)
            yield ev

    n_events = write_events(tmp_events, events())

    items: list[Item] = []
    with _open(meta) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = parse_meta_line(line)
                asin = rec.get("asin")
                if not isinstance(asin, str) or not asin:
                    raise ValueError('field "asin": missing')
            except ValueError as exc:
                msg = f"{meta.name}:{line_no}: {exc}"
                if strict:
                    raise ValueError(msg) from None
                summary.note("bad_meta", msg)
                continue
            if asin not in asins:
                continue
            desc = _description(rec)
            title = rec.get("title") if isinstance(rec.get("title"), str) else ""
            if not title.strip():
                title = title_from_description(desc) if desc.strip() else ""
            if not title:
                summary.note("item_without_title", f"{meta.name}:{line_no}: item {asin} has no title or description")
                continue
            brand = rec.get("brand") if isinstance(rec.get("brand"), str) else ""
            items.append(Item(asin, title.strip(), desc.strip(), _category(rec), brand.strip(),
                              parse_price(rec.get("price"))))
    summary.items = write_items(out_dir / "items.jsonl.gz", items)
    tmp_events.replace(events_path)
    summary.events = n_events
    summary.users = len(users)
    (out_dir / "source.json").write_text(json.dumps({
        "importer": "amazon-reviews", "reviews": str(reviews), "meta": str(meta),
        "event": "rate (value = star rating)", "min_rating": min_rating, **summary.to_dict(),
    }, indent=2) + "\n")
    return summary
