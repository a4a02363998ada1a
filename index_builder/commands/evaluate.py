"""``tandem eval``: offline metrics of the engine's stages on a split of a data set.

For now it evaluates the popularity baseline on the data alone (``--data``); later stages and
``--bundle`` add columns under ``metrics`` in the same report.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "parse_ks"]


def parse_ks(text: str) -> tuple[int, ...]:
    """``"10,50,200"`` -> ``(10, 50, 200)``; argparse type of ``--k``."""
    try:
        ks = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k expects comma-separated positive integers such as 10,50,200; "
                                         f"got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError(f"--k expects comma-separated positive integers such as 10,50,200; "
                                         f"got {text!r}")
    return ks


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="offline recall/NDCG/MRR/HR of the engine's stages on a split",
        description="Split a data set, fit and evaluate each stage (now: popularity), print a table "
                    "and optionally write a JSON report.")
    p.add_argument("--data", type=Path, required=True, metavar="DIR",
                   help="data folder with items.jsonl[.gz] and events.jsonl[.gz]")
    p.add_argument("--bundle", type=Path, metavar="BUNDLES",
                   help="evaluate a built bundle (its sources, the fused list and the final ranked list) on the "
                        "split recorded in its manifest; without it, the popularity baseline is fitted on the data")
    p.add_argument("--dump", type=Path, metavar="FILE",
                   help="with --bundle: write the final top-K of every test user as JSONL "
                        '{"user_id": ..., "items": [...]}')
    p.add_argument("--search-dump", type=Path, metavar="FILE",
                   help="with --bundle: write the served top 100 of every evaluation-half graded query as JSONL "
                        '{"query": ..., "items": [...]} (the run format of searcheval.py score)')
    p.add_argument("--json", type=Path, metavar="OUT", help="write the report here as JSON")
    p.add_argument("--split", choices=("leave-last-out", "temporal"), default="leave-last-out",
                   help="split protocol (default: leave-last-out)")
    p.add_argument("--targets", choices=("test", "valid"), default="test",
                   help="which split stage to measure (default: test)")
    p.add_argument("--fit-on", choices=("train", "train+valid"), default="train",
                   help="what the stages are fitted on (default: train)")
    p.add_argument("--k", type=parse_ks, default=(10, 50, 200), metavar="K[,K...]",
                   help="list lengths to measure (default: 10,50,200)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="temporal split: share of events after the test cut (default: 0.1)")
    p.add_argument("--valid-fraction", type=float, default=0.1,
                   help="temporal split: share of events between the two cuts (default: 0.1)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    import json

    if args.bundle is not None:
        return _run_bundle(args)
    if args.dump is not None:
        raise ValueError("--dump needs --bundle: only a bundle has a final ranked list to dump")
    if args.search_dump is not None:
        raise ValueError("--search-dump needs --bundle: only a bundle has a served search to dump")

    from tandem.index_builder.cleaning import load_dataset
    from tandem.index_builder.evaluate import evaluate_dataset, format_table

    if not args.data.is_dir():
        raise FileNotFoundError(f"--data {args.data} is not a folder; point it at the folder holding "
                                "items.jsonl.gz and events.jsonl.gz")
    clean = load_dataset(args.data)
    if len(clean.interactions) == 0:
        raise ValueError(f"--data {args.data} has no events (a search-only shop): the popularity baseline and "
                         "every recommendation metric need them; `tandem build` and `tandem eval --bundle` "
                         "report search metrics on the graded queries")
    params = ({"test_fraction": args.test_fraction, "valid_fraction": args.valid_fraction}
              if args.split == "temporal" else {})
    report = evaluate_dataset(clean.catalog, clean.interactions, args.split, args.k, args.targets,
                              split_parameters=params, fit_on=args.fit_on)
    report["data"] = {"path": str(args.data), **report["data"], "cleaning": clean.report.to_dict()}
    p = report["protocol"]
    print(f"split {p['name']} {p['parameters']}, {args.targets} users: {p['counts'][args.targets + '_users']}, "
          f"fitted on {args.fit_on}")
    print(format_table(report["metrics"]))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_name(args.json.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
        tmp.replace(args.json)
    return 0


def _write_json(path: Path, report: dict) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(path)


def _run_bundle(args: argparse.Namespace) -> int:
    from tandem.index_builder.bundle_eval import evaluate_bundle
    from tandem.index_builder.evaluate import format_table

    report = evaluate_bundle(args.bundle, args.data, ks=args.k, dump=args.dump, search_dump=args.search_dump)
    p = report["protocol"]
    print(f"bundle {report['bundle']}, split {p['name']} {p['parameters']}, test users {p['counts']['test_users']}")
    recommend = {stage: m for stage, m in report["metrics"].items() if stage != "search"}
    if recommend:
        print(format_table(recommend))
    else:
        print("no recommendation metrics: a search-only bundle (built without events)")
    if "search" in report["metrics"]:
        q = report["search_queries"]
        print(f"search, evaluation half of the graded queries: {q['eval']} (training half: {q['train']}):")
        print(format_table(report["metrics"]["search"]))
    if args.json is not None:
        _write_json(args.json, report)
    if args.dump is not None:
        print(f"final top-{max(args.k)} of every test user written to {args.dump}")
    if args.search_dump is not None:
        print(f"served top-100 of every evaluation-half query written to {args.search_dump}")
    return 0
