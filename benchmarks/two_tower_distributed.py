"""Two-tower training in 1 vs N processes (``train_procs``): validation quality and time per epoch.

    .venv/bin/tandem generate --out /tmp/shop --items 5000 --users 3000 --seed 7
    .venv/bin/python benchmarks/two_tower_distributed.py --data /tmp/shop --procs 1 2 --seeds 0 1 2 \
        --set epochs=12

Loads and cleans the data like ``tandem build``, splits leave-last-out, and trains
:class:`retrieval.two_tower.TwoTower` (default config, overrides with ``--set field=value``;
``use_text=false``: the frozen text vectors are a constant input the processes do not exchange,
and encoding titles would double the run on a busy machine) once per (procs, seed) with early stopping on validation Recall@10. Prints one line
per run: best validation Recall@10, the test Recall@10 of the kept state, epochs, seconds of the
training loop per epoch (validation included; the processes' start-up excluded), the wall time of
the fit (start-up included) and the 1-minute load average before and after, then per procs the
mean and spread (max - min, sample standard deviation) over the seeds: the run-to-run noise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from pathlib import Path

import torch

from tandem.index_builder.cleaning import load_dataset
from tandem.index_builder.splits import leave_last_out
from tandem.retrieval.two_tower import TwoTower, TwoTowerConfig


def _parse(text: str) -> tuple[str, object]:
    name, _, raw = text.partition("=")
    kind = {f.name: f.type for f in dataclasses.fields(TwoTowerConfig)}[name]
    if "bool" in str(kind):
        return name, raw.lower() in ("1", "true", "yes")
    if "int" in str(kind):
        return name, int(raw)
    if "float" in str(kind):
        return name, float(raw)
    return name, raw


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=1, help="torch threads of the single process (N procs: / N)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset(args.data)
    split = leave_last_out(data.interactions)
    overrides = dict(_parse(s) for s in args.set)
    results: dict[int, list[float]] = {}
    for procs in args.procs:
        for seed in args.seeds:
            cfg = TwoTowerConfig(**{"use_text": False, **overrides, "seed": seed, "train_procs": procs})
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            model = TwoTower(cfg).fit(data.catalog, split.train, valid=split.valid)
            wall = time.perf_counter() - t0
            log = model.log
            assert log is not None
            best = max(e[1] for e in log.evals)
            test_recall, _ = model.evaluate(split.test, 10)
            results.setdefault(procs, []).append(best)
            print(f"procs={procs} seed={seed} valid_R@10={best:.4f} test_R@10={test_recall:.4f} "
                  f"epochs={log.epochs_run} best_epoch={log.best_epoch} stopped={log.stopped} "
                  f"s/epoch={log.seconds / log.epochs_run:.1f} fit_wall_s={wall:.0f} "
                  f"load1={load0:.1f}->{os.getloadavg()[0]:.1f}", flush=True)
    for procs, rs in results.items():
        sd = statistics.stdev(rs) if len(rs) > 1 else 0.0
        print(f"procs={procs}: valid R@10 mean {statistics.mean(rs):.4f} spread {max(rs) - min(rs):.4f} "
              f"sd {sd:.4f} over {len(rs)} seeds")


if __name__ == "__main__":
    main()
