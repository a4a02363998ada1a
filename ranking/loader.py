"""Save a fitted pipeline into a bundle folder and load it back (verifying checksums).

Layout inside ``<root>/<version>/``::

    manifest.json            written by retrieval.bundle (versions, files, sha256, metrics, ...)
    manifest.sha256          the manifest's own digest (written last)
    catalog/                 catalog.jsonl.gz, catalog_flags.npz
    histories/               histories.npz, users.txt (base user histories)
    item_table/              item_table.npz (ranking features' per-item arrays)
    sources/<name>/          one folder per candidate source (its own save format)
    rankers/<kind>/          ranker.safetensors, ranker.json per request kind
    pipeline.json            PipelineConfig
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tandem.ranking.history import HistoryStore
from tandem.ranking.item_table import item_table_inputs, load_item_table, save_item_table
from tandem.ranking.pipeline import Pipeline, PipelineConfig
from tandem.ranking.ranker import Ranker
from tandem.retrieval.bundle import current_bundle, verify_bundle
from tandem.retrieval.catalog_io import load_catalog, save_catalog
from tandem.retrieval.registry import source_entry

__all__ = ["save_pipeline", "load_pipeline", "load_engine"]

log = logging.getLogger(__name__)


def save_pipeline(pipeline: Pipeline, folder: Path) -> dict:
    """Write every part of ``pipeline`` under ``folder``; returns manifest fields describing them."""
    folder = Path(folder)
    save_catalog(pipeline.catalog, folder / "catalog")
    pipeline.histories.save(folder / "histories")
    save_item_table(pipeline.table, folder / "item_table")
    for name, source in pipeline.sources.items():
        source.save(folder / "sources" / name)
    for kind, ranker in pipeline.rankers.items():
        ranker.save(folder / "rankers" / kind)
    (folder / "pipeline.json").write_text(json.dumps(pipeline.config.to_dict(), indent=2))
    return {"sources": sorted(pipeline.sources), "rankers": sorted(pipeline.rankers),
            "n_items": pipeline.n_items, "n_users": pipeline.n_users, "built_at": pipeline.built_at}


def load_pipeline(folder: Path, *, verify: bool = True) -> Pipeline:
    """Load a bundle folder (the manifest's digest and every checksum verified first unless
    ``verify=False``). The pipeline's version is the folder's name."""
    folder = Path(folder)
    t0 = time.perf_counter()
    manifest = verify_bundle(folder) if verify else json.loads((folder / "manifest.json").read_text())
    catalog = load_catalog(folder / "catalog")
    sources = {}
    for name in manifest.get("sources", []):
        entry = source_entry(name, f"{folder / 'manifest.json'}: sources")
        sources[name] = entry.load(folder / "sources" / name, catalog)
    rankers = {kind: Ranker.load(folder / "rankers" / kind) for kind in manifest.get("rankers", [])}
    table = load_item_table(folder / "item_table", **item_table_inputs(sources))
    histories = HistoryStore.load(folder / "histories")
    config = PipelineConfig.from_dict(json.loads((folder / "pipeline.json").read_text()))
    pipeline = Pipeline(catalog, sources, table, histories, rankers, config,
                        version=folder.name, built_at=int(manifest.get("built_at", 0)))
    log.info("loaded bundle %s (%d items, sources %s) in %.1fs", pipeline.version, len(catalog),
             ",".join(sorted(sources)), time.perf_counter() - t0)
    if pipeline.search_only:
        log.info("bundle %s is search-only (built without events; skipped %s): Recommend answers only users "
                 "with a history", pipeline.version, ", ".join(manifest.get("skipped_sources", {})) or "-")
    return pipeline


def load_engine(path: Path) -> Pipeline:
    """The server's engine loader: ``path`` is a bundle root (its CURRENT is used) or a bundle folder."""
    return load_pipeline(current_bundle(path))
