"""``tandem export``: embeddings with their ids, catalog fields and metadata, for downstream tools."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export item, user or text embeddings with their ids",
                              description="Write embeddings of a bundle as .npy (+ .ids.txt, .meta.json, .catalog.jsonl) "
                                          "or Parquet (id, vector, catalog fields; bundle version, model, "
                                          "dimension and metric in the schema metadata). See index_builder/export.py.")
    p.add_argument("--bundle", type=Path, required=True, metavar="BUNDLES",
                   help="bundle root (CURRENT is used) or a bundle folder (required)")
    p.add_argument("--what", choices=("items", "users", "text"), required=True,
                   help="items: two-tower item vectors with the catalog fields; users: two-tower user vectors; "
                   "text: the text tower's item vectors with the catalog fields (required)")
    p.add_argument("--format", choices=("npy", "parquet"), default="npy",
                   help="npy: FILE.npy plus FILE.ids.txt, FILE.meta.json (and FILE.catalog.jsonl for items/text); parquet: one "
                   "table with id, vector, the catalog fields and the bundle's metadata (default npy)")
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="file to write (required)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from tandem.index_builder.export import export_embeddings
    from tandem.ranking.loader import load_engine

    paths = export_embeddings(load_engine(args.bundle), args.what, args.format, args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
