"""Plain request/response types of the assembled pipeline.

The gRPC servicer converts wire messages into these at the edge; the pipeline, the evaluator
and the tests use them directly. Nothing here imports grpc or generated code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from tandem.retrieval.data import Event, Item

__all__ = [
    "Filters",
    "RecommendRequest",
    "SearchRequest",
    "SimilarRequest",
    "SourceHit",
    "Explanation",
    "ScoredItem",
    "Response",
    "UnknownItemError",
    "CannotAnswerError",
    "Engine",
]


class UnknownItemError(KeyError):
    """An item id the current bundle does not know (the servicer answers NOT_FOUND)."""


class CannotAnswerError(RuntimeError):
    """The current bundle has nothing to answer this request from, e.g. a Recommend for a user
    without history on a search-only bundle (built without events). The message says what
    would help; the servicer answers FAILED_PRECONDITION with it."""


@dataclass(frozen=True)
class Filters:
    """Business filters applied after ranking.

    ``categories``: keep items whose category path equals or starts with one of these
    (``"Beauty > Skin"`` matches ``"Beauty > Skin > Face"``). ``brands``: exact brand names.
    ``price_min``/``price_max``: inclusive bounds; items without a price fail a price bound.
    ``max_per_brand``/``max_per_category``: diversity caps (0 = no cap).
    """

    categories: tuple[str, ...] = ()
    brands: tuple[str, ...] = ()
    price_min: float | None = None
    price_max: float | None = None
    in_stock_only: bool = False
    exclude_item_ids: tuple[str, ...] = ()
    max_per_brand: int = 0
    max_per_category: int = 0


@dataclass(frozen=True)
class RecommendRequest:
    """``context``: extra recent events of this session (e.g. items on the current page),
    used on top of the stored history. ``exclude_seen``: drop items the user already bought
    or interacted with."""

    user_id: str | None
    k: int = 10
    context: tuple[Event, ...] = ()
    filters: Filters = field(default_factory=Filters)
    explain: bool = False
    exclude_seen: bool = True


@dataclass(frozen=True)
class SearchRequest:
    """``candidate_item_ids``: when not empty, re-rank these items (the caller's own candidates)
    instead of retrieving: only they can be returned, at most ``k`` of them, in Tandem's order;
    ids the bundle does not know are skipped and counted in :attr:`Response.unknown_candidates`.
    Filters and the user's history still apply; a repeated id counts once."""

    query: str
    user_id: str | None = None
    k: int = 10
    filters: Filters = field(default_factory=Filters)
    explain: bool = False
    candidate_item_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class SimilarRequest:
    item_id: str
    k: int = 10
    filters: Filters = field(default_factory=Filters)
    explain: bool = False


@dataclass(frozen=True)
class SourceHit:
    """One source that found a candidate: its name, the 1-based rank and its raw score."""

    source: str
    rank: int
    score: float


@dataclass(frozen=True)
class Explanation:
    sources: tuple[SourceHit, ...]
    fused_score: float
    ranker_score: float | None
    #: (feature name, contribution) pairs that pushed the item up, largest first.
    top_features: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    title: str = ""
    explanation: Explanation | None = None


@dataclass(frozen=True)
class Response:
    items: tuple[ScoredItem, ...]
    bundle_version: str
    #: True when the user was unknown (or had no usable history) and popularity/context answered.
    cold_start: bool = False
    #: Search with ``candidate_item_ids``: how many of them the bundle did not know (skipped).
    unknown_candidates: int = 0


@runtime_checkable
class Engine(Protocol):
    """What the server needs from a loaded bundle (implemented by ranking.pipeline.Pipeline)."""

    version: str
    #: epoch seconds of the newest event the bundle was built from; the server replays its
    #: event log from here on when it loads the bundle.
    built_at: int

    @property
    def n_items(self) -> int: ...

    @property
    def n_users(self) -> int: ...

    def recommend(self, request: RecommendRequest) -> Response:
        """Raises CannotAnswerError when the bundle has nothing to recommend from (a search-only
        bundle and a user without history)."""
        ...

    def search(self, request: SearchRequest) -> Response: ...

    def similar_items(self, request: SimilarRequest) -> Response:
        """Raises UnknownItemError for an item id the bundle does not know."""
        ...

    def get_item(self, item_id: str) -> Item:
        """Raises UnknownItemError for an item id the bundle does not know."""
        ...

    def record_events(self, events: Sequence[Event]) -> int:
        """Apply events to the in-memory user histories (events on unknown items are ignored);
        returns how many were applied. Must be thread-safe."""
        ...

    # Optional: ``warm(users: int) -> int``. When an engine has it, the server calls it once
    # after loading (and replaying the event log), before the engine serves: keep per-user
    # state for up to ``users`` users and precompute it for the most recently active ones.
