"""Freshness without a rebuild (issue #14), one entry point for its three measurements:

    .venv/bin/python benchmarks/freshness.py new-item ARGS...       # UpsertItems ack -> first seen in Search and SimilarItems
    .venv/bin/python benchmarks/freshness.py co-purchase ARGS...    # RecordEvents ack -> a new pair in SimilarItems
    .venv/bin/python benchmarks/freshness.py prequential ARGS...    # frozen vs live histories vs online learning

Each subcommand is its own module (``freshness_catalog.py``, ``freshness_copurchase.py``,
``freshness_prequential.py``; ``SUBCOMMAND --help`` lists its flags), and its figures are in
benchmarks/README.md under its own heading.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

SUBCOMMANDS = {
    "new-item": ("freshness_catalog", "UpsertItems acknowledgement -> first appearance in Search and SimilarItems"),
    "co-purchase": ("freshness_copurchase", "RecordEvents acknowledgement -> the new pair in SimilarItems"),
    "prequential": ("freshness_prequential", "time-ordered replay: frozen bundle, live histories, online learning"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        width = max(map(len, SUBCOMMANDS))
        lines = [f"  {name:<{width}}  {what}" for name, (_, what) in SUBCOMMANDS.items()]
        print("usage: freshness.py {" + ",".join(SUBCOMMANDS) + "} [ARGS...]\n\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nfreshness.py: error: unknown subcommand {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    module = importlib.import_module(SUBCOMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
