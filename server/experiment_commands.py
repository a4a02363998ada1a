"""``tandem experiment check FILE.toml`` and ``tandem experiment report``.

``report`` reads the server's exposure log and event log (read-only; the server may be running),
attributes clicks, carts and purchases to exposures, and prints per-arm CTR, cart rate,
conversion and revenue per exposure with 95% intervals and each arm's test against control
(:mod:`tandem.server.experiment_report`). Exit status 0; a bad file or flag exits 2 with one line.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

__all__ = ["register", "catalog_prices"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("experiment", help="check an A/B experiment file, or report on a running one",
                              description="A/B experiments served by `tandem serve --experiment FILE.toml` "
                              "(see docs/operations.md).")
    sub = p.add_subparsers(dest="experiment_command", metavar="ACTION")
    sub.required = True
    c = sub.add_parser("check", help="validate an experiment file and print its arms")
    c.add_argument("experiment", type=Path, metavar="FILE.toml", help="the experiment file")
    c.set_defaults(handler=_check)
    r = sub.add_parser("report", help="per-arm CTR, conversion and revenue per exposure, with significance tests",
                       description="Attribute the event log's clicks, carts and purchases to the exposure log's "
                       "exposures and compare every arm with the control arm.")
    r.add_argument("--experiment", type=Path, required=True, metavar="FILE.toml",
                   help="the experiment file the server ran (its name selects the exposures; required)")
    r.add_argument("--log", type=Path, required=True, metavar="EVENTS",
                   help="the server's event log (e.g. BUNDLES/events.sqlite3; required)")
    r.add_argument("--exposures", type=Path, metavar="SQLITE",
                   help="the server's exposure log (default: exposures.sqlite3 beside --log)")
    r.add_argument("--bundles", type=Path, metavar="DIR",
                   help="bundle root or bundle folder whose catalog gives prices (default: the folder of --log; "
                   "CURRENT there, plus the bundles the arms pin)")
    r.add_argument("--json", type=Path, metavar="OUT", help="also write the report as JSON to OUT ('-': stdout "
                   "instead of the table)")
    r.set_defaults(handler=_report)


def _check(args: argparse.Namespace) -> int:
    from tandem.server.experiment import load_experiment

    exp = load_experiment(args.experiment)
    print(f"experiment {exp.name}: {len(exp.arms)} arms, attribution {exp.attribution} within "
          f"{exp.attribution_window_s:g} s, alpha {exp.alpha:g}")
    for i, a in enumerate(exp.arms):
        what = [f"bundle {a.bundle}" if a.bundle else "the serving bundle"]
        if not a.ranker:
            what.append("no ranker")
        if a.pipeline:
            what.append("pipeline " + ", ".join(f"{k}={v}" for k, v in a.pipeline.items()))
        print(f"  {a.name:<16} share {a.share:<6g} {'(control) ' if i == 0 else ''}{'; '.join(what)}")
    return 0


def catalog_prices(bundles: Path, versions: list[str]) -> dict[str, float]:
    """item id -> price from the catalog of ``bundles`` (a bundle folder, or a root whose CURRENT
    is read) and of ``versions`` under that root (the pinned arms' bundles; earlier ones win)."""
    from tandem.retrieval.bundle import current_bundle
    from tandem.retrieval.catalog_io import load_catalog

    folders = [current_bundle(bundles)]
    folders += [bundles / v for v in versions if (bundles / v / "catalog").is_dir()]
    prices: dict[str, float] = {}
    for folder in reversed(folders):
        catalog = load_catalog(folder / "catalog")
        prices.update((i, float(p)) for i, p in zip(catalog.item_ids, catalog.prices.tolist(), strict=True)
                      if math.isfinite(p))
    return prices


def _report(args: argparse.Namespace) -> int:
    from tandem.server.experiment import load_experiment
    from tandem.server.experiment_report import analyze, format_report, read_conversion_events
    from tandem.server.exposure_log import read_exposures

    exp = load_experiment(args.experiment)
    exposures_path = args.exposures or args.log.parent / "exposures.sqlite3"
    bundles = args.bundles or args.log.parent
    prices = catalog_prices(bundles, [a.bundle for a in exp.arms if a.bundle])
    exposures = list(read_exposures(exposures_path, exp.name))
    since = min((e.second for e in exposures), default=None)
    report = analyze(exp, exposures, read_conversion_events(args.log, since), prices)
    report["exposure_log"], report["event_log"] = str(exposures_path), str(args.log)
    if args.json is not None and str(args.json) == "-":
        print(json.dumps(report, indent=2))
        return 0
    print(format_report(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0
