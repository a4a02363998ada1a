"""``tandem generate``: write the synthetic shop (items, events, graded queries, truth) to a folder."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "generate", help="write the synthetic shop data set (with known truth and injected dirt)",
        description="Generate a synthetic e-commerce data set: a catalog over a 3-level category tree, "
                    "users with tastes shopping in sessions, graded search queries, injected dirt, and "
                    "truth.json recording all of it. Same seed and arguments, same bytes.")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write (created if needed)")
    p.add_argument("--items", type=int, default=5000, help="catalog size (default: 5000)")
    p.add_argument("--users", type=int, default=3000, help="ordinary users, bots excluded (default: 3000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--events-per-user", type=float, default=30.0, metavar="F",
                   help="target mean events per ordinary user (default: 30)")
    p.add_argument("--days", type=int, default=90, help="length of the event window in days (default: 90)")
    p.add_argument("--queries", type=int, default=300, help="graded search queries (default: 300)")
    p.add_argument("--bots", type=int, default=None,
                   help="bot users to inject (default: users/1000, between 2 and 20)")
    p.add_argument("--no-dirt", dest="dirt", action="store_false",
                   help="write clean data: no duplicates, missing fields, outliers, bots or unknown items")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from tandem.index_builder.synthetic import SyntheticConfig, generate

    config = SyntheticConfig(items=args.items, users=args.users, seed=args.seed,
                             events_per_user=args.events_per_user, days=args.days, queries=args.queries,
                             dirt=args.dirt, bots=args.bots)
    s = generate(args.out, config)
    print(f"wrote {s.out_dir}: {s.items:,} items ({s.item_rows:,} rows), {s.users:,} users + {s.bots} bots, "
          f"{s.events:,} events, {s.queries:,} queries ({s.judgements:,} judgements) in {s.seconds:.1f} s")
    return 0
