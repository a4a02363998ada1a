"""The two-tower model: a sequential user tower and a feature-rich item tower (source "two_tower").

Training is next-item prediction at every position of every user's training sequence
(distinct items in first-interaction order, windows of ``max_len``), with a sampled softmax
over the batch's unique targets plus ``n_negatives`` uniform random items, corrected by
logQ (the expected number of times each candidate is sampled), or a full softmax over the
catalog. AdamW, dropout, a fixed seed, and early stopping on validation Recall@10 with the
best state kept. At request time the user vector is computed from ``request.history`` (with
its timestamps and event types), so a new event changes the recommendations at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from retrieval.ann import AnnConfig
from retrieval.base import Candidates, RetrievalRequest, read_source_meta
from retrieval.data import Catalog, Interactions
from retrieval.early_stopping import Patience, recall_standard_error
from retrieval.metrics import ndcg_at_k, recall_at_k, top_k_excluding
from retrieval.progress import Progress
from retrieval.text_tower import _build_index, _load_index
from retrieval.two_tower_model import (
    EVENT_UNKNOWN,
    ItemFeatures,
    ItemTower,
    UserTower,
    gap_buckets,
    length_buckets,
)

__all__ = ["TwoTowerConfig", "TwoTower", "TrainingLog", "deterministic_training"]

_FORMAT_VERSION = 1
_WEIGHTS = "two_tower.safetensors"
_META = "two_tower.json"
_ITEMS = "two_tower_items.npy"
_INDEX_DIR = "two_tower_index"

log = logging.getLogger(__name__)


@contextlib.contextmanager
def deterministic_training() -> Iterator[None]:
    """torch's deterministic algorithms for the body, and a forked CPU RNG (the fit seeds it),
    the caller's setting and RNG state restored after.

    With more than one intra-op thread some CPU kernels' reductions vary from run to run, so a
    seeded fit gave other weights every time: two ``tandem build`` runs of the same demo shop
    had two-tower losses apart in the 7th digit and recommend rankers at final R@10 0.4164 and
    0.4125. Training the demo shop's two-tower takes the same time either way (2.2-2.3 s).

    Deterministic mode also fills every new tensor's memory with NaN by default (a debugging aid
    against reads of uninitialised memory, which no kernel we use does); on the 5k-item shop that
    filling was 13% of a two-tower training step's CPU time, so it is off in the body."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill  # type: ignore[attr-defined]


@dataclass(frozen=True)
class TwoTowerConfig:
    """Model and training settings (defaults follow the SASRec recipe; nothing dataset-specific).

    ``user_encoder`` "sasrec" (causal self-attention) or "gru"; ``loss`` "sampled" (in-batch
    + ``n_negatives`` uniform negatives, logQ-corrected) or "full" (softmax over the catalog);
    ``similarity`` "dot" or "cosine" (unit vectors, learned temperature). ``eval_every`` epochs
    between validation runs; ``patience`` validation runs without progress before stopping, where
    progress is a validation recall above the last progress by more than ``min_improvement``
    (None: half the standard error of the recall estimate, sqrt(r (1 - r) / n) over the n
    validation users, so a small shop's noisy plateau ends training as soon as a large one's;
    0: any new best counts); the weights of the best validation run are kept either way.
    ``time_budget_s`` stops training after that many seconds (None: no limit).
    """

    dim: int = 64
    layers: int = 2
    heads: int = 1
    max_len: int = 50
    dropout: float = 0.5
    user_encoder: str = "sasrec"
    similarity: str = "dot"
    use_text: bool = True
    use_item_features: bool = True
    max_tags: int = 16
    category_levels: int = 3
    price_buckets: int = 10
    loss: str = "sampled"
    n_negatives: int = 2048
    logq_correction: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    epochs: int = 200
    patience: int = 5
    eval_every: int = 1
    eval_k: int = 10
    min_improvement: float | None = None
    time_budget_s: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        positive = (
            "dim",
            "layers",
            "heads",
            "max_len",
            "batch_size",
            "epochs",
            "patience",
            "eval_every",
            "eval_k",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TwoTowerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"TwoTowerConfig.dim={self.dim} must be divisible by heads={self.heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"TwoTowerConfig.dropout must be in [0, 1), got {self.dropout}")
        choices = {
            "user_encoder": ("sasrec", "gru"),
            "similarity": ("dot", "cosine"),
            "loss": ("sampled", "full"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TwoTowerConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.n_negatives < 0:
            raise ValueError(f"TwoTowerConfig.n_negatives must be >= 0, got {self.n_negatives}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(
                f"TwoTowerConfig: lr must be > 0 and weight_decay >= 0, got {self.lr}, {self.weight_decay}"
            )
        if self.max_tags < 0 or self.category_levels < 0 or self.price_buckets < 0:
            raise ValueError("TwoTowerConfig.max_tags, category_levels and price_buckets must be >= 0")
        if self.min_improvement is not None and not self.min_improvement >= 0:
            raise ValueError(f"TwoTowerConfig.min_improvement must be >= 0 or None, got {self.min_improvement}")
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"TwoTowerConfig.time_budget_s must be > 0 or None, got {self.time_budget_s}")


@dataclass
class TrainingLog:
    """What :meth:`TwoTower.fit` did: per validation run ``(epoch, recall, ndcg)``, the best
    epoch, the number of epochs run, the mean training loss per epoch, seconds, and why it
    stopped ("patience", "time budget" or "epochs")."""

    evals: list[tuple[int, float, float]]
    losses: list[float]
    best_epoch: int
    epochs_run: int
    seconds: float
    stopped: str = "epochs"


class _EvalTargets(Protocol):
    """What evaluation needs from targets (``index_builder.splits.Targets`` fits): CSR target
    items ``indptr``/``items``, the history CSR offsets, and one request per row."""

    indptr: np.ndarray
    items: np.ndarray
    history_indptr: np.ndarray

    def __len__(self) -> int: ...
    def request(self, i: int) -> RetrievalRequest: ...


class _Net(nn.Module):
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


@dataclass
class _Batch:
    """Left-padded windows; rows are 1-based item rows (0 = padding), all int64 (b, l)."""

    items: np.ndarray
    events: np.ndarray
    gaps: np.ndarray
    lengths: np.ndarray
    recency: np.ndarray


#: The user vector's key in a request's memo (see ``RetrievalRequest.memo``).
_MEMO_KEY = "two_tower.user"


def _distinct(items: np.ndarray, ts: np.ndarray, events: np.ndarray) -> tuple[np.ndarray, ...]:
    """One history -> its distinct items in first-interaction order, with the first timestamp
    and the strongest event code per item."""
    uniq, first, inv = np.unique(items, return_index=True, return_inverse=True)
    strongest = np.full(uniq.shape[0], -1, dtype=np.int64)
    np.maximum.at(strongest, inv, events.astype(np.int64))
    order = np.argsort(first, kind="stable")
    return uniq[order], ts[first[order]], strongest[order]


def _request_arrays(req: RetrievalRequest, n_items: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    hist = np.asarray(req.history, dtype=np.int64)
    h = hist.shape[0]
    ts = np.asarray(req.history_ts, dtype=np.int64)
    has_ts = ts.shape == (h,) and h > 0
    if not has_ts:
        ts = np.zeros(h, dtype=np.int64)
    ev = np.asarray(req.history_events, dtype=np.int64)
    if ev.shape != (h,):
        ev = np.full(h, -1, dtype=np.int64)
    keep = (hist >= 0) & (hist < n_items)
    items, ts, ev = _distinct(hist[keep], ts[keep], ev[keep])
    return items, ts, ev, has_ts


def _window(
    items: np.ndarray, ts: np.ndarray, ev: np.ndarray, has_ts: bool, now: int | None, max_len: int
) -> tuple[np.ndarray, ...]:
    """Right-aligned model inputs of one distinct history (the last ``max_len`` items)."""
    n = items.shape[0]
    lo = max(0, n - max_len)
    it, t, e = items[lo:] + 1, ts[lo:], ev[lo:]
    prev_known = np.arange(lo, n) > 0
    prev_ts = np.concatenate([ts[lo - 1 : lo] if lo > 0 else np.zeros(1, dtype=np.int64), t[:-1]])
    gaps = gap_buckets(t - prev_ts, prev_known & has_ts)
    events = np.where(e >= 0, e + 1, EVENT_UNKNOWN)
    length = length_buckets(np.arange(lo + 1, n + 1))
    recency = np.ones(it.shape[0], dtype=np.int64)
    if now is not None and has_ts and n:
        recency[-1] = gap_buckets(np.array([now - ts[-1]]), np.array([True]))[0]
    return it, events, gaps, length, recency


def _stack(windows: Sequence[tuple[np.ndarray, ...]], width: int) -> _Batch:
    b = len(windows)
    arrays = [np.zeros((b, width), dtype=np.int64) for _ in range(5)]
    for r, win in enumerate(windows):
        n = win[0].shape[0]
        if n:
            for a, w in zip(arrays, win, strict=True):
                a[r, width - n :] = w
    return _Batch(*arrays)


def _training_windows(interactions: Interactions, n_items: int, max_len: int) -> tuple[_Batch, np.ndarray]:
    """Every user's distinct training sequence cut into windows of ``max_len + 1`` (the
    window's items are the inputs of its next positions). Returns the stacked windows
    (width max_len + 1) and per-window non-padding lengths."""
    indptr, rows = interactions.user_sequences()
    items_all, ts_all, ev_all = interactions.items, interactions.ts, interactions.events
    windows = []
    width = max_len + 1
    for u in range(interactions.n_users):
        r = rows[indptr[u] : indptr[u + 1]]
        if r.shape[0] < 2:
            continue
        items, ts, ev = _distinct(items_all[r].astype(np.int64), ts_all[r], ev_all[r])
        n = items.shape[0]
        if n < 2:
            continue
        it = items + 1
        prev_ts = np.concatenate([ts[:1], ts[:-1]])
        known = np.arange(n) > 0
        gaps = gap_buckets(ts - prev_ts, known)
        events = np.where(ev >= 0, ev + 1, EVENT_UNKNOWN)
        length = length_buckets(np.arange(1, n + 1))
        # the time from an item to the next event is what "now - last event" is at serving
        recency = np.ones(n, dtype=np.int64)
        recency[:-1] = gap_buckets(ts[1:] - ts[:-1], np.ones(n - 1, dtype=bool))
        for end in range(n, 1, -max_len):
            lo = max(0, end - width)
            windows.append(tuple(a[lo:end] for a in (it, events, gaps, length, recency)))
    batch = _stack(windows, width)
    return batch, (batch.items > 0).sum(1)


class TwoTower:
    """Two-tower retrieval (candidate source ``"two_tower"``)."""

    name = "two_tower"

    def __init__(self, config: TwoTowerConfig | None = None) -> None:
        self.config = config or TwoTowerConfig()
        self.net: _Net | None = None
        self.features: ItemFeatures | None = None
        self.n_items = 0
        self.text_dim: int | None = None
        self.log: TrainingLog | None = None
        self._item_vectors: np.ndarray | None = None
        self._index: Any = None
        #: item-tower inputs of every item (eval mode), computed once the weights are final
        self._table_cache: torch.Tensor | None = None
        self._last_user: tuple[RetrievalRequest, np.ndarray] | None = None
        #: how the ANN index over item vectors is chosen and tuned (set before fit)
        self.ann_config = AnnConfig()

    # -- building ------------------------------------------------------------------------
    def _make_net(
        self, catalog: Catalog, text_vectors: np.ndarray | None, features: ItemFeatures | None
    ) -> _Net:
        self.n_items = len(catalog)
        self.features = features
        self.text_dim = None if text_vectors is None else int(text_vectors.shape[1])
        return _Net(self.config, self.n_items, features, text_vectors)

    def fit(
        self,
        catalog: Catalog,
        interactions: Interactions,
        valid: _EvalTargets | None = None,
        text_vectors: np.ndarray | None = None,
        progress: bool = False,
    ) -> TwoTower:
        """Train on ``interactions``; ``valid`` (validation targets) enables early stopping on
        Recall@``eval_k`` (else all ``epochs`` run); ``text_vectors`` float32 (n_items, t) are
        the frozen text-tower vectors (used when ``config.use_text``). Reproducible: the same
        inputs and ``config.seed`` give the same weights (see :func:`deterministic_training`)."""
        with deterministic_training():
            return self._fit(catalog, interactions, valid, text_vectors, progress)

    def _fit(self, catalog: Catalog, interactions: Interactions, valid: _EvalTargets | None,
             text_vectors: np.ndarray | None, progress: bool) -> TwoTower:
        c = self.config
        self._table_cache = None
        torch.manual_seed(c.seed)
        rng = np.random.default_rng(c.seed)
        gen = torch.Generator().manual_seed(c.seed)
        if text_vectors is not None:
            text_vectors = np.asarray(text_vectors, dtype=np.float32)
            if text_vectors.ndim != 2 or text_vectors.shape[0] != len(catalog):
                raise ValueError(
                    f"TwoTower.fit: text_vectors have shape {text_vectors.shape}, expected "
                    f"({len(catalog)}, d) - one row per catalog item (TextEncoder output)"
                )
        features = (
            ItemFeatures.build(catalog, c.max_tags, c.category_levels, c.price_buckets)
            if c.use_item_features
            else None
        )
        net = self._make_net(catalog, text_vectors if c.use_text else None, features)
        self.net = net
        windows, lengths = _training_windows(interactions, self.n_items, c.max_len)
        if windows.items.shape[0] == 0:
            raise ValueError("TwoTower.fit: no user has 2 or more distinct training items; nothing to learn")
        counts = np.bincount(
            windows.items[:, 1:][windows.items[:, :-1] > 0].ravel(), minlength=self.n_items + 1
        )
        log_pop = torch.from_numpy(np.log(np.maximum(counts / max(counts.sum(), 1), 1e-12))).float()
        opt = torch.optim.AdamW(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)

        start = time.perf_counter()
        evals: list[tuple[int, float, float]] = []
        losses: list[float] = []
        best_epoch, best_state = 0, None
        patience = Patience(c.patience, c.min_improvement)
        stopped = "epochs"
        epoch = 0
        bar = Progress("two-tower epochs", c.epochs, unit="epoch", logger=log, interval=0, enabled=progress)
        for epoch in range(1, c.epochs + 1):
            net.train()
            total, steps = 0.0, 0
            for rows in self._batches(lengths, rng):
                loss = self._step(windows, lengths, rows, log_pop, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach())
                steps += 1
            losses.append(total / max(steps, 1))
            out_of_time = c.time_budget_s is not None and time.perf_counter() - start > c.time_budget_s
            shown: dict[str, float] = {"loss": losses[-1]}
            if valid is not None and len(valid) and (epoch % c.eval_every == 0 or out_of_time):
                recall, ndcg = self.evaluate(valid, c.eval_k)
                evals.append((epoch, recall, ndcg))
                shown[f"valid recall@{c.eval_k}"] = recall
                shown[f"ndcg@{c.eval_k}"] = ndcg
                if patience.observe(recall, recall_standard_error(max(patience.progress_at, recall), len(valid))):
                    best_epoch = epoch
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                shown["best epoch"] = best_epoch
            bar.update(1, **shown)
            if patience.stop:
                stopped = "patience"
                break
            if out_of_time:
                stopped = "time budget"
                log.info("two-tower: time budget of %.0fs spent after epoch %d", c.time_budget_s, epoch)
                break
        bar.close(summary=progress)
        if best_state is not None:
            net.load_state_dict(best_state)
        else:
            best_epoch = epoch
        net.eval()
        self.log = TrainingLog(evals, losses, best_epoch, epoch, time.perf_counter() - start, stopped)
        self._finish()
        return self

    def _batches(self, lengths: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Shuffled batches of similar-length windows (less padding to compute)."""
        b = self.config.batch_size
        perm = rng.permutation(lengths.shape[0])
        chunk = b * 32
        batches = []
        for lo in range(0, perm.shape[0], chunk):
            part = perm[lo : lo + chunk]
            part = part[np.argsort(lengths[part], kind="stable")]
            batches += [part[i : i + b] for i in range(0, part.shape[0], b)]
        order = rng.permutation(len(batches))
        return [batches[i] for i in order]

    def _step(
        self, w: _Batch, lengths: np.ndarray, rows: np.ndarray, log_pop: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        c, net = self.config, self.net
        assert net is not None
        width = int(lengths[rows].max())
        cut = slice(w.items.shape[1] - width, None)
        items = torch.from_numpy(w.items[rows, cut])
        inp, tgt = items[:, :-1], items[:, 1:]
        pick = (inp > 0) & (tgt > 0)
        targets = tgt[pick]
        if c.loss == "full":
            cand = torch.arange(0, self.n_items + 1)
        else:
            negs = torch.randint(1, self.n_items + 1, (c.n_negatives,), generator=gen)
            cand = torch.cat([targets, negs])
        # one item-tower pass over every row the step touches
        needed, inverse = torch.unique(torch.cat([inp.reshape(-1), cand]), return_inverse=True)
        table = net.items(needed)
        vec = table[inverse[: inp.numel()]].view(*inp.shape, -1)
        h = net.user(
            vec,
            inp > 0,
            torch.from_numpy(w.events[rows, cut][:, :-1]),
            torch.from_numpy(w.gaps[rows, cut][:, :-1]),
            torch.from_numpy(w.lengths[rows, cut][:, :-1]),
            # the request time is unknown half of the time at serving: teach both cases
            torch.where(
                torch.rand(inp.shape, generator=gen) < 0.5, 1, torch.from_numpy(w.recency[rows, cut][:, :-1])
            ),
        )
        users = net.user_out(h[pick])
        if c.loss == "full":
            logits = users @ net.item_out(table[inverse[inp.numel() + 1 :]]).T
            return F.cross_entropy(logits, targets - 1)
        # sampled softmax over the unique candidates (in-batch targets + uniform negatives)
        cand_rows, cand_inv = torch.unique(cand, return_inverse=True)
        pos = torch.searchsorted(needed, cand_rows)
        logits = users @ net.item_out(table[pos]).T
        if c.logq_correction:
            n_pos = float(targets.shape[0])
            expected = n_pos * log_pop[cand_rows].exp() + c.n_negatives / self.n_items
            logits = logits - torch.log(expected)
        return F.cross_entropy(logits, cand_inv[: targets.shape[0]])

    @torch.no_grad()
    def evaluate(self, targets: _EvalTargets, k: int = 10, batch_size: int = 1024) -> tuple[float, float]:
        """Mean Recall@k and NDCG@k over ``targets`` (e.g. ``Split.valid``): full ranking
        over the catalog with each user's visible history excluded."""
        table = self._table()
        items = torch.from_numpy(self.encode_items())
        n = len(targets)
        reqs = [targets.request(i) for i in range(n)]
        # similar lengths together: less padding in the user tower
        order = np.argsort(np.diff(targets.history_indptr), kind="stable")
        ranked = np.full((n, k), -1, dtype=np.int64)
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            scores = torch.from_numpy(self.encode_users([reqs[i] for i in idx], _table=table)) @ items.T
            hist = [np.asarray(reqs[i].history, dtype=np.int64) for i in idx]
            counts = np.array([h.size for h in hist], dtype=np.int64)
            exclude = (
                np.concatenate([[0], np.cumsum(counts)]),
                np.concatenate([np.zeros(0, np.int64), *hist]),
            )
            ranked[idx] = top_k_excluding(scores.numpy(), exclude, k)
        csr = (targets.indptr, targets.items)
        return float(recall_at_k(ranked, csr, k)), float(ndcg_at_k(ranked, csr, k))

    def _finish(self, index: bool = True) -> None:
        """Cache item vectors (and build the ANN index) from the current weights."""
        self._table_cache = self._table()  # frozen weights from here on: serve from the cache
        self._item_vectors = self.encode_items()
        self._index = _build_index(self._item_vectors, self.ann_config) if index else None

    # -- encoding ------------------------------------------------------------------------
    def _require(self) -> _Net:
        if self.net is None:
            raise RuntimeError("TwoTower is not fitted; call fit() or TwoTower.load() first")
        return self.net

    @torch.no_grad()
    def _table(self) -> torch.Tensor:
        """Eval-mode item-tower output for rows 0..n (row 0 = padding), float32 (n + 1, d)."""
        net = self._require()
        was = net.training
        net.eval()
        out = net.items(torch.arange(0, self.n_items + 1))
        net.train(was)
        return out

    @torch.no_grad()
    def encode_items(self) -> np.ndarray:
        """float32 (n_items, dim): every catalog item's vector, row = catalog index."""
        net = self._require()
        return np.ascontiguousarray(net.item_out(self._table()[1:]).numpy(), dtype=np.float32)

    def encode_users(
        self, requests: Sequence[RetrievalRequest], _table: torch.Tensor | None = None
    ) -> np.ndarray:
        """float32 (b, dim): the user vector of each request, computed from its history
        (timestamps, event types and ``now`` when present). An empty history gives the
        vector of an empty window (a popularity-like prior). Requests carrying a memo get the
        vector kept there, or keep the one computed here."""
        self._require()
        if _table is None and len(requests) == 1:  # the request path: no torch at all on a hit
            memo = requests[0].memo
            if memo is not None and _MEMO_KEY in memo:
                return memo[_MEMO_KEY][None, :].copy()
            last = self._last_user  # (request, vector): the pipeline asks twice per request
            if last is not None and last[0] is requests[0]:
                return last[1][None, :].copy()
        if _table is None and requests and all(r.memo is not None and _MEMO_KEY in r.memo for r in requests):
            return np.stack([r.memo[_MEMO_KEY] for r in requests])  # type: ignore[index]
        return self._encode_users(requests, _table)

    @torch.no_grad()
    def _encode_users(self, requests: Sequence[RetrievalRequest], _table: torch.Tensor | None) -> np.ndarray:
        net = self._require()
        if _table is not None:
            table = _table
        elif self._table_cache is not None:
            table = self._table_cache
        else:
            table = self._table()
        was = net.training
        if was:  # eval()/train() walk every submodule: skip when already in eval mode
            net.eval()
        wins = [_window(*_request_arrays(r, self.n_items), r.now, self.config.max_len) for r in requests]
        width = max([1] + [w[0].shape[0] for w in wins])
        b = _stack(wins, width)
        items = torch.from_numpy(b.items)
        h = net.user.infer_last(
            table[items],
            items > 0,
            torch.from_numpy(b.events),
            torch.from_numpy(b.gaps),
            torch.from_numpy(np.maximum(b.lengths, 1)),
            torch.from_numpy(np.maximum(b.recency, 1)),
        )
        out = net.user_out(h).numpy().astype(np.float32)
        if was:
            net.train(was)
        if _table is None and not was:
            for r, vec in zip(requests, out, strict=True):
                if r.memo is not None:
                    r.memo[_MEMO_KEY] = vec.copy()
            if len(requests) == 1:
                self._last_user = (requests[0], out[0].copy())
        return out

    def score_all(self, requests: Sequence[RetrievalRequest]) -> np.ndarray:
        """float32 (b, n_items): every item's score for each request (history not excluded)."""
        if self._item_vectors is None:
            self._item_vectors = self.encode_items()
        return self.encode_users(requests) @ self._item_vectors.T

    def index_info(self) -> dict:
        """The ANN index's kind, factory string, parameters and measured recall."""
        return {} if self._index is None else self._index.info()

    # -- answering -----------------------------------------------------------------------
    def retrieve(self, request: RetrievalRequest, k: int) -> Candidates:
        """Top ``k`` items for the request's history (history excluded) from the ANN index;
        with ``request.item`` and no history, the items nearest that item's vector. Empty
        for a search query with no history or an empty request."""
        self._require()
        if k <= 0:
            return Candidates.empty(self.name)
        if self._index is None:
            self._finish()
        hist = np.asarray(request.history, dtype=np.int64)
        if hist.size:
            qvec = self.encode_users([request])[0]
        elif request.item is not None and 0 <= request.item < self.n_items:
            qvec = self._item_vectors[request.item]  # type: ignore[index]
        else:
            return Candidates.empty(self.name)
        exclude = request.excluded(self.n_items)  # the history and request.item
        want = min(self.n_items, k + exclude.size)
        scores, ids = self._index.search(qvec[None, :].astype(np.float32), want)
        keep = (ids[0] >= 0) & ~exclude.contains(ids[0])
        return Candidates(
            ids[0][keep][:k].astype(np.int64), scores[0][keep][:k].astype(np.float32), self.name
        )

    # -- persistence ---------------------------------------------------------------------
    def save(self, folder: Path) -> list[Path]:
        """Write weights (safetensors), item vectors (.npy), the ANN index and a JSON file
        with the config, the feature vocabularies and sizes."""
        net = self._require()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if self._index is None:
            self._finish()
        weights = folder / _WEIGHTS
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
        items = folder / _ITEMS
        np.save(items, self._item_vectors, allow_pickle=False)
        index_files = list(self._index.save(folder / _INDEX_DIR))
        meta = {
            "format_version": _FORMAT_VERSION,
            "name": self.name,
            "n_items": self.n_items,
            "dim": self.config.dim,
            "text_dim": self.text_dim,
            "config": asdict(self.config),
            "vocab": None if self.features is None else self.features.vocab,
            "training": None if self.log is None else asdict(self.log),
        }
        meta_path = folder / _META
        meta_path.write_text(json.dumps(meta, indent=2))
        return [weights, items, *index_files, meta_path]

    @classmethod
    def load(cls, folder: Path, catalog: Catalog) -> TwoTower:
        """Read what :meth:`save` wrote; ``catalog`` must be the one the model was fitted on."""
        folder = Path(folder)
        meta_path = folder / _META
        meta = read_source_meta(meta_path, "TwoTower", _FORMAT_VERSION, catalog)
        model = cls(TwoTowerConfig(**meta["config"]))
        features = None if meta["vocab"] is None else ItemFeatures.from_vocab(catalog, meta["vocab"])
        text = (
            None if meta["text_dim"] is None else np.zeros((len(catalog), meta["text_dim"]), dtype=np.float32)
        )
        model.net = model._make_net(catalog, text, features)
        model.net.load_state_dict(load_file(str(folder / _WEIGHTS)))
        model.net.eval()
        if meta.get("training"):
            t = meta["training"]
            model.log = TrainingLog(
                [tuple(e) for e in t["evals"]], t["losses"], t["best_epoch"], t["epochs_run"], t["seconds"],
                t.get("stopped", "epochs"),
            )
        model._item_vectors = np.load(folder / _ITEMS, allow_pickle=False)
        model._table_cache = model._table()
        model._index = _load_index(folder / _INDEX_DIR)
        return model
