"""Import the 'user item item ...' files of sequential-recommendation papers (S3-Rec, P5, TIGER).

Such files carry only the ORDER of each user's items. Each position gets a synthetic
timestamp (one day apart from 2014-01-01, the same for every user); ``source.json`` beside the
output says so, and a warning is logged, because any time-based split or decay on this data
measures positions, not time.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from index_builder.writers import write_events, write_items
from retrieval.data import Event, Item

__all__ = ["SeqrecSummary", "import_seqrec", "SYNTHETIC_TS_BASE", "SYNTHETIC_TS_STEP"]

log = logging.getLogger(__name__)

SYNTHETIC_TS_BASE = 1388534400  # 2014-01-01T00:00:00Z
SYNTHETIC_TS_STEP = 86400
TITLE_COLUMNS = ("title", "title_prefix_text")


def _open(path: Path) -> IO[str]:
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


@dataclass
class SeqrecSummary:
    items: int
    users: int
    events: int
    items_without_title: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _read_items(path: Path, attrs: dict[str, list]) -> Iterator[Item]:
    with _open(path) as f:
        header = f.readline().rstrip("\n").split("\t")
        if "item_id" not in header:
            raise ValueError(f"{path.name}:1: header has no item_id column (got {header})")
        title_col = next((header.index(c) for c in TITLE_COLUMNS if c in header), None)
        if title_col is None:
            raise ValueError(f"{path.name}:1: header needs a title column, one of {', '.join(TITLE_COLUMNS)}")
        id_col = header.index("item_id")
        for line_no, line in enumerate(f, start=2):
            cols = line.rstrip("\n").split("\t")
            if len(cols) <= id_col or not cols[id_col]:
                raise ValueError(f"{path.name}:{line_no}: field \"item_id\": missing")
            item_id = cols[id_col]
            title = cols[title_col] if len(cols) > title_col else ""
            tags = tuple(f"attr:{a}" for a in attrs.get(item_id, ()))
            yield Item(item_id=item_id, title=title, tags=tags)


def _read_events(path: Path, counts: dict[str, int]) -> Iterator[Event]:
    with _open(path) as f:
        for line in f:
            parts = line.split()
            if not parts:
                continue
            user, seq = parts[0], parts[1:]
            counts["users"] += 1
            for pos, item in enumerate(seq):
                counts["events"] += 1
                yield Event(user, item, SYNTHETIC_TS_BASE + pos * SYNTHETIC_TS_STEP, "purchase")


def import_seqrec(sequences: Path, items_tsv: Path, out_dir: Path, attributes: Path | None = None) -> SeqrecSummary:
    """Write ``items.jsonl.gz``, ``events.jsonl.gz`` and ``source.json`` into ``out_dir``."""
    sequences, items_tsv = Path(sequences), Path(items_tsv)
    for p in (sequences, items_tsv) + ((Path(attributes),) if attributes else ()):
        if not p.is_file():
            raise FileNotFoundError(f"{p} does not exist")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    attrs: dict[str, list] = {}
    if attributes is not None:
        with _open(Path(attributes)) as f:
            attrs = json.load(f)
    untitled = 0

    def items() -> Iterator[Item]:
        nonlocal untitled
        for it in _read_items(items_tsv, attrs):
            untitled += not it.title
            yield it

    n_items = write_items(out_dir / "items.jsonl.gz", items())
    counts = {"users": 0, "events": 0}
    write_events(out_dir / "events.jsonl.gz", _read_events(sequences, counts))
    log.warning("%s has no timestamps: events got synthetic ts one day apart per position from "
                "2014-01-01; only the order within each user is real", sequences.name)
    (out_dir / "source.json").write_text(json.dumps({
        "importer": "seqrec",
        "sequences": str(sequences), "items": str(items_tsv),
        "attributes": None if attributes is None else str(attributes),
        "timestamps": "synthetic: position p of every user's sequence has ts = "
                      f"{SYNTHETIC_TS_BASE} + p * {SYNTHETIC_TS_STEP}; only the order is real",
        "event": "purchase",
    }, indent=2) + "\n")
    return SeqrecSummary(n_items, counts["users"], counts["events"], untitled)
