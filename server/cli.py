"""The ``tandem`` console command.

The server package sits at the top of the dependency graph, so the one console command lives
here and gathers its subcommands from the packages below. Each command module exposes
``register(subparsers)`` and keeps heavy imports (torch, faiss, grpc) inside its handler, so
``tandem --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import sys

from tandem.retrieval.bundle import BundleError
from tandem.server.logs import NOISY_LOGGERS, quiet_third_party

__all__ = ["main", "build_parser"]

# Module paths; each registers one or more subcommands.
COMMAND_MODULES: tuple[str, ...] = (
    "tandem.index_builder.commands.generate",
    "tandem.index_builder.commands.importers",
    "tandem.index_builder.commands.clean",
    "tandem.index_builder.commands.evaluate",
    "tandem.index_builder.commands.build",
    "tandem.index_builder.commands.export",
    "tandem.index_builder.commands.tune",
    "tandem.index_builder.commands.report",
    "tandem.server.commands",
    "tandem.server.event_commands",
    "tandem.server.experiment_commands",
    "tandem.server.learn_commands",
)


def _version() -> str:
    try:
        return importlib.metadata.version("tandem")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem",
        description="Tandem: retrieval and ranking for e-commerce search and recommendation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging (default: info)")
    parser.add_argument("--version", action="version", version=f"tandem {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:  # third-party chatter (faiss CPU-feature probing, bm25s, model loading)
        for noisy in NOISY_LOGGERS:
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # bm25s sets its own logger to DEBUG when it is imported (later, lazily): filter at the handler
        for handler in logging.getLogger().handlers:
            handler.addFilter(quiet_third_party)
    if not sys.stderr.isatty():
        # a log file or CI, not a terminal: progress bars redraw every 30 s instead of ~10 times a second
        os.environ.setdefault("TQDM_MININTERVAL", "30")
    try:
        return int(args.handler(args) or 0)
    # a missing, incomplete or tampered bundle, an unreadable file, a bad value: one line, no traceback
    except (BundleError, OSError, ValueError) as exc:
        print(f"tandem {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
