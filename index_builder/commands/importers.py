"""``tandem import``: convert public data sets into a Tandem data folder (docs/data.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "import", help="convert a public data set into a Tandem data folder",
        description="Convert public recommendation data into items.jsonl.gz + events.jsonl.gz + source.json "
                    "(what was imported and how).")
    sub = p.add_subparsers(dest="source", metavar="SOURCE")
    sub.required = True

    s = sub.add_parser(
        "seqrec", help="'user item item ...' sequence files (S3-Rec, P5, TIGER) + an item TSV",
        description="Import a sequential-recommendation data set. The source has no time, only order: "
                    "position p of each sequence gets the SYNTHETIC timestamp 2014-01-01 + p days, and "
                    "source.json says so.")
    s.add_argument("sequences", type=Path, metavar="SEQUENCES",
                   help="one user per line: user_id item_id item_id ... (chronological; .gz allowed)")
    s.add_argument("items_tsv", type=Path, metavar="ITEMS_TSV",
                   help="tab-separated, with an item_id column and a title (or title_prefix_text) column")
    s.add_argument("--attributes", type=Path, metavar="ITEM2ATTRIBUTES.json[.gz]",
                   help="JSON {item_id: [attribute_id, ...]}; each id becomes a tag attr:<id>")
    s.add_argument("--out", type=Path, required=True, metavar="DIR", help="data folder to write (created if needed)")
    s.set_defaults(handler=_run_seqrec)

    a = sub.add_parser(
        "amazon-reviews", help="McAuley's Amazon review dumps (2014 or 2018 layout)",
        description="Import an Amazon reviews file and its meta file (2014 or 2018 layout, detected per "
                    "line; plain or gzip). Each review becomes a 'rate' event valued with its stars; items "
                    "are the reviewed products. Malformed lines are skipped and counted unless --strict.")
    a.add_argument("--reviews", type=Path, required=True, metavar="FILE", help="reviews_<Cat>[_5].json[.gz]")
    a.add_argument("--meta", type=Path, required=True, metavar="FILE", help="meta_<Cat>.json[.gz]")
    a.add_argument("--out", type=Path, required=True, metavar="DIR", help="data folder to write (created if needed)")
    a.add_argument("--min-rating", type=float, metavar="R",
                   help="keep only reviews with at least R stars (1..5; default: keep all)")
    a.add_argument("--strict", action="store_true", help="fail on the first malformed line instead of skipping it")
    a.set_defaults(handler=_run_amazon)


def _run_seqrec(args: argparse.Namespace) -> int:
    from tandem.index_builder.importers.seqrec import import_seqrec

    print(import_seqrec(args.sequences, args.items_tsv, args.out, args.attributes).summary())
    return 0


def _run_amazon(args: argparse.Namespace) -> int:
    from tandem.index_builder.importers.amazon_reviews import import_amazon_reviews

    s = import_amazon_reviews(args.reviews, args.meta, args.out, min_rating=args.min_rating, strict=args.strict)
    print(s.summary())
    return 0
