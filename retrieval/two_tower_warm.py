"""Warm-starting the two-tower model from an earlier bundle's weights (``tandem build --from``).

The new network is first made exactly as a cold fit makes it (same seed, the new catalog's
feature vocabularies and text vectors), then the earlier weights are copied in where they mean
the same thing: item id embeddings row by row for items whose id the earlier catalog had, tag,
category and brand embeddings by vocabulary value, the price-bucket embeddings by bucket, and
every other parameter (text projection, user tower, temperature) whole. New items and new
vocabulary values keep the fresh initialisation. The feature buffers (each item's tags, text
vector, ...) are always the new catalog's. A different architecture (dimension, layers, encoder
kind, features on or off, text width) cannot be mapped: :func:`warm_start_state` then says why
and the caller trains from scratch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from tandem.retrieval.data import Catalog
from tandem.retrieval.two_tower_config import TwoTowerConfig

__all__ = ["ARCHITECTURE_FIELDS", "PreviousTwoTower", "WarmStartReport", "warm_start_problem", "warm_start_state"]

#: Settings that shape the network's parameters: equal ones are needed to copy weights.
ARCHITECTURE_FIELDS = ("dim", "layers", "heads", "max_len", "user_encoder", "similarity", "use_text",
                       "use_item_features", "max_tags", "category_levels", "price_buckets")
_BY_ID = "items.ids.weight"
_BY_VOCAB = {"items.tag_emb.weight": "tags", "items.cat_emb.weight": "categories",
             "items.brand_emb.weight": "brands"}
#: price-bucket embeddings: the quantile edges are recomputed, so the bucket count may change
_BY_BUCKET = "items.price_emb.weight"
#: buffers made from the catalog (the new one's are kept)
_CATALOG_BUFFERS = ("items.tags", "items.cats", "items.brands", "items.prices", "items.text")


@dataclass
class PreviousTwoTower:
    """An earlier bundle's two-tower weights and what is needed to map them: its config, the
    text vectors' width, the feature vocabularies, the training log (JSON) and the catalog ids
    of its item rows (row ``i + 1`` is ``item_ids[i]``)."""

    config: TwoTowerConfig
    text_dim: int | None
    vocab: dict[str, Any] | None
    training: dict[str, Any] | None
    state: dict[str, torch.Tensor]
    item_ids: list[str]

    @classmethod
    def read(cls, folder: Path, item_ids: list[str]) -> PreviousTwoTower:
        """The weights and settings a bundle's ``sources/two_tower`` folder holds, without
        building the model or its index; ``item_ids`` the bundle's catalog ids in order."""
        folder = Path(folder)
        meta = json.loads((folder / "two_tower.json").read_text())
        if int(meta["n_items"]) != len(item_ids):
            raise ValueError(f"{folder / 'two_tower.json'}: n_items {meta['n_items']} but the bundle's "
                             f"catalog has {len(item_ids)} items")
        return cls(TwoTowerConfig(**meta["config"]), meta.get("text_dim"), meta.get("vocab"),
                   meta.get("training"), load_file(str(folder / "two_tower.safetensors")), list(item_ids))


@dataclass
class WarmStartReport:
    """What was copied: ``items_copied`` id embeddings of known items, ``items_new`` freshly
    initialised ones, ``vocab_copied`` per vocabulary the values copied, ``tensors_copied``
    whole tensors; ``reason`` why nothing was (a cold start), else None."""

    warm: bool
    reason: str | None = None
    items_copied: int = 0
    items_new: int = 0
    vocab_copied: dict[str, int] = field(default_factory=dict)
    tensors_copied: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def warm_start_problem(previous: PreviousTwoTower, config: TwoTowerConfig, text_dim: int | None) -> str | None:
    """Why ``previous`` cannot start a model of ``config`` over text vectors of width ``text_dim``
    (another architecture), or None when it can."""
    diff = [f"{name} {getattr(previous.config, name)!r} -> {getattr(config, name)!r}"
            for name in ARCHITECTURE_FIELDS if getattr(previous.config, name) != getattr(config, name)]
    if diff:
        return "the two-tower architecture changed (" + ", ".join(diff) + ")"
    if config.use_text and previous.text_dim != text_dim:
        return f"the text vectors' width changed ({previous.text_dim} -> {text_dim})"
    if config.use_item_features and previous.vocab is None:
        return "the earlier model has no feature vocabulary"
    return None


def warm_start_state(previous: PreviousTwoTower, config: TwoTowerConfig, catalog: Catalog,
                     fresh: dict[str, torch.Tensor], vocab: dict[str, Any] | None,
                     text_dim: int | None) -> tuple[dict[str, torch.Tensor] | None, WarmStartReport]:
    """The initial state for a network over ``catalog``: ``fresh`` (the state of the network a
    cold fit starts from, with the new ``vocab``) with ``previous``'s weights copied in where
    they apply (see the module doc). Returns (None, report with the reason) when the
    architecture differs, or when a tensor's shape does not match."""
    reason = warm_start_problem(previous, config, text_dim)
    if reason is not None:
        return None, WarmStartReport(False, reason)
    state = {k: v.clone() for k, v in fresh.items()}
    report = WarmStartReport(True)
    for name, tensor in state.items():
        old = previous.state.get(name)
        if old is None or name in _CATALOG_BUFFERS:
            continue
        if name == _BY_ID:
            rows = {item: i + 1 for i, item in enumerate(previous.item_ids)}
            src = np.array([rows.get(item, 0) for item in catalog.item_ids], dtype=np.int64)
            known = np.flatnonzero(src > 0)
            tensor[torch.from_numpy(known + 1)] = old[torch.from_numpy(src[known])]
            report.items_copied, report.items_new = int(known.size), int(len(catalog) - known.size)
        elif name in _BY_VOCAB:
            key = _BY_VOCAB[name]
            old_rows = {value: i + 1 for i, value in enumerate((previous.vocab or {}).get(key, []))}
            new_values = (vocab or {}).get(key, [])
            pairs = [(i + 1, old_rows[v]) for i, v in enumerate(new_values) if v in old_rows]
            if pairs:
                dst, src_rows = (torch.tensor(x, dtype=torch.int64) for x in zip(*pairs, strict=True))
                tensor[dst] = old[src_rows]
            report.vocab_copied[key] = len(pairs)
        elif name == _BY_BUCKET:
            n = min(old.shape[0], tensor.shape[0])
            tensor[:n] = old[:n]
            report.tensors_copied += 1
        elif old.shape == tensor.shape:
            tensor.copy_(old)
            report.tensors_copied += 1
        else:
            return None, WarmStartReport(False, f"tensor {name} has shape {tuple(old.shape)} in the earlier "
                                                f"model, {tuple(tensor.shape)} now")
    return state, report
