"""``tandem report``: one self-contained HTML page (and its PNGs) about a bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="write an HTML report of a bundle: quality by stage, overlap, coverage, training, latency",
        description="Write DIR/report.html, one self-contained page (figures inlined as data URIs, also written "
                    "beside it as PNG files): Recall@K and NDCG@K per stage, source overlap, catalog coverage "
                    "and popularity bias of the final lists (on a sample of users), the cleaning report, "
                    "training curves and, with --latency, serving latency histograms.")
    p.add_argument("--bundle", type=Path, required=True, metavar="B",
                   help="bundle root (its CURRENT bundle is reported) or one bundle folder")
    p.add_argument("--eval", type=Path, metavar="EVAL.json", dest="eval_path",
                   help="the JSON of `tandem eval --bundle B --data D --json EVAL.json` (default: the metrics the "
                        "build recorded, when it was built with a split)")
    p.add_argument("--data", type=Path, metavar="D",
                   help="the data folder the bundle was built from: popularity bias is then measured against its "
                        "purchases (default: against the sampled users' history items)")
    p.add_argument("--latency", type=Path, metavar="BENCH.json", dest="latency_path",
                   help="the JSON of `benchmarks/serve_latency.py --json BENCH.json` (default: no latency section)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write report.html and PNGs to")
    p.add_argument("--users", type=_positive, default=500,
                   help="users sampled for overlap, coverage and popularity (default: 500)")
    p.add_argument("--k", type=_positive, default=10, help="length of the lists measured there (default: 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the user sample (default: 0)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from tandem.index_builder.report import write_report

    path = write_report(args.bundle, args.out, eval_path=args.eval_path, data=args.data,
                        latency_path=args.latency_path, users=args.users, k=args.k, seed=args.seed)
    print(f"report written to {path} (open it in a browser; the PNGs are beside it)")
    return 0
