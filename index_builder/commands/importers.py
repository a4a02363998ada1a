"""``tandem import``: convert public data sets into Tandem's data contract."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("import", help="convert a public data set into Tandem's format",
                              description="Convert public recommendation data into items.jsonl.gz + events.jsonl.gz.")
    sub = p.add_subparsers(dest="format", metavar="FORMAT")
    sub.required = True
    s = sub.add_parser("seqrec", help="'user item item ...' sequence files (S3-Rec, P5) + an item TSV",
                       description="Only the order is real: positions get synthetic timestamps one day apart.")
    s.add_argument("sequences", type=Path, metavar="SEQUENCES")
    s.add_argument("items_tsv", type=Path, metavar="ITEMS_TSV",
                   help="TSV with item_id and a title column (title or title_prefix_text)")
    s.add_argument("--attributes", type=Path, metavar="ITEM2ATTRIBUTES.json[.gz]",
                   help="item -> attribute ids, written as tags attr:<id>")
    s.add_argument("--out", type=Path, required=True, metavar="DIR")
    s.set_defaults(handler=_run_seqrec)
    a = sub.add_parser("amazon-reviews", help="McAuley's Amazon review dumps (2014 or 2018 layout)")
    a.add_argument("--reviews", type=Path, required=True, metavar="FILE")
    a.add_argument("--meta", type=Path, required=True, metavar="FILE")
    a.add_argument("--out", type=Path, required=True, metavar="DIR")
    a.add_argument("--min-rating", type=float, metavar="R", help="keep reviews rated at least R")
    a.add_argument("--strict", action="store_true", help="fail on the first malformed line")
    a.set_defaults(handler=_run_amazon)


def _run_seqrec(args: argparse.Namespace) -> int:
    from index_builder.importers.seqrec import import_seqrec

    s = import_seqrec(args.sequences, args.items_tsv, args.out, args.attributes)
    print(f"{args.out}: {s.items} items, {s.users} users, {s.events} events "
          f"({s.items_without_title} items without title); timestamps are synthetic (order only)")
    return 0


def _run_amazon(args: argparse.Namespace) -> int:
    from index_builder.importers.amazon_reviews import import_amazon_reviews

    s = import_amazon_reviews(args.reviews, args.meta, args.out, min_rating=args.min_rating, strict=args.strict)
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(s.skipped.items())) or "none"
    print(f"{args.out}: {s.items} items, {s.users} users, {s.events} events; skipped: {skipped}")
    for e in s.errors[:5]:
        print(f"  {e}")
    return 0
