"""Live catalog changes on the server side: their event-log rows and their replay.

An upsert is logged as one row per item (``event`` "catalog.upsert", the validated item row as
JSON in ``payload``), a delete as "catalog.delete"; both share the events' sequence numbers, so a
replay (restart, bundle swap) applies events and catalog changes in the order they were
acknowledged (:func:`replay_entries`). ``tandem build --events-log`` reads the same rows
(:mod:`tandem.index_builder.event_log_reader`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict

from tandem.ranking.api import Engine
from tandem.ranking.live_catalog import DELETE, UPSERT, CatalogChange
from tandem.retrieval.data import Event, Item
from tandem.server.event_log import CatalogRow

__all__ = ["CatalogUnsupported", "apply_changes", "catalog_rows", "change_from_row", "commit", "replay_entries"]

_KIND = {UPSERT: "catalog.upsert", DELETE: "catalog.delete"}
_CHANGE = {v: k for k, v in _KIND.items()}


class CatalogUnsupported(RuntimeError):
    """The serving bundle cannot take live catalog changes (the message says why and what to do)."""


def catalog_rows(changes: Sequence[CatalogChange]) -> list[CatalogRow]:
    """The event-log rows of ``changes``, in order."""
    return [CatalogRow(_KIND[c.kind], c.item_id,
                       json.dumps(asdict(c.item), ensure_ascii=False) if c.item is not None else "{}")
            for c in changes]


def change_from_row(row: CatalogRow) -> CatalogChange:
    """The change a logged row stands for (the row was validated before it was logged)."""
    if row.kind == "catalog.delete":
        return CatalogChange.delete(row.item_id)
    d = json.loads(row.payload)
    d["tags"] = tuple(d.get("tags") or ())
    return CatalogChange.upsert(Item(**d))


def apply_changes(engine: Engine, changes: Sequence[CatalogChange]) -> tuple[Engine, dict[str, int]]:
    """``engine`` with ``changes`` applied (a new engine; the given one is unchanged)."""
    apply = getattr(engine, "apply_catalog", None)
    if apply is None:
        raise CatalogUnsupported(f"bundle {getattr(engine, 'version', '?')} cannot take live catalog changes "
                                 f"({type(engine).__name__} has no apply_catalog)")
    try:
        return apply(changes)
    except ValueError as exc:
        raise CatalogUnsupported(f"bundle {getattr(engine, 'version', '?')}: {exc}") from None


def commit(new: Engine, previous: Engine) -> Engine:
    """``new`` (made from ``previous`` by :func:`apply_changes`) takes over ``previous``'s live state
    (:meth:`Pipeline.adopt`); call it once ``new`` is the engine that serves."""
    adopt = getattr(new, "adopt", None)
    if adopt is not None and new is not previous:
        adopt(previous)
    return new


def replay_entries(engine: Engine, entries: Iterable[Event | CatalogRow], batch: int = 10_000) -> tuple[Engine, int]:
    """Apply logged events and catalog changes in their order; returns the engine that holds them
    all (a new one when the catalog changed) and how many events were applied."""
    applied, events, changes = 0, [], []
    for entry in entries:
        if isinstance(entry, CatalogRow):
            if events:
                applied += engine.record_events(events)
                events = []
            changes.append(change_from_row(entry))
            continue
        if changes:
            engine = commit(apply_changes(engine, changes)[0], engine)
            changes = []
        events.append(entry)
        if len(events) >= batch:
            applied += engine.record_events(events)
            events = []
    if events:
        applied += engine.record_events(events)
    if changes:
        engine = commit(apply_changes(engine, changes)[0], engine)
    return engine, applied
