"""Read, validate and clean a data folder as Spark jobs: the ``--engine spark`` twin of
:func:`tandem.index_builder.cleaning.load_dataset`.

Same rules, same counts, same result (a :class:`CleanResult` whose :class:`Interactions` are in
file order with users in first-seen order), checked against the local engine by
tests/index_builder/test_spark_engine.py:

* rows are validated by the very functions the local readers use (``parse_event_row``,
  ``parse_item``), in Python workers, one partition at a time; the line number of a row is its
  position in the file, so errors name the same line;
* the event rules (future timestamps, unknown items, exact duplicates, bots, k-core) run as
  DataFrame jobs; only per-user totals (bot rule) and per-item ids come back to the driver, and
  the kept events come back once, as Arrow batches;
* the catalog rules (duplicate ids, titles, prices) run on the driver over the validated items,
  with the local code: they need the whole catalog in one place anyway (the catalog object is).

Files: JSONL and JSONL.gz are read by Spark (a ``.gz`` file is one partition: gzip does not
split; uncompressed JSONL splits across workers). CSV and Parquet files are read by the local
readers on the driver and handed to Spark (their events still go through the Spark rules).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tandem.index_builder.cleaning_config import CleaningConfig
from tandem.index_builder.cleaning_report import CleaningReport, CleanResult
from tandem.index_builder.event_cleaning import extra_rows, flag_bots
from tandem.index_builder.item_cleaning import build_catalog, resolve_items
from tandem.index_builder.readers import (
    ReadError,
    ReadStats,
    file_format,
    find_data_files,
    read_event_rows,
    read_items,
)
from tandem.index_builder.record_sources import _json_error
from tandem.index_builder.row_parsing import BadField, parse_event_row, parse_item
from tandem.retrieval.data import Event, Interactions

__all__ = ["SparkClean", "spark_load_dataset"]

_log = logging.getLogger("tandem.index_builder.cleaning")

# the columns of the events DataFrame
_EVENT_SCHEMA = "pos long, user string, item string, ts long, ev int, value float"


class SparkClean:
    """What :func:`spark_load_dataset` returns: the :class:`CleanResult` (on the driver) and the
    same kept events as a cached DataFrame ``events`` with columns ``pos`` (long, file order),
    ``u`` (int, index into ``result.interactions.user_ids``), ``i`` (int, catalog row), ``ts``
    (long), ``ev`` (int event code), ``value`` (float), for the later Spark stages."""

    def __init__(self, result: CleanResult, events: Any) -> None:
        self.result = result
        self.events = events


def _parse_lines(convert: Any):
    """A mapPartitions function: ``(raw line bytes, 0-based line index)`` -> ``(line, key, value)``
    where key is None and value the converted row, or key is the skip reason and value
    ``(field, message)``. Blank lines yield nothing (the local reader skips them uncounted)."""

    def parse(rows: Iterable[tuple[bytes, int]]) -> Iterator[tuple[int, str | None, Any]]:
        scan = json.JSONDecoder().scan_once
        for raw, index in rows:
            line = index + 1
            raw = raw + b"\n"  # Spark strips the line end; error columns are counted as the local reader does
            try:
                text = raw.decode()
                rec, end = scan(text, 0)
                if type(rec) is not dict or (end != len(text) and text[end:].strip()):
                    raise ValueError
            except (StopIteration, ValueError):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw)
                except ValueError:
                    rec = None
                if type(rec) is not dict:
                    yield line, "json", (None, _json_error(raw))
                    continue
            try:
                yield line, None, convert(rec)
            except BadField as bad:
                yield line, bad.field, (bad.field, bad.message)

    return parse


def _read_jsonl(spark: Any, path: Path, convert: Any, strict: bool, stats: ReadStats) -> Any:
    """The converted rows of a JSONL file as a cached RDD of ``(line, row)``; ``stats`` filled."""
    sc = spark.sparkContext
    lines = sc.textFile(str(path), use_unicode=False).zipWithIndex()
    parsed = lines.mapPartitions(_parse_lines(convert)).cache()
    counts = dict(parsed.map(lambda r: (r[1], 1)).reduceByKey(lambda a, b: a + b).collect())
    good = counts.pop(None, 0)
    total = good + sum(counts.values())
    bad = parsed.filter(lambda r: r[1] is not None)
    first = bad.takeOrdered(ReadStats.MAX_ERRORS, key=lambda r: r[0]) if counts else []
    name = path.name
    errors = [ReadError(name, line, field, message) for line, _, (field, message) in first]
    if strict and errors:
        raise errors[0]
    stats.file = stats.file or name
    stats.rows_read += total
    stats.rows_ok += total - sum(counts.values())
    for key in sorted(counts):
        stats.skipped[key] = stats.skipped.get(key, 0) + counts[key]
    stats.errors.extend(str(e) for e in errors[: ReadStats.MAX_ERRORS - len(stats.errors)])
    if stats.rows_skipped:
        fields = ", ".join(f"{k}: {v}" for k, v in sorted(stats.skipped.items()))
        _log.warning("%s: skipped %d of %d rows (%s); first: %s", name, stats.rows_skipped, stats.rows_read,
                     fields, stats.errors[0])
    return parsed.filter(lambda r: r[1] is None).map(lambda r: (r[0], r[2]))


def _event_frame(spark: Any, path: Path, strict: bool, stats: ReadStats) -> Any:
    if file_format(path) == "jsonl":
        rows = _read_jsonl(spark, path, parse_event_row, strict, stats)
        return spark.createDataFrame(rows.map(lambda r: (r[0], *r[1])), _EVENT_SCHEMA)
    # CSV / Parquet: the local reader on the driver, in slices, handed to Spark
    local = read_event_rows(path, strict=strict, stats=stats)
    return _frame_from_rows(spark, enumerate(local))


def _frame_from_rows(spark: Any, rows: Iterable[tuple[int, tuple]], offset: int = 0) -> Any:
    data = [(offset + n, *row) for n, row in rows]
    return spark.createDataFrame(data, _EVENT_SCHEMA)


def _items(spark: Any, path: Path, strict: bool, stats: ReadStats) -> Iterator[Any]:
    """Validated items of the file in file order (parsed by Spark for JSONL)."""
    if file_format(path) != "jsonl":
        return read_items(path, strict=strict, stats=stats)
    rows = _read_jsonl(spark, path, parse_item, strict, stats).collect()  # one job; the driver holds the catalog anyway
    rows.sort(key=lambda r: r[0])
    return (item for _, item in rows)


def _collect_frame(df: Any, columns: list[str], sort_by: str) -> dict[str, np.ndarray]:
    """``columns`` of ``df`` as numpy arrays on the driver, rows sorted by ``sort_by``; through
    Arrow batches (no Python object per row; works the same on a cluster)."""
    table = df.select(*columns).toArrow()
    order = np.argsort(table.column(sort_by).to_numpy(), kind="stable")
    return {c: table.column(c).to_numpy()[order] for c in columns}


def spark_load_dataset(spark: Any, data_dir: str | Path, config: CleaningConfig | None = None,
                       strict: bool = False, extra_events: Iterable[Event] | None = None,
                       now: float | None = None) -> SparkClean:
    """:func:`~tandem.index_builder.cleaning.load_dataset` on Spark (see the module docstring)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    config = CleaningConfig() if config is None else config
    files = find_data_files(data_dir)
    report = CleaningReport(data_dir=str(files.folder))

    stats = ReadStats()
    if files.events is None:  # a search-only shop, as the local engine reads it
        _log.info("data folder %s has no events file: a search-only shop (no behaviour to learn from)", files.folder)
        events = spark.createDataFrame([], _EVENT_SCHEMA)
    else:
        events = _event_frame(spark, files.events, strict, stats)
        report.read["events"] = stats.to_dict()
    if extra_events is not None:
        extra = ReadStats(file="extra_events")
        rows = list(extra_rows(extra_events, strict, extra))
        report.extra_events = len(rows)
        report.read["extra_events"] = extra.to_dict()
        if rows:
            # after every file row, in their own order (as the local engine appends them)
            events = events.unionByName(_frame_from_rows(spark, enumerate(rows), offset=1 << 40))
    events = events.persist(StorageLevel.MEMORY_AND_DISK)

    item_stats = ReadStats()
    items = resolve_items(_items(spark, files.items, strict, item_stats), item_stats, files.items.name,
                          config, report)
    report.read = {"items": report.read.pop("items"), **report.read}  # the local engine's key order
    referenced = {r[0] for r in events.select("item").distinct().collect()}
    catalog = build_catalog(items, referenced, config, report)  # type: ignore[arg-type]
    del items, referenced

    # users in first-seen order over every validated event (as the local vocabulary)
    first_seen = events.groupBy("user").agg(F.min("pos").alias("first"))
    report.events_read = stats.rows_ok + report.extra_events
    dropped = report.events_dropped

    limit = int(time.time() if now is None else now) + config.max_future_s
    index = spark.createDataFrame(list(zip(catalog.item_ids, range(len(catalog)), strict=True)),
                                  "item string, i int")
    ev = events.join(F.broadcast(index) if len(catalog) < 2_000_000 else index, "item", "left")
    future, unknown = F.col("ts") > limit, F.col("i").isNull()
    row = ev.agg(F.sum(future.cast("long")), F.sum((~future & unknown).cast("long"))).first()
    dropped["future_ts"], dropped["unknown_item"] = int(row[0] or 0), int(row[1] or 0)
    if dropped["future_ts"]:
        _log.warning("dropped %d events dated after %d (the clean's clock + max_future_s %d s)",
                     dropped["future_ts"], limit, config.max_future_s)
    if dropped["unknown_item"]:
        _log.warning("dropped %d events on item ids missing from the catalog", dropped["unknown_item"])
    ev = ev.filter(~future & ~unknown).select("pos", "user", "i", "ts", "ev", "value")
    n = report.events_read - dropped["future_ts"] - dropped["unknown_item"]

    if config.drop_duplicate_events:
        # equal in every field: keep the first in file order; NaN values group together (as the
        # local engine's single NaN bit pattern)
        ev = ev.groupBy("user", "i", "ts", "ev", "value").agg(F.min("pos").alias("pos"))
        ev = ev.persist(StorageLevel.MEMORY_AND_DISK)
        dropped["duplicate"] = n - ev.count()
        n -= dropped["duplicate"]

    if config.remove_bots:
        per_user = ev.groupBy("user").agg(F.count(F.lit(1)).alias("n"),
                                          F.countDistinct(F.floor(F.col("ts") / 3600)).alias("hours"))
        rows = per_user.collect()
        user_ids = [r[0] for r in rows]
        counts = np.array([r[1] for r in rows], dtype=np.int64)
        hours = np.array([r[2] for r in rows], dtype=np.int64)
        bots, report.bot_users = flag_bots(counts, hours, user_ids, config)
        if report.bot_users:
            bot_ids = spark.createDataFrame([(u,) for u, b in zip(user_ids, bots.tolist(), strict=True) if b],
                                            "user string")
            ev = ev.join(F.broadcast(bot_ids), "user", "left_anti")
            dropped["bot"] = int(counts[bots].sum())
            n -= dropped["bot"]
            _log.warning("removed %d bot-like users with %d events (e.g. %s)", len(report.bot_users),
                         dropped["bot"], report.bot_users[0]["user_id"])

    ev = _k_core(ev, n, config, report)
    dropped["k_core"] = report.k_core["events_removed"]

    kept_users = ev.select("user").distinct().join(first_seen, "user")
    users = sorted(kept_users.collect(), key=lambda r: r[1])
    user_ids = [r[0] for r in users]
    uindex = spark.createDataFrame([(u, n) for n, u in enumerate(user_ids)], "user string, u int")
    final = ev.join(uindex, "user").select("pos", "u", "i", "ts", "ev", "value")
    final = final.persist(StorageLevel.MEMORY_AND_DISK)
    cols = _collect_frame(final, ["pos", "u", "i", "ts", "ev", "value"], "pos")
    events.unpersist()
    interactions = Interactions(user_ids, cols["u"].astype(np.int32), cols["i"].astype(np.int32),
                                cols["ts"].astype(np.int64), cols["ev"].astype(np.int8),
                                cols["value"].astype(np.float32))
    report.events_kept = report.events = len(interactions)
    report.users = len(user_ids)
    report.items_with_events = int(np.count_nonzero(np.bincount(interactions.items, minlength=len(catalog))))
    return SparkClean(CleanResult(catalog, interactions, report), final)


def _k_core(ev: Any, n0: int, config: CleaningConfig, report: CleaningReport) -> Any:
    """Iterated (min_user_events, min_item_events) filtering of the ``n0`` events, one Spark
    round per pass."""
    from pyspark.sql import functions as F

    if config.min_user_events <= 1 and config.min_item_events <= 1:
        return ev
    u0 = ev.select("user").distinct().count()
    i0 = ev.select("i").distinct().count()
    rounds = 0
    while True:
        uc = ev.groupBy("user").agg(F.count(F.lit(1)).alias("uc"))
        ic = ev.groupBy("i").agg(F.count(F.lit(1)).alias("ic"))
        scored = ev.join(uc, "user").join(ic, "i")
        bad = (F.col("uc") < config.min_user_events) | (F.col("ic") < config.min_item_events)
        if scored.filter(bad).limit(1).count() == 0:
            break
        ev = scored.filter(~bad).drop("uc", "ic").localCheckpoint()
        rounds += 1
    n1 = ev.count()
    report.k_core = {
        "rounds": rounds,
        "users_removed": int(u0 - ev.select("user").distinct().count()),
        "items_removed": int(i0 - ev.select("i").distinct().count()),
        "events_removed": int(n0 - n1),
    }
    return ev
