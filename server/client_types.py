"""The Python client's request and result types: frozen dataclasses mirroring ``tandem.v1``
messages, and their conversion to and from the generated protobuf classes.

Callers import these from :mod:`tandem.server.client`; this module only keeps the client module small.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from tandem.server._generated import tandem_pb2 as pb

__all__ = ["Filters", "Event", "SourceHit", "FeatureContribution", "Explanation", "ScoredItem", "Results",
           "Recorded", "Item", "Reloaded", "Status", "filters_to_pb", "event_to_pb", "results_from_pb",
           "recorded_from_pb", "item_from_pb", "reloaded_from_pb", "status_from_pb", "CatalogChanged", "item_to_pb",
           "changed_from_pb"]


def _f32(value: float) -> float:
    """A float32 wire value as the shortest decimal that reads back to the same float32
    (``0.95``, not ``0.949999988079071``), as protobuf's own JSON printer shows it."""
    if not math.isfinite(value):
        return value
    for digits in range(6, 10):
        short = float(f"{value:.{digits}g}")
        if pb.SourceHit(score=short).score == value:
            return short
    return value


@dataclass(frozen=True)
class Filters:
    """Business filters applied after ranking; the defaults filter nothing (``tandem.v1.Filters``)."""

    categories: tuple[str, ...] = ()       # category paths or prefixes ("Beauty > Skin")
    brands: tuple[str, ...] = ()           # exact brand names
    price_min: float | None = None         # inclusive; items without a price fail a price bound
    price_max: float | None = None         # inclusive
    in_stock_only: bool = False
    exclude_item_ids: tuple[str, ...] = ()
    max_per_brand: int = 0                 # diversity cap, 0 = none
    max_per_category: int = 0              # diversity cap, 0 = none


@dataclass(frozen=True)
class Event:
    """One interaction (``tandem.v1.Event``). ``ts`` 0 means the server's receive time.

    ``event_id``: an optional idempotency key (at most 256 characters, unique per event, e.g. a
    UUID made by the caller): an event whose id the server's log already holds is acknowledged
    (counted in :attr:`Recorded.duplicates`) but neither logged nor applied again, and a
    :meth:`~server.client.TandemClient.record` call whose every event has one is retried.

    Every field that is not None is copied onto the wire message by name, so a field the
    proto gains is one more line here."""

    user_id: str
    item_id: str
    event: str = "purchase"                # view, click, cart, purchase, rate
    ts: int = 0                            # epoch seconds
    value: float | None = None             # e.g. the rating of a "rate" event
    event_id: str | None = None            # idempotency key; None (or "") = none


@dataclass(frozen=True)
class SourceHit:
    source: str
    rank: int
    score: float


@dataclass(frozen=True)
class FeatureContribution:
    name: str
    value: float


@dataclass(frozen=True)
class Explanation:
    """Why an item was returned: the sources that found it, the fused score, the ranker's score
    and its strongest features (present when the request asked for ``explain``)."""

    sources: tuple[SourceHit, ...]
    fused_score: float
    ranker_score: float | None
    top_features: tuple[FeatureContribution, ...]


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    title: str
    explanation: Explanation | None = None


@dataclass(frozen=True)
class Results:
    """The answer of Search, Recommend and SimilarItems (``tandem.v1.ItemsResponse``)."""

    items: tuple[ScoredItem, ...]
    bundle_version: str
    request_id: str
    cold_start: bool                       # unknown user / no history: popularity and context answered
    unknown_candidates: int = 0            # Search with candidate_item_ids: ids the bundle did not know (skipped)
    experiment: str = ""                   # the server's A/B experiment ("" = none, or an anonymous request)
    experiment_arm: str = ""               # the arm that answered ("" = not in the experiment)

    @property
    def item_ids(self) -> list[str]:
        return [it.item_id for it in self.items]


@dataclass(frozen=True)
class Recorded:
    """The answer of RecordEvents and StreamEvents."""

    accepted: int                          # acknowledged: durably logged, now or before (duplicates included)
    applied: int                           # logged now and on items the current bundle knows
    last_sequence: int                     # event-log position after this batch
    duplicates: int                        # of accepted: their event_id was logged already, so not again


@dataclass(frozen=True)
class Item:
    """A catalog item (``tandem.v1.Item``)."""

    item_id: str
    title: str
    description: str
    category: str
    brand: str
    price: float | None
    tags: tuple[str, ...]
    in_stock: bool


@dataclass(frozen=True)
class Reloaded:
    """The answer of ReloadBundle: the version serving after the call, whether it changed, and
    why a bundle was refused ("" when none was)."""

    version: str
    swapped: bool
    error: str


@dataclass(frozen=True)
class Status:
    """The answer of GetStatus."""

    bundle_version: str
    items: int
    users: int
    uptime_seconds: float
    event_log_sequence: int
    last_reload_error: str
    bundle_built_at: int                   # epoch seconds


def filters_to_pb(f: Filters | None) -> pb.Filters | None:
    if f is None:
        return None
    out = pb.Filters(categories=list(f.categories), brands=list(f.brands), in_stock_only=f.in_stock_only,
                     exclude_item_ids=list(f.exclude_item_ids), max_per_brand=f.max_per_brand,
                     max_per_category=f.max_per_category)
    if f.price_min is not None:
        out.price_min = f.price_min
    if f.price_max is not None:
        out.price_max = f.price_max
    return out


def event_to_pb(e: Event) -> pb.Event:
    return pb.Event(**{f.name: v for f in fields(e) if (v := getattr(e, f.name)) is not None})


def _explanation(m: pb.Explanation) -> Explanation:
    return Explanation(sources=tuple(SourceHit(h.source, h.rank, _f32(h.score)) for h in m.sources),
                       fused_score=_f32(m.fused_score),
                       ranker_score=_f32(m.ranker_score) if m.HasField("ranker_score") else None,
                       top_features=tuple(FeatureContribution(c.name, _f32(c.value)) for c in m.top_features))


def results_from_pb(m: pb.ItemsResponse) -> Results:
    items = tuple(ScoredItem(it.item_id, _f32(it.score), it.title,
                             _explanation(it.explanation) if it.HasField("explanation") else None)
                  for it in m.items)
    return Results(items, m.bundle_version, m.request_id, m.cold_start, m.unknown_candidates, m.experiment,
                   m.experiment_arm)


def recorded_from_pb(m: pb.RecordEventsResponse) -> Recorded:
    return Recorded(m.accepted, m.applied, m.last_sequence, m.duplicates)


def item_from_pb(m: pb.Item) -> Item:
    return Item(m.item_id, m.title, m.description, m.category, m.brand,
                m.price if m.HasField("price") else None, tuple(m.tags), m.in_stock)


def reloaded_from_pb(m: pb.ReloadBundleResponse) -> Reloaded:
    return Reloaded(m.version, m.swapped, m.error)


def status_from_pb(m: pb.GetStatusResponse) -> Status:
    return Status(m.bundle_version, m.items, m.users, m.uptime_seconds, m.event_log_sequence, m.last_reload_error,
                  m.bundle_built_at)


@dataclass(frozen=True)
class CatalogChanged:
    """The answer of UpsertItems, StreamUpsertItems and DeleteItems."""

    upserted: int                          # rows applied (UpsertItems)
    added: int                             # of them, items the catalog did not have
    deleted: int                           # items removed (DeleteItems)
    unknown: int                           # deleted ids the catalog did not have
    last_sequence: int                     # event-log position after the change


_ITEM_FIELDS = ("item_id", "title", "description", "category", "brand", "price", "tags", "in_stock")


def item_to_pb(item: Item | dict) -> pb.Item:
    """A catalog row for UpsertItems: an :class:`Item` or a dict with its fields (a catalog JSONL
    row; ``in_stock`` defaults to true, ``tags`` may be a list or one "|"-separated string)."""
    if isinstance(item, dict):
        extra = sorted(set(item) - set(_ITEM_FIELDS))
        if extra:
            raise ValueError(f"unknown item field(s) {', '.join(extra)}; expected some of {', '.join(_ITEM_FIELDS)}")
        tags = item.get("tags") or ()
        if isinstance(tags, str):
            tags = [t for t in tags.split("|") if t.strip()]
        price = item.get("price")
        m = pb.Item(item_id=str(item.get("item_id", "")), title=str(item.get("title") or ""),
                    description=str(item.get("description") or ""),
                    category=" > ".join(item["category"]) if isinstance(item.get("category"), list)
                    else str(item.get("category") or ""),
                    brand=str(item.get("brand") or ""), tags=[str(t) for t in tags],
                    in_stock=bool(item.get("in_stock", True)))
        if price is not None and price != "":
            m.price = float(price)
        return m
    m = pb.Item(item_id=item.item_id, title=item.title, description=item.description, category=item.category,
                brand=item.brand, tags=list(item.tags), in_stock=item.in_stock)
    if item.price is not None:
        m.price = item.price
    return m


def changed_from_pb(m: pb.UpsertItemsResponse | pb.DeleteItemsResponse) -> CatalogChanged:
    if isinstance(m, pb.DeleteItemsResponse):
        return CatalogChanged(0, 0, m.deleted, m.unknown, m.last_sequence)
    return CatalogChanged(m.upserted, m.added, 0, 0, m.last_sequence)
