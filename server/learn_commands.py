"""``tandem learn --bundles ROOT --events-log FILE --every DURATION`` (or ``--once``): guarded online
learning beside a running server (server/learner.py; docs/operations.md, "Guarded online learning")."""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from pathlib import Path

__all__ = ["parse_duration", "register"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """``"90"``/``"90s"``, ``"15m"``, ``"1h"``, ``"1d"`` -> seconds (> 0); ValueError naming the flag."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(text))
    if m is None or float(m.group(1)) <= 0:
        raise ValueError(f"--every: expected a positive duration such as 90s, 15m, 1h or 1d, got {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "learn", help="guarded online learning: retrain on new events, publish only a candidate that is not worse",
        description="Each cycle builds a candidate bundle from the serving bundle's data plus the events logged "
                    "since, holds out the newest of them, scores both bundles' Recommend on them (R@k, NDCG@k) "
                    "and publishes the candidate (a new version, then CURRENT: the server swaps to it) only when "
                    "it is not worse than the serving bundle beyond --tolerance.")
    p.add_argument("--bundles", type=Path, required=True, metavar="ROOT", help="the server's bundle root")
    p.add_argument("--events-log", type=Path, metavar="FILE",
                   help="the server's event log (default ROOT/events.sqlite3)")
    when = p.add_mutually_exclusive_group(required=True)
    when.add_argument("--every", metavar="DURATION", help="run a cycle every DURATION (e.g. 30m, 1h) until SIGTERM")
    when.add_argument("--once", action="store_true", help="run one cycle, print its decision as JSON and exit")
    p.add_argument("--holdout-share", type=float, default=0.2, metavar="X",
                   help="share of the new events (the newest) held out to judge the candidate (default 0.2)")
    p.add_argument("--min-new-events", type=int, default=20, metavar="N",
                   help="fewer new events than N: skip the cycle, they wait for the next one (default 20)")
    p.add_argument("--tolerance", type=float, default=0.01, metavar="X",
                   help="relative drop of NDCG@k or R@k still published (default 0.01 = 1%%; negative: "
                        "demand a gain)")
    p.add_argument("--confidence", type=float, default=0.0, metavar="C",
                   help="0 (default): worse means a mean below the serving bundle's beyond --tolerance; "
                        "C in (0.5, 1): only when it is so with confidence C (paired bootstrap over the judged "
                        "users), so a small held-out set's noise does not reject an equal candidate")
    p.add_argument("--k", type=int, default=10, metavar="N", help="list length judged (default 10)")
    p.add_argument("--work-dir", type=Path, metavar="DIR",
                   help="scratch root for candidates (default ROOT/.learn)")
    p.add_argument("--metrics-port", type=int, metavar="PORT",
                   help="serve the learner's Prometheus metrics on this port (default: off)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from tandem.server.learner import LearnConfig, Learner

    config = LearnConfig(bundles=args.bundles, events_log=args.events_log or args.bundles / "events.sqlite3",
                         every_s=parse_duration(args.every) if args.every else 3600.0,
                         holdout_share=args.holdout_share, min_new_events=args.min_new_events,
                         tolerance=args.tolerance, confidence=args.confidence, k=args.k, work_dir=args.work_dir)
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        raise ValueError(f"--metrics-port must be 0..65535, got {args.metrics_port}")
    learner = Learner(config)
    if args.metrics_port is not None:
        port = learner.metrics.serve(args.metrics_port)
        print(f"tandem learn: metrics on 127.0.0.1:{port}", flush=True)
    try:
        if args.once:
            record = learner.cycle()
            print(json.dumps(record, sort_keys=True), flush=True)
            return 0

        def on_signal(signum, frame):  # noqa: ARG001
            if learner.stop_event.is_set():  # a second signal: do not wait for the cycle
                sys.exit(128 + signum)
            learner.stop_event.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        print(f"tandem learn: a cycle every {config.every_s:g}s on {config.bundles} (log {config.events_log})",
              flush=True)
        learner.run()
        print("tandem learn: stopped", flush=True)
        return 0
    finally:
        learner.metrics.close()
