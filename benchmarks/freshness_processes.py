"""Freshness across the processes of one host: an event acknowledged by one process of
`tandem serve --processes 2` -> visible in the other process's Recommend (p50/p99), beside the
floor of the method (the same loop on the process that recorded it).

    .venv/bin/python benchmarks/freshness_processes.py --bundles BUNDLES --data SHOP [--trials 200]

The measurement is :func:`processes.visibility` (benchmarks/processes.py, which also measures
throughput); this module runs it alone on one 2-process group.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import processes  # noqa: E402 - a sibling script, not a package


def main(argv: list[str] | None = None) -> int:
    ours, extra = processes._split(sys.argv[1:] if argv is None else argv)
    args = processes.parser().parse_args(ours)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"{os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f} at start", flush=True)
    served = processes.Served(args.bundles, args.work, 2, extra)
    try:
        vis = processes.visibility(served.private, processes.catalog_item(served.port), args.trials)
    finally:
        served.stop()
    print(f"visibility, recorded on one process, Recommend on the other: {processes._pct(vis['cross'])}")
    print(f"floor, recorded and read on the same process:               {processes._pct(vis['same'])}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
