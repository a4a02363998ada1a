"""Full build against ``tandem build --from`` on a synthetic shop where 5% of the items are new or
changed and there are 10% more events (issue #14, part 4).

The earlier state of the shop is made from the generated one, deterministically (``perturb``):
a share of the items (``--new``, default 2.5%) did not exist yet (their rows and events are left
out), another share (``--changed``, 2.5%) had another text (an older title and description), and
the newest events are left out so that the full shop has ``--more-events`` (10%) more. Then
(``run``): a full build of the current shop, the earlier bundle (the one to start from; not
timed against), and an incremental build of the current shop from the earlier bundle, with the
same split, so that the final stage's R@10 and NDCG@10 are measured on the same held-out items.
To save an encode of the whole catalog on a slow machine, the full build runs first and the
earlier bundle is built from it with ``incremental.warm_start = false``: its text vectors are
the full build's for the texts the two shops share (the same encoder's), its models are trained
from scratch on the earlier shop alone::

    tandem generate --out /tmp/incb/s20k --items 20000 --users 4000 --seed 1
    nice python benchmarks/incremental_build.py run --shop /tmp/incb/s20k --work /tmp/incb/run20k

    python benchmarks/incremental_build.py perturb --src SHOP --out OLD_SHOP   # only the earlier shop

``run`` prints a table of every stage's seconds for both builds (and the CPU seconds of each,
steadier than wall time on a shared machine) and writes ``results.json`` in ``--work``.
Results: benchmarks/README.md, "Incremental builds".
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "perturb"]

_EVAL_PREFIX = "eval_"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with gzip.GzipFile(path, "wb", mtime=0) as raw:
        for row in rows:
            raw.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


def perturb(src: Path, out: Path, *, new: float = 0.025, changed: float = 0.025, more_events: float = 0.10,
            seed: int = 0) -> dict[str, int]:
    """Write the earlier state of the shop in ``src`` to ``out`` (see the module doc); returns counts.

    Same arguments, same output: the new and changed items are drawn with ``seed`` among the
    distinct item ids, and the events left out are the newest ``more_events / (1 + more_events)``
    of them by time (ties by file order), so the shop in ``src`` has ``more_events`` more."""
    items = _read_jsonl(src / "items.jsonl.gz")
    events = _read_jsonl(src / "events.jsonl.gz")
    ids = sorted({str(r.get("item_id")) for r in items if r.get("item_id")})
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(ids))
    n_new, n_changed = round(new * len(ids)), round(changed * len(ids))
    new_ids = {ids[i] for i in perm[:n_new]}
    changed_ids = {ids[i] for i in perm[n_new:n_new + n_changed]}
    old_items = []
    for row in items:
        item = str(row.get("item_id"))
        if item in new_ids:
            continue
        if item in changed_ids:
            row = dict(row)
            row["title"] = f"{row.get('title') or ''} (earlier listing)".strip()
            row["description"] = f"Earlier text. {row.get('description') or ''}".strip()
        old_items.append(row)
    order = sorted(range(len(events)), key=lambda i: (int(events[i].get("ts") or 0), i))
    keep_n = round(len(events) / (1.0 + more_events))
    kept = sorted(order[:keep_n])
    old_events = [events[i] for i in kept if str(events[i].get("item_id")) not in new_ids]
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "items.jsonl.gz", old_items)
    _write_jsonl(out / "events.jsonl.gz", old_events)
    if (src / "queries.jsonl.gz").exists():
        queries = [q for q in _read_jsonl(src / "queries.jsonl.gz") if str(q.get("item_id")) not in new_ids]
        _write_jsonl(out / "queries.jsonl.gz", queries)
    return {"items": len(ids), "new_items": len(new_ids), "changed_items": len(changed_ids),
            "events": len(events), "earlier_events": len(old_events)}


def _build(shop: Path, bundles: Path, split: str, from_bundle: Path | None, warm: bool = True) -> dict[str, Any]:
    from tandem.index_builder.build import build
    from tandem.index_builder.config import load_config

    overrides: dict[str, Any] = {"split": split}
    if from_bundle is not None:
        overrides["from_bundle"] = str(from_bundle)
        overrides["incremental"] = {"warm_start": warm}
    t0, c0 = time.perf_counter(), time.process_time()
    result = build(shop, bundles, load_config(overrides=overrides))
    wall, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    timings = dict(result.timings)
    cpu = dict(result.info.get("cpu_s_per_stage") or {})
    eval_s = sum(v for k, v in timings.items() if k.startswith(_EVAL_PREFIX))
    eval_cpu = sum(v for k, v in cpu.items() if k.startswith(_EVAL_PREFIX))
    final = result.metrics.get("final", {})
    return {"bundle": str(result.folder), "wall_s": round(wall, 1), "cpu_s": round(cpu_s, 1), "eval_s": round(eval_s, 1),
            "without_eval_s": round(wall - eval_s, 1), "cpu_without_eval_s": round(cpu_s - eval_cpu, 1),
            "timings_s": timings, "cpu_s_per_stage": cpu,
            "final": {k: final.get(k) for k in ("recall@10", "ndcg@10")},
            "metrics": result.metrics, "incremental": result.info.get("incremental")}


def _table(full: dict[str, Any], inc: dict[str, Any]) -> str:
    names = list(dict.fromkeys([*full["timings_s"], *inc["timings_s"]]))
    lines = ["| stage | full: wall s (CPU s) | incremental: wall s (CPU s) |", "|---|---|---|"]
    fc, ic = full["cpu_s_per_stage"], inc["cpu_s_per_stage"]
    for n in names:
        lines.append(f"| {n} | {full['timings_s'].get(n, 0.0):.1f} ({fc.get(n, 0.0):.1f}) | "
                     f"{inc['timings_s'].get(n, 0.0):.1f} ({ic.get(n, 0.0):.1f}) |")
    for label, key in (("total, evaluation excluded", "without_eval_s"), ("evaluation", "eval_s"),
                       ("total (wall)", "wall_s"), ("CPU seconds, evaluation excluded", "cpu_without_eval_s"),
                       ("CPU seconds of the build process", "cpu_s")):
        lines.append(f"| **{label}** | {full[key]:.1f} | {inc[key]:.1f} ({100 * inc[key] / max(full[key], 1e-9):.0f}%) |")
    for m in ("recall@10", "ndcg@10"):
        f, i = full["final"][m], inc["final"][m]
        if f is not None and i is not None:
            lines.append(f"| final {m} | {f:.4f} | {i:.4f} ({100 * (i - f) / max(f, 1e-12):+.1f}%) |")
    return "\n".join(lines)


def _run(args: argparse.Namespace) -> int:
    work: Path = args.work
    old_shop, bundles = work / "earlier_shop", work / "bundles"
    work.mkdir(parents=True, exist_ok=True)
    counts = perturb(args.shop, old_shop, new=args.new, changed=args.changed, more_events=args.more_events,
                     seed=args.seed)
    print(json.dumps(counts), flush=True)
    earlier_root = work / "earlier_bundles"
    shutil.rmtree(bundles, ignore_errors=True)
    full = _build(args.shop, bundles / "full", args.split, None)
    print(f"full build: {full['bundle']} in {full['wall_s']:.0f} s", flush=True)
    # the earlier bundle: its texts encoded by reusing the full build's vectors of the same texts (the
    # same encoder: the vectors a full encode gives), its models trained from scratch on the earlier
    # shop only (warm_start false), so nothing of the current shop's events reaches the incremental build
    shutil.rmtree(earlier_root, ignore_errors=True)
    earlier = _build(old_shop, earlier_root, args.split, bundles / "full", warm=False)
    print(f"earlier bundle: {earlier['bundle']} in {earlier['wall_s']:.0f} s", flush=True)
    inc = _build(args.shop, bundles / "incremental", args.split, earlier_root)
    out = {"counts": counts, "split": args.split, "earlier": earlier, "full": full, "incremental": inc}
    (work / "results.json").write_text(json.dumps(out, indent=2))
    print(_table(full, inc))
    print(json.dumps(inc["incremental"], indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("perturb", "run"):
        p = sub.add_parser(name)
        if name == "perturb":
            p.add_argument("--src", type=Path, required=True, help="the generated (current) shop")
            p.add_argument("--out", type=Path, required=True, help="where to write the earlier shop")
        else:
            p.add_argument("--shop", type=Path, required=True, help="the generated (current) shop")
            p.add_argument("--work", type=Path, required=True, help="folder for the earlier shop and bundles")
            p.add_argument("--split", default="leave-last-out", choices=("leave-last-out", "temporal"))
        p.add_argument("--new", type=float, default=0.025, help="share of items that are new (default 0.025)")
        p.add_argument("--changed", type=float, default=0.025, help="share of items whose text changed (0.025)")
        p.add_argument("--more-events", type=float, default=0.10, help="how many more events the shop has (0.10)")
        p.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "perturb":
        print(json.dumps(perturb(args.src, args.out, new=args.new, changed=args.changed,
                                 more_events=args.more_events, seed=args.seed)))
        return 0
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
