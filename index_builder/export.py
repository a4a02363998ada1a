"""Embedding export for downstream tools: item / user two-tower vectors and item text vectors,
each with its ids, as ``.npy`` (+ ``.ids.txt``) or Parquet (``id`` + fixed-size ``vector``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ranking.pipeline import Pipeline
from retrieval.base import RetrievalRequest

__all__ = ["WHAT", "FORMATS", "embeddings", "export_embeddings"]

WHAT = ("items", "users", "text")
FORMATS = ("npy", "parquet")


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


def export_embeddings(pipeline: Pipeline, what: str, fmt: str, out: Path) -> list[Path]:
    """Write the embeddings; returns the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    ids, vecs = embeddings(pipeline, what)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        np.save(out, vecs, allow_pickle=False)
        written = out if out.suffix == ".npy" else out.with_name(out.name + ".npy")
        ids_path = written.with_suffix(".ids.txt")
        ids_path.write_text("\n".join(ids) + "\n", encoding="utf-8")
        return [written, ids_path]
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = pa.array(vecs.reshape(-1), type=pa.float32())
    vector = pa.FixedSizeListArray.from_arrays(flat, vecs.shape[1])
    table = pa.table({"id": pa.array(ids, type=pa.string()), "vector": vector})
    pq.write_table(table, out)
    return [out]
