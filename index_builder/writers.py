"""Write catalog, event and query records as JSONL in the data contract's layout.

Streaming: records are written as they come. A path ending in ``.gz`` is gzip-compressed with a
fixed header time, so the same records always give the same bytes.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from tandem.retrieval.data import Event, Item, Query

__all__ = ["open_text_out", "item_record", "event_record", "query_record", "write_items", "write_events",
           "write_queries"]


def open_text_out(path: str | Path, compresslevel: int = 6) -> IO[str]:
    """Open ``path`` for writing UTF-8 text; gzip when it ends in ``.gz``. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        raw = gzip.GzipFile(filename="", mode="wb", fileobj=open(path, "wb"), mtime=0,
                            compresslevel=compresslevel)
        return _ClosingTextWrapper(raw)
    return open(path, "w", encoding="utf-8")


class _ClosingTextWrapper(io.TextIOWrapper):
    """A text wrapper that also closes the file object under the GzipFile."""

    def __init__(self, raw: gzip.GzipFile) -> None:
        super().__init__(raw, encoding="utf-8", newline="\n")
        self._under = raw.fileobj

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._under is not None:
                self._under.close()


def item_record(item: Item) -> dict:
    """The JSON object of one item; optional fields left out when empty or default."""
    rec: dict = {"item_id": item.item_id, "title": item.title}
    if item.description:
        rec["description"] = item.description
    if item.category:
        rec["category"] = item.category
    if item.brand:
        rec["brand"] = item.brand
    if item.price is not None:
        rec["price"] = item.price
    if item.tags:
        rec["tags"] = list(item.tags)
    if not item.in_stock:
        rec["in_stock"] = False
    return rec


def event_record(event: Event) -> dict:
    rec: dict = {"user_id": event.user_id, "item_id": event.item_id, "ts": event.ts, "event": event.event}
    if event.value is not None:
        rec["value"] = event.value
    return rec


def query_record(query: Query) -> dict:
    rec: dict = {"query_id": query.query_id, "query": query.query, "item_id": query.item_id,
                 "grade": query.grade}
    if query.user_id is not None:
        rec["user_id"] = query.user_id
    return rec


def _write(path: str | Path, records: Iterable[dict]) -> int:
    n = 0
    with open_text_out(path) as out:
        for rec in records:
            out.write(json.dumps(rec, ensure_ascii=False, separators=(", ", ": ")))
            out.write("\n")
            n += 1
    return n


def write_items(path: str | Path, items: Iterable[Item]) -> int:
    """Write items as JSONL; returns the number of rows written."""
    return _write(path, (item_record(i) for i in items))


def write_events(path: str | Path, events: Iterable[Event]) -> int:
    """Write events as JSONL; returns the number of rows written."""
    return _write(path, (event_record(e) for e in events))


def write_queries(path: str | Path, queries: Iterable[Query]) -> int:
    """Write graded queries as JSONL; returns the number of rows written."""
    return _write(path, (query_record(q) for q in queries))
