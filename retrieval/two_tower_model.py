"""Torch modules of the two-tower model: item features, the item tower and the user tower.

Item rows are 1-based inside the modules (row 0 is padding), so catalog index ``i`` is row
``i + 1``. The user tower reads a left-padded window of the history (the latest item in the
last column), which makes the learned position embeddings "distance from now".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tandem.retrieval.data import EVENT_TYPES, Catalog
from tandem.retrieval.two_tower_config import TwoTowerConfig

__all__ = [
    "GAP_EDGES_S",
    "N_GAP_BUCKETS",
    "N_EVENT_IDS",
    "N_LENGTH_BUCKETS",
    "ItemFeatures",
    "ItemTower",
    "TwoTowerNet",
    "UserTower",
    "gap_buckets",
    "length_buckets",
]

#: Time-gap bucket edges in seconds: a minute, an hour, a day, a week, 30 days, a year.
GAP_EDGES_S = np.array([60, 3600, 86400, 7 * 86400, 30 * 86400, 365 * 86400], dtype=np.int64)
#: Gap ids: 0 padding, 1 unknown (first item, no timestamps, no request time), 2.. the buckets.
N_GAP_BUCKETS = len(GAP_EDGES_S) + 3
#: Event ids: 0 padding, code + 1 for a known event, last id unknown.
N_EVENT_IDS = len(EVENT_TYPES) + 2
EVENT_UNKNOWN = len(EVENT_TYPES) + 1
#: History length ids: 0 unused, then floor(log2(len)) + 1, capped.
N_LENGTH_BUCKETS = 10


def gap_buckets(gaps: np.ndarray, known: np.ndarray) -> np.ndarray:
    """int64 gap ids for gaps in seconds (any int shape); ``known`` bool of the same shape."""
    ids = np.searchsorted(GAP_EDGES_S, np.maximum(gaps, 0), side="right") + 2
    return np.where(known, ids, 1).astype(np.int64)


def length_buckets(lengths: np.ndarray) -> np.ndarray:
    """int64 length ids for history lengths >= 1."""
    lengths = np.maximum(np.asarray(lengths, dtype=np.int64), 1)
    return np.minimum(np.floor(np.log2(lengths)).astype(np.int64) + 1, N_LENGTH_BUCKETS - 1)


@dataclass
class ItemFeatures:
    """Side features of every catalog item as padded int arrays, row 0 = padding.

    ``tags`` int64 (n + 1, max_tags), ``categories`` int64 (n + 1, levels) (each level's
    " > " path prefix as its own id), ``brands`` int64 (n + 1,), ``price_buckets`` int64
    (n + 1,); id 0 means missing everywhere. ``vocab`` is JSON-able and rebuilds the same
    ids from a catalog (:meth:`from_vocab`).
    """

    tags: np.ndarray
    categories: np.ndarray
    brands: np.ndarray
    price_buckets: np.ndarray
    vocab: dict[str, Any]

    @property
    def sizes(self) -> dict[str, int]:
        return {
            "tags": len(self.vocab["tags"]) + 1,
            "categories": len(self.vocab["categories"]) + 1,
            "brands": len(self.vocab["brands"]) + 1,
            "prices": len(self.vocab["price_edges"]) + 2,
        }

    @classmethod
    def build(
        cls, catalog: Catalog, max_tags: int, category_levels: int, n_price_buckets: int
    ) -> ItemFeatures:
        """Fresh vocabularies from the catalog (sorted, so the same catalog gives the same ids)."""
        tags = sorted({t for row in catalog.tags for t in row})
        cats = sorted({p for c in catalog.categories for p in _category_prefixes(c, category_levels)})
        brands = sorted({b for b in catalog.brands if b})
        prices = catalog.prices[np.isfinite(catalog.prices)]
        if prices.size and n_price_buckets > 1:
            qs = np.quantile(np.log1p(np.maximum(prices, 0)), np.linspace(0, 1, n_price_buckets + 1)[1:-1])
            edges = sorted({float(q) for q in qs})
        else:
            edges = []
        vocab = {
            "tags": tags,
            "categories": cats,
            "brands": brands,
            "price_edges": edges,
            "max_tags": max_tags,
            "category_levels": category_levels,
        }
        return cls.from_vocab(catalog, vocab)

    @classmethod
    def from_vocab(cls, catalog: Catalog, vocab: dict[str, Any]) -> ItemFeatures:
        """Map the catalog through a saved vocabulary; unknown values get id 0."""
        n = len(catalog)
        tag_id = {t: i + 1 for i, t in enumerate(vocab["tags"])}
        cat_id = {c: i + 1 for i, c in enumerate(vocab["categories"])}
        brand_id = {b: i + 1 for i, b in enumerate(vocab["brands"])}
        max_tags, levels = int(vocab["max_tags"]), int(vocab["category_levels"])
        tags = np.zeros((n + 1, max(max_tags, 1)), dtype=np.int64)
        cats = np.zeros((n + 1, max(levels, 1)), dtype=np.int64)
        brands = np.zeros(n + 1, dtype=np.int64)
        for i in range(n):
            ids = [tag_id[t] for t in catalog.tags[i] if t in tag_id][:max_tags]
            tags[i + 1, : len(ids)] = ids
            for lv, p in enumerate(_category_prefixes(catalog.categories[i], levels)):
                cats[i + 1, lv] = cat_id.get(p, 0)
            brands[i + 1] = brand_id.get(catalog.brands[i], 0)
        prices = np.zeros(n + 1, dtype=np.int64)
        known = np.isfinite(catalog.prices)
        logp = np.log1p(np.maximum(np.nan_to_num(catalog.prices, nan=0.0), 0))
        prices[1:] = np.where(known, np.searchsorted(np.asarray(vocab["price_edges"]), logp) + 1, 0)
        return cls(tags, cats, brands, prices, vocab)


def _category_prefixes(path: str, levels: int) -> list[str]:
    parts = [p.strip() for p in path.split(">") if p.strip()] if path else []
    return [" > ".join(parts[: j + 1]) for j in range(min(levels, len(parts)))]


def _masked_mean(emb: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
    """Mean of the embeddings of the non-zero ids along the last axis (zeros when none)."""
    mask = (ids > 0).unsqueeze(-1).to(emb.weight.dtype)
    total = (emb(ids) * mask).sum(-2)
    return total / mask.sum(-2).clamp_min(1.0)


class ItemTower(nn.Module):
    """Item vector = id embedding + projected frozen text vector + tag (mean), category
    (mean over levels), brand and price-bucket embeddings; shape (..., dim)."""

    def __init__(
        self,
        n_items: int,
        dim: int,
        features: ItemFeatures | None,
        text_vectors: np.ndarray | None,
    ) -> None:
        super().__init__()
        self.ids = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.ids.weight, std=dim**-0.5)
        with torch.no_grad():
            self.ids.weight[0].zero_()
        self.use_features = features is not None
        if features is not None:
            sizes = features.sizes
            self.tag_emb = nn.Embedding(sizes["tags"], dim, padding_idx=0)
            self.cat_emb = nn.Embedding(sizes["categories"], dim, padding_idx=0)
            self.brand_emb = nn.Embedding(sizes["brands"], dim, padding_idx=0)
            self.price_emb = nn.Embedding(sizes["prices"], dim, padding_idx=0)
            for emb in (self.tag_emb, self.cat_emb, self.brand_emb, self.price_emb):
                nn.init.normal_(emb.weight, std=dim**-0.5)
                with torch.no_grad():
                    emb.weight[0].zero_()
            self.register_buffer("tags", torch.from_numpy(features.tags))
            self.register_buffer("cats", torch.from_numpy(features.categories))
            self.register_buffer("brands", torch.from_numpy(features.brands))
            self.register_buffer("prices", torch.from_numpy(features.price_buckets))
        self.use_text = text_vectors is not None
        if text_vectors is not None:
            padded = np.zeros((n_items + 1, text_vectors.shape[1]), dtype=np.float32)
            padded[1:] = text_vectors
            self.register_buffer("text", torch.from_numpy(padded))
            self.text_proj = nn.Linear(text_vectors.shape[1], dim)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """rows int64 (...,) 1-based item rows (0 = padding) -> float32 (..., dim);
        padding rows give zero vectors."""
        out = self.ids(rows)
        if self.use_features:
            out = out + _masked_mean(self.tag_emb, self.tags[rows])
            out = out + _masked_mean(self.cat_emb, self.cats[rows])
            out = out + self.brand_emb(self.brands[rows]) + self.price_emb(self.prices[rows])
        if self.use_text:
            proj = self.text_proj(self.text[rows])
            out = out + proj * (rows > 0).unsqueeze(-1).to(proj.dtype)
        return out


class _Block(nn.Module):
    """Pre-norm causal self-attention + feed-forward block."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)
        self.p = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0
        )
        x = x + self.drop(self.out(att.transpose(1, 2).reshape(b, length, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class UserTower(nn.Module):
    """Order- and recency-aware encoder over a left-padded history window.

    Inputs per position: the item vector (from the item tower), a learned position
    (distance from the latest item), the event type and the time gap to the previous item.
    ``kind`` "sasrec" runs causal self-attention blocks, "gru" a GRU. User-level features
    (history-length bucket, time since the last event) are added to every output position.
    """

    def __init__(self, kind: str, dim: int, layers: int, heads: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.kind = kind
        self.pos = nn.Embedding(max_len, dim)
        self.events = nn.Embedding(N_EVENT_IDS, dim, padding_idx=0)
        self.gaps = nn.Embedding(N_GAP_BUCKETS, dim, padding_idx=0)
        self.length = nn.Embedding(N_LENGTH_BUCKETS, dim)
        self.recency = nn.Embedding(N_GAP_BUCKETS, dim)
        for emb in (self.pos, self.events, self.gaps, self.length, self.recency):
            nn.init.normal_(emb.weight, std=0.02)
        self.drop = nn.Dropout(dropout)
        if kind == "sasrec":
            self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(layers))
        else:
            self.gru = nn.GRU(
                dim, dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
            )
        self.ln = nn.LayerNorm(dim)

    def forward(
        self,
        item_vecs: torch.Tensor,
        valid: torch.Tensor,
        events: torch.Tensor,
        gaps: torch.Tensor,
        length_ids: torch.Tensor,
        recency_ids: torch.Tensor,
    ) -> torch.Tensor:
        """item_vecs float32 (b, l, d); valid bool (b, l) (False = padding, left-padded);
        events, gaps int64 (b, l); length_ids, recency_ids int64 (b, l) (the user-level
        features as they stand after each position). Returns float32 (b, l, d): the user
        vector after each position."""
        length = item_vecs.shape[1]
        pos = self.pos.weight[-length:]  # last column = the latest item
        x = item_vecs + pos.unsqueeze(0) + self.events(events) + self.gaps(gaps)
        x = self.drop(x) * valid.unsqueeze(-1)
        if self.kind == "sasrec":
            causal = torch.ones(length, length, dtype=torch.bool, device=x.device).tril()
            # causal and not padding; every position may see itself (no empty rows)
            mask = (causal.unsqueeze(0) & valid.unsqueeze(1)) | torch.eye(
                length, dtype=torch.bool, device=x.device
            )
            mask = mask.unsqueeze(1)
            for block in self.blocks:
                x = block(x, mask)
        else:
            x, _ = self.gru(x)
        x = x + self.length(length_ids) + self.recency(recency_ids)
        return self.ln(x)

    def infer_last(
        self,
        item_vecs: torch.Tensor,
        valid: torch.Tensor,
        events: torch.Tensor,
        gaps: torch.Tensor,
        length_ids: torch.Tensor,
        recency_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Eval-mode :meth:`forward` at the last position only: float32 (b, d).

        The request path: the same weights and arithmetic, without module dispatch or dropout
        calls, and with the last block's attention and feed-forward run for the last position
        only (the earlier positions still feed its keys and values). About twice as fast for
        one request; ``tests/retrieval/test_two_tower.py`` holds it equal to :meth:`forward`."""
        if self.training or self.kind != "sasrec":
            return self.forward(item_vecs, valid, events, gaps, length_ids, recency_ids)[:, -1]
        b, length, d = item_vecs.shape
        x = item_vecs + self.pos.weight[-length:].unsqueeze(0) + self.events.weight[events] + self.gaps.weight[gaps]
        full = bool(valid.all())
        if not full:
            x = x * valid.unsqueeze(-1)
            causal = torch.ones(length, length, dtype=torch.bool).tril()
            mask = ((causal.unsqueeze(0) & valid.unsqueeze(1)) | torch.eye(length, dtype=torch.bool)).unsqueeze(1)
        n_blocks = len(self.blocks)
        for i, block in enumerate(self.blocks):
            h = block.heads
            qkv = F.linear(F.layer_norm(x, (d,), block.ln1.weight, block.ln1.bias, block.ln1.eps),
                           block.qkv.weight, block.qkv.bias)
            q, k, v = qkv.view(b, length, 3, h, d // h).permute(2, 0, 3, 1, 4)
            if i == n_blocks - 1:  # only the last position's output is read
                q, x = q[:, :, -1:], x[:, -1:]
                att = F.scaled_dot_product_attention(q, k, v, attn_mask=None if full else mask[:, :, -1:])
                rows = 1
            else:
                att = F.scaled_dot_product_attention(q, k, v, attn_mask=None if full else mask, is_causal=full)
                rows = length
            x = x + F.linear(att.transpose(1, 2).reshape(b, rows, d), block.out.weight, block.out.bias)
            ff1, ff2 = block.ff[0], block.ff[3]
            y = F.layer_norm(x, (d,), block.ln2.weight, block.ln2.bias, block.ln2.eps)
            x = x + F.linear(F.gelu(F.linear(y, ff1.weight, ff1.bias)), ff2.weight, ff2.bias)
        x = x[:, -1] + self.length.weight[length_ids[:, -1]] + self.recency.weight[recency_ids[:, -1]]
        return F.layer_norm(x, (d,), self.ln.weight, self.ln.bias, self.ln.eps)


class TwoTowerNet(nn.Module):
    """Item tower + user tower (+ the learned temperature of cosine similarity)."""

    def __init__(
        self,
        config: TwoTowerConfig,
        n_items: int,
        features: ItemFeatures | None,
        text_vectors: np.ndarray | None,
    ) -> None:
        super().__init__()
        c = config
        self.items = ItemTower(n_items, c.dim, features, text_vectors)
        self.user = UserTower(c.user_encoder, c.dim, c.layers, c.heads, c.max_len, c.dropout)
        self.cosine = c.similarity == "cosine"
        # log of the inverse temperature, used only for cosine similarity
        self.log_scale = nn.Parameter(torch.tensor(math.log(20.0)))

    def item_out(self, vec: torch.Tensor) -> torch.Tensor:
        """Item-tower output (..., d) -> the vector scored against users."""
        return F.normalize(vec, dim=-1) if self.cosine else vec

    def user_out(self, h: torch.Tensor) -> torch.Tensor:
        if self.cosine:
            return F.normalize(h, dim=-1) * self.log_scale.exp().clamp(max=100.0)
        return h
