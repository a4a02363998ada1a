"""``tandem build``: clean, train, index, evaluate and write one versioned bundle."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build", help="clean data, train models, build indexes, evaluate, write a bundle",
        description="Cleaning -> text encoding -> two-tower, item-CF, BM25, popularity -> ranker -> "
                    "evaluation, written to BUNDLES/<version>/ and made current.")
    p.add_argument("--data", type=Path, required=True, metavar="DIR", help="folder with items.*, and events.* and queries.* if the shop has them "
                                                     "(no events: a search-only bundle)")
    p.add_argument("--out", type=Path, required=True, metavar="BUNDLES", help="bundle root folder")
    p.add_argument("--split", choices=("none", "leave-last-out", "temporal"),
                   help="evaluation split (default from config: none = train on everything)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML config; its [build] section is read (see docs/config.example.toml)")
    p.add_argument("--events-log", type=Path, metavar="FILE",
                   help="the server's SQLite event log: its events are added to the data, and the "
                        "manifest records the newest one's sequence number (the server replays the later ones)")
    p.add_argument("--from", dest="from_bundle", type=Path, metavar="BUNDLE_ROOT",
                   help="an incremental build from an earlier bundle (a bundle root with CURRENT, or a bundle "
                        "folder): text vectors reused by content hash, two-tower and ranker warm-started and "
                        "trained for fewer epochs ([build] from_bundle; [build.incremental]; docs/operations.md)")
    p.add_argument("--events-bus", metavar="redis://HOST:PORT/DB",
                   help="the Redis Stream of a fleet (tandem serve --event-bus): its events are added to the data, "
                        "and the manifest records the newest entry (the servers replay the later ones)")
    p.add_argument("--events-stream", default="tandem:events", metavar="NAME",
                   help="the stream's key with --events-bus (default tandem:events)")
    p.add_argument("--strict", action="store_true", help="fail on the first malformed row")
    p.add_argument("--engine", choices=("local", "spark"), default="local",
                   help="where reading, cleaning, the split, popularity and item-CF run: local (default, "
                        "in this process) or spark (Spark jobs; needs pyspark and Java 17, see docs/operations.md)")
    p.add_argument("--spark-master", default="local[2]", metavar="URL",
                   help="Spark master for --engine spark (default: local[2]; e.g. spark://host:7077, yarn)")
    p.add_argument("--spark-driver-memory", default="2g", metavar="SIZE",
                   help="driver memory of the Spark session started for --engine spark (default: 2g)")
    p.add_argument("--train-procs", type=int, metavar="N",
                   help="processes that train the two-tower together (DistributedDataParallel, gloo); "
                        "sets [build.two_tower] train_procs (default 1: the build process alone)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from tandem.index_builder.build import build, format_stage_table
    from tandem.index_builder.config import load_config
    from tandem.index_builder.evaluate import format_table

    config = load_config(args.config, overrides=_overrides(args))
    extra = mark = edits = None
    if args.events_log is not None:
        from tandem.index_builder.event_log_reader import event_log_mark, read_catalog_changes, read_event_log

        # the events up to the newest one now: the manifest records that sequence number, and the
        # server replays only the events logged after it (the server keeps logging meanwhile)
        mark = event_log_mark(args.events_log)
        extra = read_event_log(args.events_log, upto_seq=mark["seq"])
        edits = read_catalog_changes(args.events_log, upto_seq=mark["seq"])
    if args.events_bus is not None:
        if args.events_log is not None:
            print("tandem build: error: --events-log and --events-bus exclude each other (a fleet's log is its "
                  "stream)", file=sys.stderr)
            return 2
        from tandem.index_builder.event_log_reader import catalog_edits
        from tandem.index_builder.event_stream import read_stream, read_stream_catalog, stream_mark

        mark = stream_mark(args.events_bus, args.events_stream)  # the newest entry now, as for --events-log
        extra = read_stream(args.events_bus, args.events_stream, upto_seq=mark["seq"])
        edits = catalog_edits((event, item_id, payload, f"stream {args.events_stream}: a catalog change")
                              for event, item_id, payload in read_stream_catalog(args.events_bus, args.events_stream,
                                                                                  upto_seq=mark["seq"]))
    engine = None
    if args.engine == "spark":
        from tandem.index_builder.spark_session import spark_problem

        problem = spark_problem()
        if problem is not None:
            print(f"tandem build: error: {problem}", file=sys.stderr)
            return 2
        from tandem.index_builder.spark_engine import SparkEngine

        engine = SparkEngine(args.spark_master, driver_memory=args.spark_driver_memory)
    try:
        result = build(args.data, args.out, config, extra_events=extra, strict=args.strict, event_log=mark,
                       engine=engine, catalog_edits=edits)
    finally:
        if engine is not None:
            engine.stop()
    print(f"bundle {result.folder} (split {config.split})")
    inc = result.info.get("incremental") or {}
    if inc.get("from"):
        texts = inc.get("texts") or {}
        print(f"incremental from {inc['from']['version']}: {texts.get('reused', 0)} text vectors reused, "
              f"{texts.get('encoded', 0)} encoded; two-tower {_warm_word(inc.get('two_tower'))}, "
              f"ranker {_warm_word(inc.get('ranker'))}")
    print(f"sources: {', '.join(sorted(result.pipeline.sources))}")
    by_reason: dict[str, list[str]] = {}
    for name, reason in (result.info.get("skipped_sources") or {}).items():
        by_reason.setdefault(reason, []).append(name)
    for reason, names in by_reason.items():
        print(f"skipped {', '.join(names)}: {reason}")
    print(format_stage_table(result.timings, result.info.get("wall_s"), result.info.get("cpu_s_per_stage")))
    if result.metrics:
        print(format_table(result.metrics))
    if result.search_metrics:
        q = result.info["search"]
        print(f"search, evaluation half of the graded queries ({q['eval_queries']}; the search ranker trained "
              f"on the other {q['train_queries']}):")
        print(format_table(result.search_metrics))
    return 0


def _warm_word(record: dict | None) -> str:
    record = record or {}
    return "warm-started" if record.get("warm") else f"cold ({record.get('reason') or 'not trained'})"


def _overrides(args: argparse.Namespace) -> dict | None:
    """The ``[build]`` settings the flags set (they win over the file and the environment)."""
    overrides: dict = {}
    if args.split:
        overrides["split"] = args.split
    if args.train_procs is not None:
        overrides["two_tower"] = {"train_procs": args.train_procs}
    if args.from_bundle is not None:
        overrides["from_bundle"] = str(args.from_bundle)
    return overrides or None
