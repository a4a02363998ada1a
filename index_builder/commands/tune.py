"""``tandem tune``: hyper-parameter search on the validation split, written as a build config."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("tune", help="optuna search over two-tower and ranker settings (validation only)",
                              description="TPE search; the best settings are written as TOML for "
                                          "`tandem build --config`.")
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="data folder with items.* and events.* (required)")
    p.add_argument("--trials", type=int, default=20, metavar="N", help="settings to try (default 20)")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="stop starting trials after S seconds (default: no limit)")
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="base config the search starts from (default: the built-in defaults)")
    p.add_argument("--out", type=Path, default=Path("tandem.tuned.toml"), metavar="FILE",
                   help="TOML config to write; the trials go beside it as FILE.trials.json "
                   "(default tandem.tuned.toml)")
    p.add_argument("--seed", type=int, default=0, help="seed of the search and the trials (default 0)")
    p.add_argument("--max-users", type=int, metavar="N",
                   help="use at most N validation users, for faster trials (default: all)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import json

    from tandem.index_builder.config import load_config
    from tandem.index_builder.tune import to_toml, tune

    if args.trials < 1:
        raise ValueError(f"--trials must be >= 1, got {args.trials}")
    best, summary = tune(args.data, args.trials, args.timeout, load_config(args.config), seed=args.seed,
                         max_users=args.max_users)
    header = (f"written by `tandem tune --data {args.data} --trials {args.trials} --seed {args.seed}`\n"
              f"best validation NDCG@10 of the final list: {summary['best_value']:.4f}")
    args.out.write_text(to_toml(best, header))
    args.out.with_suffix(".trials.json").write_text(json.dumps(summary, indent=2))
    print(f"best validation NDCG@10 {summary['best_value']:.4f} with {summary['best_params']}")
    print(f"config written to {args.out} (trials in {args.out.with_suffix('.trials.json')})")
    return 0
