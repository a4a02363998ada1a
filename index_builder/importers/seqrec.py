"""Import the 'user item item ...' files of sequential-recommendation papers (S3-Rec, P5, TIGER).

Input: a sequences file, one user per line, ``user_id item_id item_id ...`` in chronological
order (a user on several lines continues where the previous line stopped, so SASRec's one
``user item`` pair per line works too), plus a TSV with an ``item_id`` column and a title column
(``title``, else ``title_prefix_text``), and optionally S3-Rec's ``item2attributes`` JSON
``{item_id: [attribute_id, ...]}``, whose ids become tags ``attr:<id>``. Any of them may be gzip.

Such files carry only the ORDER of each user's items. Position ``p`` of every user's sequence
gets the synthetic timestamp 2014-01-01 + ``p`` days (exactly as
``shared/tools/seqrec_to_canonical.py`` does), so time-based splits and recency features on this
data measure positions, not time. A warning is logged and ``source.json``, written beside the
data, says so.

Items are written in TSV order, untitled ones included (their interactions are real; cleaning
keeps them); a repeated ``item_id`` keeps its first row. Events naming an item missing from the
TSV are dropped and counted; the positions of the remaining events do not move.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from tandem.index_builder.readers import SUFFIXES
from tandem.index_builder.writers import write_events, write_items
from tandem.retrieval.data import Event, Item

__all__ = ["SYNTHETIC_TS_BASE", "SYNTHETIC_TS_STEP", "TITLE_COLUMNS", "SeqrecSummary", "import_seqrec"]

_log = logging.getLogger(__name__)

#: Timestamp of position 0 of every sequence: 2014-01-01T00:00:00Z.
SYNTHETIC_TS_BASE = 1388534400
#: Seconds between consecutive positions: one day.
SYNTHETIC_TS_STEP = 86400
#: Title columns looked for in the item TSV, in order of preference.
TITLE_COLUMNS = ("title", "title_prefix_text")


@dataclass
class SeqrecSummary:
    """Counts of one import. ``users_split_over_lines``: users whose sequence spans several lines."""

    out_dir: Path
    items: int = 0
    users: int = 0
    events: int = 0
    items_without_title: int = 0
    duplicate_item_ids: int = 0
    events_unknown_item: int = 0
    users_split_over_lines: int = 0
    longest_sequence: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "out_dir"}

    def summary(self) -> str:
        return (f"wrote {self.out_dir}: {self.users:,} users, {self.items:,} items, {self.events:,} events "
                f"(purchase; longest sequence {self.longest_sequence:,})\n"
                f"items without title (kept): {self.items_without_title:,}; duplicate item ids skipped: "
                f"{self.duplicate_item_ids:,}; events on items missing from the TSV dropped: "
                f"{self.events_unknown_item:,}; users on several lines: {self.users_split_over_lines:,}\n"
                "timestamps are SYNTHETIC: only the order of each user's items is real (see source.json)")


def _open_text(path: Path) -> IO[str]:
    """UTF-8 text; gzip recognised by its magic bytes, whatever the name."""
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    if gz:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_attributes(path: Path) -> dict[str, list]:
    with _open_text(path) as f:
        try:
            attrs = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name}: not JSON ({exc.msg}, line {exc.lineno}); expected "
                             '{"item_id": [attribute_id, ...], ...}') from None
    if not isinstance(attrs, dict) or not all(isinstance(v, list) for v in attrs.values()):
        raise ValueError(f'{path.name}: expected a JSON object {{"item_id": [attribute_id, ...], ...}}')
    return attrs


def _read_items(path: Path, attrs: dict[str, list], s: SeqrecSummary, seen: set[str]) -> Iterator[Item]:
    with _open_text(path) as f:
        header = [c.strip() for c in f.readline().rstrip("\r\n").split("\t")]
        if "item_id" not in header:
            raise ValueError(f"{path.name}:1: the header has no item_id column (found: {', '.join(header)}); "
                             "expected a tab-separated header such as 'item_id<TAB>title'")
        title_col = next((header.index(c) for c in TITLE_COLUMNS if c in header), None)
        if title_col is None:
            raise ValueError(f"{path.name}:1: the header has no title column (found: {', '.join(header)}); "
                             f"name it one of: {', '.join(TITLE_COLUMNS)}")
        id_col = header.index("item_id")
        for n, line in enumerate(f, start=2):
            if not line.strip():
                continue
            cols = line.rstrip("\r\n").split("\t")
            item_id = cols[id_col].strip() if len(cols) > id_col else ""
            if not item_id:
                raise ValueError(f'{path.name}:{n}: field "item_id" is empty; every row needs one')
            if item_id in seen:
                s.duplicate_item_ids += 1
                continue
            seen.add(item_id)
            title = cols[title_col].strip() if len(cols) > title_col else ""
            s.items_without_title += not title
            yield Item(item_id, title, tags=tuple(f"attr:{a}" for a in attrs.get(item_id, ())))


def _read_events(path: Path, known: set[str], s: SeqrecSummary) -> Iterator[Event]:
    next_pos: dict[str, int] = {}
    split: set[str] = set()
    with_events: set[str] = set()
    with _open_text(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            user, seq = parts[0], parts[1:]
            start = next_pos.get(user)
            if start is None:
                start = 0
            else:
                split.add(user)
            next_pos[user] = start + len(seq)
            for pos, item in enumerate(seq, start):
                if item not in known:
                    s.events_unknown_item += 1
                    continue
                with_events.add(user)
                yield Event(user, item, SYNTHETIC_TS_BASE + pos * SYNTHETIC_TS_STEP, "purchase")
    s.users = len(with_events)
    s.longest_sequence = max(next_pos.values(), default=0)
    s.users_split_over_lines = len(split)


def import_seqrec(sequences: str | Path, items_tsv: str | Path, out_dir: str | Path,
                  attributes: str | Path | None = None) -> SeqrecSummary:
    """Write ``items.jsonl.gz``, ``events.jsonl.gz`` and ``source.json`` into ``out_dir``.

    Files are staged under temporary names and renamed into place only when all are written.
    Raises FileNotFoundError for a missing input and ValueError (naming file and line) for a
    TSV without the needed columns or an attributes file that is not ``{item_id: [ids]}``.
    """
    sequences, items_tsv, out_dir = Path(sequences), Path(items_tsv), Path(out_dir)
    attributes = Path(attributes) if attributes is not None else None
    for p in (sequences, items_tsv, attributes):
        if p is not None and not p.is_file():
            raise FileNotFoundError(f"{p} does not exist or is not a file")
    for stem in ("items", "events"):
        for suffix in SUFFIXES:
            if suffix != ".jsonl.gz" and (out_dir / (stem + suffix)).exists():
                raise ValueError(f"{out_dir} already holds {stem}{suffix}; the import writes {stem}.jsonl.gz and "
                                 "a data folder may hold only one format: choose an empty --out folder")
    attrs = _read_attributes(attributes) if attributes is not None else {}
    s = SeqrecSummary(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    staged = {name: out_dir / f".importing.{name}" for name in ("items.jsonl.gz", "events.jsonl.gz", "source.json")}
    try:
        known: set[str] = set()
        s.items = write_items(staged["items.jsonl.gz"], _read_items(items_tsv, attrs, s, known))
        s.events = write_events(staged["events.jsonl.gz"], _read_events(sequences, known, s))
        source = {
            "importer": "tandem import seqrec",
            "inputs": {name: {"path": str(p), "bytes": p.stat().st_size}
                       for name, p in (("sequences", sequences), ("items", items_tsv), ("attributes", attributes))
                       if p is not None},
            "synthetic_timestamps": True,
            "timestamps": (f"SYNTHETIC: the source has no time, only each user's order. Position p (0-based) of "
                           f"every user's sequence has ts = {SYNTHETIC_TS_BASE} + p * {SYNTHETIC_TS_STEP} "
                           "(2014-01-01 plus p days, the same dates for every user). Splits by time and "
                           "recency features measure positions, not time."),
            "event_rule": "one 'purchase' event per sequence position",
            "tags": "attr:<attribute id> from the attributes file" if attributes is not None else None,
            **s.to_dict(),
        }
        with open(staged["source.json"], "w", encoding="utf-8") as f:
            json.dump(source, f, indent=2, ensure_ascii=False)
            f.write("\n")
        for name, path in staged.items():
            os.replace(path, out_dir / name)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    _log.warning("%s has no timestamps: events got synthetic ts one day apart per position from 2014-01-01 "
                 "(recorded in %s); only the order within each user is real",
                 sequences.name, out_dir / "source.json")
    if s.events_unknown_item:
        _log.warning("%d events dropped: their item is not in %s", s.events_unknown_item, items_tsv.name)
    return s
