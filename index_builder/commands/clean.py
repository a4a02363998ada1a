"""``tandem clean``: read, validate and clean a data folder, print what was done.

Nothing is written but the optional JSON report; the builder runs the same cleaning itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return n


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "clean", help="validate and clean a data folder, print the cleaning report",
        description="Read items/events (and queries when present) of a data folder with the contract's "
                    "validation (docs/data.md), apply the cleaning rules and print a summary.")
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="data folder with items.* and events.* (jsonl, jsonl.gz, csv, csv.gz or parquet)")
    p.add_argument("--strict", action="store_true",
                   help="stop at the first bad row (exit status 2) instead of skipping and counting it")
    p.add_argument("--report", type=Path, metavar="FILE.json", help="also write the full report as JSON")
    p.add_argument("--min-user-events", type=_count, default=0, metavar="N",
                   help="k-core: keep users with at least N events (default 0: off)")
    p.add_argument("--min-item-events", type=_count, default=0, metavar="N",
                   help="k-core: keep items with at least N events (default 0: off)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import json

    from tandem.index_builder.cleaning import CleaningConfig, load_dataset, load_queries

    config = CleaningConfig(min_user_events=args.min_user_events, min_item_events=args.min_item_events)
    result = load_dataset(args.data, config, strict=args.strict)
    load_queries(args.data, result.catalog, strict=args.strict, report=result.report)
    print(result.report.summary())
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.report.with_name(args.report.name + ".tmp")
        tmp.write_text(json.dumps(result.report.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(args.report)
        print(f"report written to {args.report}")
    return 0
