"""Wire messages <-> the pipeline's plain dataclasses, with request validation.

Every check raises :class:`InvalidArgument` whose message names the field, e.g.
``k must be between 1 and 1000``; the servicer turns it into ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import math
import time
from collections import Counter

from tandem.ranking.api import Filters, RecommendRequest, Response, SearchRequest, SimilarRequest
from tandem.retrieval.data import EVENT_TYPES, Event, Item
from tandem.server._generated import tandem_pb2 as pb

__all__ = ["InvalidArgument", "LIMITS", "REFUSAL_REASONS", "filters_from_pb", "search_from_pb", "recommend_from_pb",
           "similar_from_pb", "candidates_from_pb", "event_from_pb", "events_from_pb", "response_to_pb", "item_to_pb", "check_id",
           "item_from_pb", "items_from_pb", "item_ids_from_pb"]

LIMITS = {"k_max": 1000, "query_max": 1000, "id_max": 256, "events_max": 10_000, "filter_values_max": 1000,
          "future_skew_s": 86_400, "stream_events_max": 100_000, "candidates_max": 1000}

#: Why an event is refused (the ``reason`` label of ``tandem_events_refused_total``).
REFUSAL_REASONS: tuple[str, ...] = ("user_id", "item_id", "event_id", "event", "ts_negative", "ts_future",
                                    "value_not_finite", "malformed")


class InvalidArgument(ValueError):
    """A request field out of its documented range; the message names the field.

    ``refused`` counts refused events by reason (see :data:`REFUSAL_REASONS`) when events were checked."""

    def __init__(self, message: str, reason: str | None = None, refused: Counter | None = None) -> None:
        super().__init__(message)
        self.refused: Counter = refused if refused is not None else Counter({reason: 1} if reason else {})


def check_id(value: str, field: str, required: bool = True, reason: str | None = None) -> str:
    if not value:
        if required:
            raise InvalidArgument(f"{field} must not be empty", reason)
        return value
    if len(value) > LIMITS["id_max"]:
        raise InvalidArgument(f"{field} must be at most {LIMITS['id_max']} characters, got {len(value)}", reason)
    return value


def _check_k(k: int) -> int:
    if not 1 <= k <= LIMITS["k_max"]:
        raise InvalidArgument(f"k must be between 1 and {LIMITS['k_max']}, got {k}")
    return k


def filters_from_pb(f: pb.Filters) -> Filters:
    for name in ("categories", "brands", "exclude_item_ids"):
        values = getattr(f, name)
        if len(values) > LIMITS["filter_values_max"]:
            raise InvalidArgument(f"filters.{name} must have at most {LIMITS['filter_values_max']} values")
        for v in values:
            check_id(v, f"filters.{name}")
    lo = f.price_min if f.HasField("price_min") else None
    hi = f.price_max if f.HasField("price_max") else None
    for name, bound in (("price_min", lo), ("price_max", hi)):
        if bound is not None and not math.isfinite(bound):
            raise InvalidArgument(f"filters.{name} must be a finite number, got {bound}")
    if lo is not None and hi is not None and lo > hi:
        raise InvalidArgument(f"filters.price_min ({lo}) must not exceed filters.price_max ({hi})")
    return Filters(tuple(f.categories), tuple(f.brands), lo, hi, f.in_stock_only, tuple(f.exclude_item_ids),
                   int(f.max_per_brand), int(f.max_per_category))


def search_from_pb(r: pb.SearchRequest) -> SearchRequest:
    q = r.query.strip()
    if not 1 <= len(q) <= LIMITS["query_max"]:
        raise InvalidArgument(f"query must be between 1 and {LIMITS['query_max']} characters, got {len(q)}")
    check_id(r.request_id, "request_id", required=False)
    return SearchRequest(q, check_id(r.user_id, "user_id", required=False) or None, _check_k(r.k),
                         filters_from_pb(r.filters), r.explain, candidates_from_pb(r.candidate_item_ids))


def candidates_from_pb(ids, field: str = "candidate_item_ids") -> tuple[str, ...]:
    """A Search's own candidates: at most ``LIMITS["candidates_max"]`` ids, each non-empty, at
    most ``LIMITS["id_max"]`` characters and given once (the error names the element)."""
    if len(ids) > LIMITS["candidates_max"]:
        raise InvalidArgument(f"{field} must have at most {LIMITS['candidates_max']} ids, got {len(ids)}")
    first: dict[str, int] = {}
    for i, item_id in enumerate(ids):
        check_id(item_id, f"{field}[{i}]")
        j = first.setdefault(item_id, i)
        if j != i:
            raise InvalidArgument(f"{field}[{i}] must not repeat {field}[{j}] ({item_id[:40]!r})")
    return tuple(ids)


def event_from_pb(e: pb.Event, field: str, now: int) -> Event:
    """One wire event; ``ts`` 0 becomes ``now`` (the receive time), ``event`` "" becomes purchase.

    Refused (naming the field, with a reason): an empty or over-long id, an unknown event type,
    ``ts`` before 1970 or more than ``LIMITS["future_skew_s"]`` past ``now``, a ``value`` that is
    NaN or infinite."""
    check_id(e.user_id, f"{field}.user_id", reason="user_id")
    check_id(e.item_id, f"{field}.item_id", reason="item_id")
    check_id(e.event_id, f"{field}.event_id", required=False, reason="event_id")
    kind = e.event or "purchase"
    if kind not in EVENT_TYPES:
        raise InvalidArgument(f"{field}.event must be one of {', '.join(EVENT_TYPES)}, got {kind[:40]!r}", "event")
    if e.ts < 0:
        raise InvalidArgument(f"{field}.ts must be epoch seconds >= 0, got {e.ts}", "ts_negative")
    if e.ts > now + LIMITS["future_skew_s"]:
        raise InvalidArgument(f"{field}.ts {e.ts} is more than {LIMITS['future_skew_s']} s past the server's clock "
                              f"({now}); send epoch seconds (not milliseconds), or 0 for the receive time",
                              "ts_future")
    value = e.value if e.HasField("value") else None
    if value is not None and not math.isfinite(value):
        raise InvalidArgument(f"{field}.value must be a finite number, got {value}", "value_not_finite")
    return Event(e.user_id, e.item_id, int(e.ts) or now, kind, value)


def events_from_pb(events, field: str = "events", now: int | None = None) -> list[Event]:
    """Every event checked; one bad event refuses them all, the error names the first and
    :attr:`InvalidArgument.refused` counts every refused one by reason."""
    events = list(events)
    if len(events) > LIMITS["events_max"]:
        raise InvalidArgument(f"{field} must have at most {LIMITS['events_max']} events per batch, got {len(events)}")
    now = int(time.time()) if now is None else now
    out, first, refused = [], None, Counter()
    for i, e in enumerate(events):
        try:
            out.append(event_from_pb(e, f"{field}[{i}]", now))
        except InvalidArgument as exc:
            refused.update(exc.refused)
            first = first or exc
    if first is not None:
        more = sum(refused.values()) - 1
        raise InvalidArgument(f"{first}" + (f" (and {more} more refused events)" if more else ""), refused=refused)
    return out


def recommend_from_pb(r: pb.RecommendRequest) -> RecommendRequest:
    check_id(r.request_id, "request_id", required=False)
    user = check_id(r.user_id, "user_id", required=False) or None
    if len(r.context) > 1000:
        raise InvalidArgument(f"context must have at most 1000 events, got {len(r.context)}")
    return RecommendRequest(user, _check_k(r.k), tuple(events_from_pb(r.context, "context")),
                            filters_from_pb(r.filters), r.explain, not r.include_seen)


def similar_from_pb(r: pb.SimilarItemsRequest) -> SimilarRequest:
    check_id(r.request_id, "request_id", required=False)
    return SimilarRequest(check_id(r.item_id, "item_id"), _check_k(r.k), filters_from_pb(r.filters), r.explain)


def response_to_pb(resp: Response, request_id: str) -> pb.ItemsResponse:
    out = pb.ItemsResponse(bundle_version=resp.bundle_version, request_id=request_id, cold_start=resp.cold_start,
                           unknown_candidates=resp.unknown_candidates)
    for it in resp.items:
        m = out.items.add(item_id=it.item_id, score=it.score, title=it.title)
        e = it.explanation
        if e is not None:
            m.explanation.fused_score = e.fused_score
            if e.ranker_score is not None:
                m.explanation.ranker_score = e.ranker_score
            for h in e.sources:
                m.explanation.sources.add(source=h.source, rank=h.rank, score=h.score)
            for name, value in e.top_features:
                m.explanation.top_features.add(name=name, value=value)
    return out


def item_to_pb(item: Item) -> pb.Item:
    m = pb.Item(item_id=item.item_id, title=item.title, description=item.description, category=item.category,
                brand=item.brand, tags=list(item.tags), in_stock=item.in_stock)
    if item.price is not None:
        m.price = item.price
    return m


#: at most this many rows in one UpsertItems / DeleteItems (a stream: ``stream_events_max``)
LIMITS["items_max"] = 10_000


def item_from_pb(m: pb.Item, field: str) -> Item:
    """One wire catalog row checked like a catalog file row (docs/data.md): the error names
    ``field.<name>`` (e.g. ``items[3].price``)."""
    from tandem.index_builder.row_parsing import BadField, parse_item

    check_id(m.item_id, f"{field}.item_id")
    rec = {"item_id": m.item_id, "title": m.title, "description": m.description, "category": m.category,
           "brand": m.brand, "price": m.price if m.HasField("price") else None, "tags": list(m.tags),
           "in_stock": m.in_stock}
    try:
        item = parse_item(rec)
    except BadField as exc:
        raise InvalidArgument(f"{field}.{exc.field} is invalid: {exc.message}") from None
    if not (item.title or item.description):
        raise InvalidArgument(f"{field}.title must not be empty when the description is: an item needs one of them "
                              "to be found by")
    for tag_at, tag in enumerate(item.tags):
        check_id(tag, f"{field}.tags[{tag_at}]")
    return item


def items_from_pb(items, field: str = "items", limit: int | None = None) -> list[Item]:
    """Every row checked; the first bad one refuses them all (the message names it)."""
    items = list(items)
    limit = LIMITS["items_max"] if limit is None else limit
    if len(items) > limit:
        raise InvalidArgument(f"{field} must have at most {limit} rows per call, got {len(items)}; split them")
    return [item_from_pb(m, f"{field}[{i}]") for i, m in enumerate(items)]


def item_ids_from_pb(ids, field: str = "item_ids") -> list[str]:
    ids = list(ids)
    if len(ids) > LIMITS["items_max"]:
        raise InvalidArgument(f"{field} must have at most {LIMITS['items_max']} ids per call, got {len(ids)}")
    return [check_id(v, f"{field}[{i}]") for i, v in enumerate(ids)]
