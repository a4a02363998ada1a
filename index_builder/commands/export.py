"""``tandem export``: embeddings with their ids, for downstream tools."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export item, user or text embeddings with their ids",
                              description="Write embeddings of a bundle as .npy (+ .ids.txt) or Parquet.")
    p.add_argument("--bundle", type=Path, required=True, help="bundle root (CURRENT is used) or a bundle folder")
    p.add_argument("--what", choices=("items", "users", "text"), required=True)
    p.add_argument("--format", choices=("npy", "parquet"), default="npy")
    p.add_argument("--out", type=Path, required=True, metavar="FILE")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from index_builder.export import export_embeddings
    from ranking.loader import load_engine

    paths = export_embeddings(load_engine(args.bundle), args.what, args.format, args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
