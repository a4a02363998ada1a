"""Embedding export for downstream tools: item / user two-tower vectors and item text vectors,
each with its ids, the catalog fields of items, and what produced them.

- ``npy``: ``FILE.npy`` (float32 (n, d)), ``FILE.ids.txt`` (one id per line, row order, no
  trailing empty line), ``FILE.meta.json`` (the metadata below) and, for items and text,
  ``FILE.catalog.jsonl`` (one catalog row per vector, same order).
- ``parquet``: one table, ``id`` + fixed-size-list ``vector`` (+ ``title``, ``description``,
  ``category``, ``brand``, ``price`` (null when unknown), ``tags``, ``in_stock`` for items and
  text); the schema metadata carries the same keys as ``FILE.meta.json``, prefixed ``tandem.``.

Metadata: ``what``, ``bundle_version``, ``built_at``, ``model`` (the text encoder's id, or
``two_tower`` with ``model_config`` as JSON), ``dimension``, ``metric`` (``cosine``: unit
vectors or a cosine-trained model, compare by inner product; ``dot``: inner product of
unnormalised vectors), ``count``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tandem.ranking.pipeline import Pipeline
from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Catalog

__all__ = ["WHAT", "FORMATS", "METADATA_PREFIX", "embeddings", "export_metadata", "write_embeddings",
           "export_embeddings"]

WHAT = ("items", "users", "text")
FORMATS = ("npy", "parquet")
#: Prefix of the Tandem keys in a Parquet file's schema metadata.
METADATA_PREFIX = "tandem."


def embeddings(pipeline: Pipeline, what: str, batch_size: int = 512) -> tuple[list[str], np.ndarray]:
    """(ids, float32 (n, d)) for ``what`` in :data:`WHAT`."""
    if what not in WHAT:
        raise ValueError(f"--what must be one of {', '.join(WHAT)}, got {what!r}")
    if what == "text":
        text = pipeline.sources.get("text")
        if text is None:
            raise ValueError("this bundle has no text source; nothing to export for --what text")
        return list(pipeline.catalog.item_ids), np.asarray(text.vectors, dtype=np.float32)
    tt = pipeline.sources.get("two_tower")
    if tt is None:
        raise ValueError(f"this bundle has no two-tower model; nothing to export for --what {what}")
    if what == "items":
        return list(pipeline.catalog.item_ids), tt.encode_items()
    users = pipeline.histories.user_ids
    out = []
    for start in range(0, len(users), batch_size):
        reqs = []
        for u in users[start:start + batch_size]:
            h = pipeline.histories.get(u)
            reqs.append(RetrievalRequest(history=h.items, history_ts=h.ts, history_events=h.events, user_id=u))
        out.append(tt.encode_users(reqs))
    dim = tt.encode_items().shape[1] if not out else out[0].shape[1]
    return list(users), (np.concatenate(out) if out else np.zeros((0, dim), np.float32))


def export_metadata(pipeline: Pipeline, what: str, vectors: np.ndarray) -> dict[str, str]:
    """What produced the vectors, as strings (see the module docstring)."""
    meta = {"what": what, "bundle_version": str(pipeline.version), "built_at": str(pipeline.built_at),
            "dimension": str(vectors.shape[1]), "count": str(vectors.shape[0])}
    if what == "text":
        encoder = pipeline.sources["text"].encoder
        meta.update(model=encoder.model_id, backend=encoder.config.backend, metric="cosine")
    else:
        config = pipeline.sources["two_tower"].config
        meta.update(model="two_tower", metric=config.similarity,
                    model_config=json.dumps(dataclasses.asdict(config), sort_keys=True, default=str))
    return meta


def _catalog_columns(catalog: Catalog) -> dict[str, list]:
    prices = catalog.prices
    return {"title": list(catalog.titles), "description": list(catalog.descriptions),
            "category": list(catalog.categories), "brand": list(catalog.brands),
            "price": [None if np.isnan(p) else float(p) for p in prices.tolist()],
            "tags": [list(t) for t in catalog.tags], "in_stock": [bool(s) for s in catalog.in_stock.tolist()]}


def write_embeddings(ids: list[str], vectors: np.ndarray, fmt: str, out: Path, metadata: Mapping[str, str],
                     catalog: Catalog | None = None) -> list[Path]:
    """Write ``vectors`` (float32 (n, d)) with their ``ids``, the ``metadata`` and, when given, the
    catalog fields of each row (``catalog`` row ``i`` must be ``ids[i]``); returns the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] != len(ids):
        raise ValueError(f"vectors must be (len(ids)={len(ids)}, d), got shape {vectors.shape}")
    if catalog is not None and list(catalog.item_ids) != list(ids):
        raise ValueError("catalog rows must be the ids, in the same order")
    bad = next((i for i in ids if "\n" in i or "\r" in i), None)
    if bad is not None:
        raise ValueError(f"id {bad!r} contains a line break; it cannot be written one per line")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    columns = _catalog_columns(catalog) if catalog is not None else {}
    if fmt == "npy":
        written = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
        np.save(written, vectors, allow_pickle=False)
        ids_path = written.with_suffix(".ids.txt")
        ids_path.write_text("\n".join(ids), encoding="utf-8")  # no final newline: split("\n") gives the ids
        meta_path = written.with_suffix(".meta.json")
        meta_path.write_text(json.dumps(dict(metadata), indent=2) + "\n", encoding="utf-8")
        paths = [written, ids_path, meta_path]
        if columns:
            rows_path = written.with_suffix(".catalog.jsonl")
            with open(rows_path, "w", encoding="utf-8") as f:
                for n, item_id in enumerate(ids):
                    f.write(json.dumps({"item_id": item_id, **{k: v[n] for k, v in columns.items()}},
                                       ensure_ascii=False) + "\n")
            paths.append(rows_path)
        return paths
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    vector = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
    types = {"title": pa.string(), "description": pa.string(), "category": pa.string(), "brand": pa.string(),
             "price": pa.float64(), "tags": pa.list_(pa.string()), "in_stock": pa.bool_()}
    table = pa.table({"id": pa.array(ids, type=pa.string()), "vector": vector,
                      **{k: pa.array(v, type=types[k]) for k, v in columns.items()}})
    table = table.replace_schema_metadata({f"{METADATA_PREFIX}{k}": str(v) for k, v in metadata.items()})
    pq.write_table(table, out)
    return [out]


def export_embeddings(pipeline: Pipeline, what: str, fmt: str, out: Path) -> list[Path]:
    """Write the embeddings of ``what`` (with the catalog fields for items and text); returns the files."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    ids, vecs = embeddings(pipeline, what)
    catalog = pipeline.catalog if what in ("items", "text") else None
    return write_embeddings(ids, vecs, fmt, out, export_metadata(pipeline, what, vecs), catalog)
