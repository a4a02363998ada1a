"""``tandem events check LOG`` and ``tandem events recover LOG --out NEW``.

``check`` reads a log without changing it (a read-only SQLite connection cannot checkpoint, so a
damaged WAL stays on disk) and exits 0 when it is sound, 1 when it is damaged; on damage it also
scans the raw pages to say how much a recovery would salvage. ``recover`` writes a new log with
every readable event (keeping sequence numbers) and lists exactly which sequence numbers are lost.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("events", help="check or recover a server event log",
                              description="Check an event log, or salvage a damaged one into a new log.")
    sub = p.add_subparsers(dest="events_command", metavar="ACTION")
    sub.required = True
    c = sub.add_parser("check", help="read-only integrity check (exit 0 sound, 1 damaged)")
    c.add_argument("log", type=Path, metavar="LOG", help="the event log (e.g. BUNDLES/events.sqlite3)")
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(handler=_check)
    r = sub.add_parser("recover", help="copy every readable event into a new log and report what was lost")
    r.add_argument("log", type=Path, metavar="LOG", help="the damaged event log (only read)")
    r.add_argument("--out", type=Path, required=True, metavar="NEW", help="the new log to write (must not exist)")
    r.add_argument("--json", action="store_true", help="print the report as JSON")
    r.set_defaults(handler=_recover)


def _fmt_ranges(ranges) -> str:
    shown = [f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:20]]
    return ", ".join(shown) + (f" and {len(ranges) - 20} more ranges" if len(ranges) > 20 else "")


def _check(args: argparse.Namespace) -> int:
    from tandem.server.event_log import inspect_log
    from tandem.server.event_salvage import salvage_rows

    if not args.log.is_file():
        raise FileNotFoundError(f"no event log at {args.log}")
    report = inspect_log(args.log)
    if report["problems"]:
        rows, _ = salvage_rows(args.log)
        top = max([report["acked"] or 0, report["last_seq"], *rows.keys()])
        report["salvageable"] = sum(1 for s in rows if s <= top)
        report["expected"] = top
    report["ok"] = not report["problems"]
    if args.json:
        print(json.dumps(report))
    elif report["ok"]:
        print(f"{args.log}: ok, {report['rows']} events, sequence 1..{report['last_seq']}"
              + (f" ({sum(b - a + 1 for a, b in report['lost'])} recorded as lost in an earlier recovery)"
                 if report["lost"] else ""))
    else:
        print(f"{args.log}: DAMAGED")
        for problem in report["problems"]:
            print(f"  - {problem}")
        print(f"  a recovery would salvage {report['salvageable']} of {report['expected']} sequence numbers; "
              f"run: tandem events recover {args.log} --out NEW.sqlite3")
    return 0 if report["ok"] else 1


def _recover(args: argparse.Namespace) -> int:
    from tandem.server.event_salvage import recover_log

    try:
        report = recover_log(args.log, args.out)
    except FileExistsError as exc:
        raise ValueError(str(exc)) from None
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"recovered {report['salvaged']} events of sequence 1..{report['last_seq']} from {args.log} into {args.out}")
    if report["lost"]:
        print(f"lost {report['lost']} events, sequence numbers {_fmt_ranges(report['lost_ranges'])} "
              f"(recorded in the new log's lost table)")
    else:
        print("nothing lost")
    if report["unacknowledged_dropped"]:
        print(f"left out {report['unacknowledged_dropped']} rows past the last acknowledged sequence "
              f"{report['acked']} (a commit that never answered)")
    print(f"serve it with --event-log {args.out}, or move it (and {args.out}-acked) into place of {args.log}")
    return 0
