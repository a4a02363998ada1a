"""The candidate sources Tandem knows, by name: class, config type, capabilities, and one way
to fit each.

Every caller that fits, loads or asks a source for something beyond candidates goes through
this table (the build, tune, the bundle loader, the pipeline), so adding a source is one entry
here plus its module. A source is fitted with ``SOURCES[name].fit(context, config)`` where
:class:`FitContext` carries everything any source may need; each entry's adapter takes what its
source uses. Configured names are checked with :func:`check_source_names`.

Sources that learn from behaviour (``needs_events``: popularity, item-CF, user-CF, two-tower)
cannot be fitted on a shop without events; :meth:`SourceEntry.cannot_fit` says why, and the
build skips them (a search-only bundle: lexical and text, docs/operations.md). Popularity is
skipped too rather than kept as a uniform list: with no events every item scores 0, and an
arbitrary order served as "popular" would mislead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from tandem.retrieval.ann import AnnConfig
from tandem.retrieval.base import (
    CandidateSource,
    CatalogScorer,
    HistoryMemo,
    ItemScorer,
    ItemSimilarity,
    ItemVectors,
    QueryEncoder,
    UserEncoder,
)
from tandem.retrieval.data import Catalog, Interactions
from tandem.retrieval.item_cf import ItemCF, ItemCFConfig, UserCF, UserCFConfig
from tandem.retrieval.lexical import Lexical, LexicalConfig
from tandem.retrieval.popularity import Popularity, PopularityConfig
from tandem.retrieval.text_tower import TextEncoder, TextEncoderConfig, TextSource, TextSourceConfig
from tandem.retrieval.two_tower import TwoTower, TwoTowerConfig

__all__ = ["FitContext", "SourceEntry", "SOURCES", "source_entry", "check_source_names", "first_with",
           "behavioural"]


@dataclass(frozen=True)
class FitContext:
    """Everything a source may learn from; each source takes what it uses.

    ``catalog`` and ``train`` (training interactions) always; ``valid`` validation targets
    (``index_builder.splits.Targets``) for early stopping, or None; ``text_vectors`` float32
    (n_items, d) the catalog's text vectors from ``encoder`` (encoded here when None);
    ``ann`` how approximate indexes are built; ``epochs`` source name -> the exact number of
    epochs to train, without early stopping (the refit on every event reruns the first fit's
    best epoch count); ``warm`` source name -> an earlier model of it to warm-start from (the
    two-tower takes a :class:`~tandem.retrieval.two_tower_warm.PreviousTwoTower`); ``progress``
    show training progress.
    """

    catalog: Catalog
    train: Interactions
    valid: Any = None
    text_vectors: np.ndarray | None = None
    encoder: TextEncoder | None = None
    ann: AnnConfig = field(default_factory=AnnConfig)
    epochs: Mapping[str, int] = field(default_factory=dict)
    warm: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = False


@dataclass(frozen=True)
class SourceEntry:
    """One candidate source: ``cls`` (with ``load(folder, catalog)``), ``config_type`` and the
    :class:`~index_builder.config.BuildConfig` section holding it (``config_field``), the
    adapter fitting it from a :class:`FitContext`, the capabilities its fitted instances have
    (protocols of :mod:`tandem.retrieval.base`), the build's stage name, whether every bundle
    has it (popularity: the cold-start fallback; still skipped without events), and whether it
    learns from events (``needs_events``: it cannot be fitted without them)."""

    name: str
    cls: type
    config_type: type
    config_field: str
    fit_with: Callable[[Any, FitContext], CandidateSource]
    capabilities: tuple[type, ...] = ()
    stage: str = ""
    always: bool = False
    needs_events: bool = False

    def cannot_fit(self, context: FitContext) -> str | None:
        """Why this source cannot be fitted from ``context`` (a sentence for the build log and
        the manifest's ``skipped_sources``), or None when it can."""
        if self.needs_events and len(context.train) == 0:
            return "it learns from events and the data has none (a search-only shop)"
        return None

    def fit(self, context: FitContext, config: Any = None) -> CandidateSource:
        """A fitted source (``config`` None: the config type's defaults)."""
        config = self.config_type() if config is None else config
        if not isinstance(config, self.config_type):
            raise TypeError(f"source {self.name!r} is configured with {self.config_type.__name__}, "
                            f"got {type(config).__name__}")
        return self.fit_with(config, context)

    def load(self, folder: Any, catalog: Catalog) -> CandidateSource:
        """Read back what the fitted source's ``save`` wrote."""
        return self.cls.load(folder, catalog)


def _fit_text(config: TextEncoderConfig, ctx: FitContext) -> TextSource:
    source = TextSource(TextSourceConfig(encoder=config), encoder=ctx.encoder)
    source.ann_config = ctx.ann
    return source.fit(ctx.catalog, ctx.train, vectors=ctx.text_vectors, progress=ctx.progress)


def _fit_two_tower(config: TwoTowerConfig, ctx: FitContext) -> TwoTower:
    valid = ctx.valid
    if "two_tower" in ctx.epochs:
        config = replace(config, epochs=max(1, int(ctx.epochs["two_tower"])))
        valid = None
    source = TwoTower(config)
    source.ann_config = ctx.ann
    source.warm_from = ctx.warm.get("two_tower")
    return source.fit(ctx.catalog, ctx.train, valid=valid, text_vectors=ctx.text_vectors, progress=ctx.progress)


#: Every source, in the order the build fits them.
SOURCES: dict[str, SourceEntry] = {e.name: e for e in (
    SourceEntry("popularity", Popularity, PopularityConfig, "popularity",
                lambda c, ctx: Popularity(c).fit(ctx.catalog, ctx.train), capabilities=(CatalogScorer, ItemScorer),
                always=True, needs_events=True),
    SourceEntry("item_cf", ItemCF, ItemCFConfig, "item_cf",
                lambda c, ctx: ItemCF(c).fit(ctx.catalog, ctx.train),
                capabilities=(ItemSimilarity, CatalogScorer, ItemScorer), needs_events=True),
    SourceEntry("user_cf", UserCF, UserCFConfig, "user_cf", lambda c, ctx: UserCF(c).fit(ctx.catalog, ctx.train),
                capabilities=(CatalogScorer, ItemScorer), needs_events=True),
    SourceEntry("lexical", Lexical, LexicalConfig, "lexical", lambda c, ctx: Lexical(c).fit(ctx.catalog, ctx.train),
                capabilities=(ItemScorer,)),
    SourceEntry("text", TextSource, TextEncoderConfig, "text", _fit_text,
                capabilities=(ItemVectors, QueryEncoder, HistoryMemo, ItemScorer), stage="text_index"),
    SourceEntry("two_tower", TwoTower, TwoTowerConfig, "two_tower", _fit_two_tower,
                capabilities=(ItemVectors, UserEncoder, CatalogScorer, ItemScorer), needs_events=True),
)}


def source_entry(name: str, where: str = "source") -> SourceEntry:
    """The entry of ``name``; a ValueError naming ``where`` and the known sources otherwise."""
    entry = SOURCES.get(name)
    if entry is None:
        raise ValueError(f"{where}: unknown candidate source {name!r}; known sources: {', '.join(SOURCES)}")
    return entry


def check_source_names(names: Iterable[str], where: str) -> None:
    """Raise a ValueError naming ``where`` when a name is not a registered source."""
    for name in names:
        source_entry(name, where)


def first_with(capability: type, sources: Mapping[str, CandidateSource]) -> CandidateSource | None:
    """The first of ``sources`` (in registry order) that has ``capability``, or None."""
    for name in SOURCES:
        source = sources.get(name)
        if source is not None and isinstance(source, capability):
            return source
    return None


def behavioural(names: Iterable[str]) -> tuple[str, ...]:
    """Those of ``names`` that learn from events (registry order); none of them: a search-only bundle."""
    wanted = set(names)
    return tuple(name for name, entry in SOURCES.items() if name in wanted and entry.needs_events)
