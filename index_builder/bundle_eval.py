"""Evaluate a built bundle on the split recorded in its manifest, through the serving pipeline."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tandem.index_builder.build import evaluate_pipeline
from tandem.index_builder.cleaning import CleaningConfig, load_dataset, load_queries
from tandem.index_builder.config import _build
from tandem.index_builder.splits import make_split
from tandem.ranking.loader import load_pipeline
from tandem.retrieval.bundle import current_bundle

__all__ = ["evaluate_bundle"]


def evaluate_bundle(bundle: Path, data_dir: Path, ks: Sequence[int] = (10, 50, 200),
                    dump: Path | None = None, search_dump: Path | None = None) -> dict[str, Any]:
    """Every recommend source alone, ``fused`` and ``final`` (the pipeline the server runs) on
    the test targets of the bundle's split; search stages on the evaluation half of the graded
    queries, if any, under ``metrics["search"]`` (:func:`tandem.index_builder.search_eval.evaluate_search`).
    A search-only bundle (built without events) has search stages only. ``search_dump``: the
    served top 100 of every evaluation-half query, as JSONL."""
    folder = current_bundle(bundle)
    pipeline = load_pipeline(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    protocol = manifest.get("split", {"name": "none"})
    if pipeline.search_only:
        if dump is not None:
            raise ValueError(f"bundle {folder.name} is search-only (built without events): it has no recommendations "
                             "to dump; leave out --dump")
        protocol = {"name": "none", "parameters": {}}  # nothing to hold out: search is evaluated on queries
    elif protocol.get("name", "none") == "none":
        raise ValueError(f"bundle {folder.name} was built with --split none (trained on every event), so it has no "
                         "held-out targets; build with --split leave-last-out or temporal to evaluate it")
    cleaning = _build(CleaningConfig, manifest.get("config", {}).get("cleaning", {}), "cleaning")
    clean = load_dataset(data_dir, cleaning)
    if clean.catalog.item_ids != pipeline.catalog.item_ids:
        raise ValueError(f"--data {data_dir} does not hold the catalog bundle {folder.name} was built from "
                         f"({len(clean.catalog)} vs {len(pipeline.catalog)} items); pass the same data folder")
    split = make_split(clean.interactions, protocol["name"], **protocol.get("parameters", {}))
    metrics = {} if pipeline.search_only else evaluate_pipeline(pipeline, split, ks)
    report: dict[str, Any] = {
        "bundle": folder.name,
        "protocol": {**protocol, "counts": split.counts(), "targets": "test"},
        "data": {"path": str(data_dir), "users": clean.interactions.n_users, "items": len(clean.catalog),
                 "events": len(clean.interactions)},
        "metrics": metrics,
    }
    queries = load_queries(data_dir, clean.catalog)
    from tandem.index_builder.search_eval import evaluate_search, group_queries, split_queries

    train_q, eval_q = split_queries(group_queries(queries or [], clean.catalog))
    if search_dump is not None and not len(eval_q):
        raise ValueError(f"--data {data_dir} has no graded queries on the catalog's items in the evaluation half "
                         f"({len(train_q)} in the training half), so there is no search to dump; leave out "
                         "--search-dump or add a queries.jsonl[.gz]")
    if len(eval_q):
        metrics["search"] = evaluate_search(pipeline, eval_q, dump=search_dump)
        report["search_queries"] = {"train": len(train_q), "eval": len(eval_q)}
    if dump is not None:
        k = max(ks)
        top = pipeline.rank_requests(split.test.requests(), k)
        dump.parent.mkdir(parents=True, exist_ok=True)
        with open(dump, "w", encoding="utf-8") as f:
            for i, row in enumerate(top):
                user = split.test.user_ids[int(split.test.users[i])]
                items = [pipeline.catalog.item_ids[int(x)] for x in row[row >= 0]]
                f.write(json.dumps({"user_id": user, "items": items}) + "\n")
    return report


