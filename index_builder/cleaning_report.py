"""What a cleaning run reports (:class:`CleaningReport`) and returns (:class:`CleanResult`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from tandem.retrieval.data import Catalog, Interactions

__all__ = ["CleaningReport", "CleanResult", "DROP_REASONS"]

#: Why cleaning drops an event (the keys of ``CleaningReport.events_dropped``).
DROP_REASONS = ("future_ts", "unknown_item", "duplicate", "bot", "k_core")


@dataclass
class CleaningReport:
    """Every count of one :func:`load_dataset` run; ``to_dict()`` is JSON-able.

    ``read`` holds the readers' :class:`ReadStats` per source (``items``, ``events``,
    ``extra_events``, ``queries``): rows read, skipped by field, the first error messages.
    ``events_read`` counts the events that passed the readers (file and extra).
    """

    data_dir: str = ""
    items_read: int = 0
    items_kept: int = 0
    items_dropped: dict[str, int] = field(default_factory=lambda: {"no_title": 0})
    duplicate_item_ids: int = 0
    duplicate_item_examples: list[str] = field(default_factory=list)
    titles_filled: int = 0
    untitled_items_kept: int = 0
    prices_imputed: int = 0
    prices_missing: int = 0
    price_outliers: int = 0
    events_read: int = 0
    extra_events: int = 0
    events_kept: int = 0
    events_dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    bot_users: list[dict[str, Any]] = field(default_factory=list)
    k_core: dict[str, int] = field(default_factory=lambda: {"rounds": 0, "users_removed": 0,
                                                             "items_removed": 0, "events_removed": 0})
    read: dict[str, dict[str, Any]] = field(default_factory=dict)
    queries: dict[str, int] | None = None
    users: int = 0
    items: int = 0
    items_with_events: int = 0
    events: int = 0

    @property
    def rows_skipped(self) -> int:
        """Rows the readers skipped, all sources together."""
        return sum(r["rows_skipped"] for r in self.read.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A short human-readable account, one topic per line."""
        def fmt(d: dict[str, int]) -> str:
            parts = [f"{k} {v:,}" for k, v in d.items() if v]
            return ", ".join(parts) if parts else "none"

        skipped = {name: r["rows_skipped"] for name, r in self.read.items()}
        lines = [
            f"data: {self.data_dir}",
            f"items: {self.items_read:,} read, {self.items_kept:,} kept; dropped: {fmt(self.items_dropped)}; "
            f"duplicate ids {self.duplicate_item_ids:,}",
            f"titles filled from description: {self.titles_filled:,}, left empty (item has events): "
            f"{self.untitled_items_kept:,}; prices imputed: {self.prices_imputed:,}, "
            f"still missing: {self.prices_missing:,}, outliers flagged: {self.price_outliers:,}",
            f"events: {self.events_read:,} read (extra {self.extra_events:,}), {self.events_kept:,} kept; "
            f"dropped: {fmt(self.events_dropped)}",
            f"bad rows skipped by the readers: {fmt(skipped)}",
            f"bot users removed: {len(self.bot_users):,}"
            + (" (" + ", ".join(b["user_id"] for b in self.bot_users[:5])
               + (", ..." if len(self.bot_users) > 5 else "") + ")" if self.bot_users else ""),
        ]
        if self.k_core["rounds"]:
            k = self.k_core
            lines.append(f"k-core: {k['rounds']} rounds removed {k['users_removed']:,} users, "
                         f"{k['items_removed']:,} items, {k['events_removed']:,} events")
        if self.queries is not None:
            lines.append(f"queries: {self.queries['read']:,} read, {self.queries['kept']:,} kept, "
                         f"{self.queries['unknown_item']:,} on unknown items")
        lines.append(f"result: {self.users:,} users, {self.items:,} items ({self.items_with_events:,} with events), "
                     f"{self.events:,} events")
        return "\n".join(lines)


@dataclass(frozen=True)
class CleanResult:
    """What :func:`load_dataset` returns."""

    catalog: Catalog
    interactions: Interactions
    report: CleaningReport
