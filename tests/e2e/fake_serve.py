"""``tandem serve`` over the FakeEngine, as a process of its own: ``python -m tests.e2e.fake_serve
--bundles DIR [serve flags]``. The serve command's own code (flags, logging, signals, drain) with
the test engine loader passed in, since the product CLI has no hook for one."""

from __future__ import annotations

import os
import sys

from tandem.retrieval.bundle import BundleError
from tandem.server.cli import build_parser
from tandem.server.commands import serve
from tests.server.fake_engine import load_fake_engine


def main(argv: list[str]) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = build_parser().parse_args(["serve", *argv])
    try:
        return serve(args, load_fake_engine)
    except (BundleError, OSError, ValueError) as exc:  # as tandem.server.cli.main reports them
        print(f"tandem serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
