"""``tandem build --engine spark``: the data-heavy offline stages as Spark jobs.

:class:`SparkEngine` is what :func:`tandem.index_builder.build.build` calls instead of the local
code for reading and cleaning (:mod:`~tandem.index_builder.spark_clean`), the split, popularity
and item-CF (:mod:`~tandem.index_builder.spark_sources`). Each returns the very objects the
local engine builds (:class:`CleanResult`, :class:`Split`, :class:`Popularity`, :class:`ItemCF`),
so text encoding, two-tower, the ranker and the bundle are built on the driver as always.

The engine remembers which Spark DataFrame holds the events of each :class:`Interactions` it
handed out (all cleaned events, a split's training part, training+validation), so a source is
fitted in Spark on exactly the events the local engine would fit it on.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tandem.index_builder.cleaning_config import CleaningConfig
from tandem.index_builder.cleaning_report import CleanResult
from tandem.index_builder.spark_clean import spark_load_dataset
from tandem.index_builder.spark_session import DEFAULT_MASTER, start_spark
from tandem.index_builder.spark_sources import spark_item_cf, spark_popularity, spark_split
from tandem.index_builder.splits import Split
from tandem.retrieval.base import CandidateSource
from tandem.retrieval.data import Event, Interactions

__all__ = ["SparkEngine", "SPARK_SOURCES"]

#: Candidate sources the Spark engine fits; the others are fitted locally.
SPARK_SOURCES: tuple[str, ...] = ("popularity", "item_cf")


class SparkEngine:
    """The Spark side of a build. ``spark``: a running SparkSession (default: one started on
    ``master`` with ``driver_memory``, see :func:`~tandem.index_builder.spark_session.start_spark`)."""

    name = "spark"

    def __init__(self, master: str = DEFAULT_MASTER, *, spark: Any = None, driver_memory: str = "2g",
                 conf: dict[str, str] | None = None) -> None:
        self.spark = spark if spark is not None else start_spark(master, driver_memory=driver_memory, conf=conf)
        self.master = self.spark.sparkContext.master
        # (Interactions, its events DataFrame): kept by object, not id(), so ids are never reused
        self._frames: list[tuple[Interactions, Any]] = []

    def describe(self) -> dict[str, Any]:
        """What the bundle manifest records about the engine."""
        import pyspark

        return {"name": self.name, "master": self.master, "pyspark": pyspark.__version__,
                "stages": ["clean", "split", *SPARK_SOURCES]}

    def _frame(self, interactions: Interactions) -> Any:
        for known, frame in self._frames:
            if known is interactions:
                return frame
        raise ValueError("the spark engine fits sources only on the interactions it cleaned or split")

    def load_dataset(self, data_dir: str | Path, config: CleaningConfig | None = None, strict: bool = False,
                     extra_events: Iterable[Event] | None = None, now: float | None = None) -> CleanResult:
        """:func:`~tandem.index_builder.cleaning.load_dataset` on Spark."""
        for _, frame in self._frames:
            frame.unpersist()
        got = spark_load_dataset(self.spark, data_dir, config, strict=strict, extra_events=extra_events, now=now)
        self._frames = [(got.result.interactions, got.events)]
        return got.result

    def make_split(self, interactions: Interactions, protocol: str, **parameters: Any) -> Split:
        """:func:`~tandem.index_builder.splits.make_split` with the roles computed in Spark."""
        split, train, train_valid = spark_split(self._frame(interactions), interactions, protocol, **parameters)
        self._frames += [(split.train, train), (split.train_and_valid, train_valid)]
        return split

    def fits(self, name: str) -> bool:
        return name in SPARK_SOURCES

    def fit_source(self, name: str, config: Any, n_items: int, train: Interactions) -> CandidateSource:
        """Source ``name`` (one of :data:`SPARK_SOURCES`) fitted on ``train`` in Spark."""
        frame = self._frame(train)
        if name == "popularity":
            return spark_popularity(frame, n_items, config)
        if name == "item_cf":
            return spark_item_cf(frame, n_items, config)
        raise ValueError(f"the spark engine does not fit {name!r}; it fits {', '.join(SPARK_SOURCES)}")

    def stop(self) -> None:
        self.spark.stop()
