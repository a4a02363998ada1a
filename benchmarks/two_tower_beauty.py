"""Two-tower quality on Amazon Beauty (leave-last-out, full ranking, history excluded).

    .venv/bin/python benchmarks/two_tower_beauty.py --data /work/shared/data/beauty

Trains :class:`retrieval.two_tower.TwoTower` with its default config (overrides with
``--set field=value``), early-stopped on validation Recall@10, and prints validation and test
Recall@10 / NDCG@10, the epochs run and the wall time. The published SASRec reference on this
protocol is Recall@10 0.0605 / NDCG@10 0.0318.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from tandem.retrieval.data import EVENT_CODE, Catalog, Interactions, Item
from tandem.retrieval.text_tower import TextEncoder
from tandem.retrieval.two_tower import TwoTower, TwoTowerConfig


def _read_jsonl(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_beauty(data_dir: Path) -> tuple[Catalog, Interactions]:
    """Catalog and interactions from items.jsonl.gz / events.jsonl.gz."""
    try:
        from tandem.index_builder.cleaning import load_dataset
    except ImportError:
        load_dataset = None
    if load_dataset is not None:
        result = load_dataset(data_dir)
        return result.catalog, result.interactions
    items = _read_jsonl(data_dir / "items.jsonl.gz")
    catalog = Catalog.from_items(
        Item(str(r["item_id"]), r.get("title", ""), tags=tuple(r.get("tags", ()))) for r in items
    )
    events = _read_jsonl(data_dir / "events.jsonl.gz")
    user_ids = sorted({str(e["user_id"]) for e in events})
    uidx = {u: i for i, u in enumerate(user_ids)}
    return catalog, Interactions(
        user_ids,
        np.array([uidx[str(e["user_id"])] for e in events]),
        np.array([catalog.index[str(e["item_id"])] for e in events]),
        np.array([int(e["ts"]) for e in events]),
        np.array([EVENT_CODE[e.get("event", "purchase")] for e in events]),
        np.full(len(events), np.nan, dtype=np.float32),
    )


def _parse_override(text: str, config: TwoTowerConfig) -> tuple[str, object]:
    name, _, raw = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(config)}
    if name not in fields:
        raise SystemExit(f"--set {text}: unknown TwoTowerConfig field {name!r}; fields: {', '.join(fields)}")
    current = getattr(config, name)
    if raw == "None":
        return name, None
    if isinstance(current, bool):
        return name, raw.lower() in ("1", "true", "yes")
    if isinstance(current, int):
        return name, int(raw)
    if isinstance(current, float) or current is None:
        return name, float(raw)
    return name, raw


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("TANDEM_BEAUTY", "data/beauty")))
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE")
    parser.add_argument(
        "--text-cache",
        type=Path,
        default=None,
        help="a .npy file for the text vectors (written when missing)",
    )
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from tandem.index_builder.splits import leave_last_out

    t0 = time.perf_counter()
    catalog, interactions = load_beauty(args.data)
    split = leave_last_out(interactions)
    print(
        f"data: {len(catalog)} items, {interactions.n_users} users, {len(interactions)} events; "
        f"split {split.counts()} ({time.perf_counter() - t0:.1f}s)",
        flush=True,
    )

    config = TwoTowerConfig()
    config = dataclasses.replace(config, **dict(_parse_override(s, config) for s in args.set))
    text = None
    if config.use_text:
        t1 = time.perf_counter()
        if args.text_cache is not None and args.text_cache.is_file():
            text = np.load(args.text_cache, allow_pickle=False)
            if text.shape[0] != len(catalog):
                raise SystemExit(
                    f"{args.text_cache} holds {text.shape[0]} vectors, the catalog has "
                    f"{len(catalog)} items; delete the cache file to re-encode"
                )
        else:
            text = TextEncoder().encode([catalog.text(i) for i in range(len(catalog))])
            if args.text_cache is not None:
                np.save(args.text_cache, text, allow_pickle=False)
        print(f"text vectors {text.shape} ({time.perf_counter() - t1:.1f}s)", flush=True)
    print(f"config: {config}", flush=True)

    t2 = time.perf_counter()
    model = TwoTower(config).fit(catalog, split.train, valid=split.valid, text_vectors=text, progress=True)
    train_s = time.perf_counter() - t2
    t3 = time.perf_counter()
    v_recall, v_ndcg = model.evaluate(split.valid, 10)
    # the test histories hold the validation item too; the model is not refitted on it
    t_recall, t_ndcg = model.evaluate(split.test, 10)
    eval_s = time.perf_counter() - t3
    log = model.log
    assert log is not None
    print(f"valid Recall@10 {v_recall:.4f} NDCG@10 {v_ndcg:.4f}")
    print(f"test  Recall@10 {t_recall:.4f} NDCG@10 {t_ndcg:.4f}   (SASRec reference 0.0605 / 0.0318)")
    print(
        f"epochs run {log.epochs_run}, best epoch {log.best_epoch}, train {train_s:.0f}s, "
        f"final eval {eval_s:.0f}s, total {time.perf_counter() - t0:.0f}s, threads {args.threads}"
    )


if __name__ == "__main__":
    main()
