"""The two-tower model: a sequential user tower and a feature-rich item tower (source "two_tower").

Training is next-item prediction at every position of every user's training sequence
(distinct items in first-interaction order, windows of ``max_len``), with a sampled softmax
over the batch's unique targets plus ``n_negatives`` uniform random items, corrected by
logQ (the expected number of times each candidate is sampled), or a full softmax over the
catalog. AdamW, dropout, a fixed seed, and early stopping on validation Recall@10 with the
best state kept. At request time the user vector is computed from ``request.history`` (with
its timestamps and event types), so a new event changes the recommendations at once.

Modules: ``two_tower_config`` (settings, training log, deterministic training),
``two_tower_model`` (the towers), ``two_tower_windows`` (sequence windows),
``two_tower_training`` (the training loop), ``two_tower_distributed`` (the loop in
``train_procs`` processes); this one fits, encodes, answers, saves and loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tandem.retrieval.ann import AnnConfig
from tandem.retrieval.base import Candidates, RetrievalRequest, read_source_meta
from tandem.retrieval.data import Catalog, Interactions
from tandem.retrieval.item_ranks import rank_items
from tandem.retrieval.metrics import ndcg_at_k, recall_at_k, top_k_excluding
from tandem.retrieval.text_tower import _build_index, _load_index
from tandem.retrieval.two_tower_config import TrainingLog, TwoTowerConfig, deterministic_training
from tandem.retrieval.two_tower_distributed import train_distributed
from tandem.retrieval.two_tower_model import ItemFeatures, TwoTowerNet
from tandem.retrieval.two_tower_training import EvalTargets, train
from tandem.retrieval.two_tower_warm import PreviousTwoTower, WarmStartReport
from tandem.retrieval.two_tower_windows import _Batch, _request_arrays, _stack, _window

__all__ = ["TwoTowerConfig", "TwoTower", "EvalBatches", "TrainingLog", "deterministic_training"]

_FORMAT_VERSION = 1
_WEIGHTS = "two_tower.safetensors"
_META = "two_tower.json"
_ITEMS = "two_tower_items.npy"
_INDEX_DIR = "two_tower_index"


#: The user vector's key in a request's memo (see ``RetrievalRequest.memo``).
_MEMO_KEY = "two_tower.user"


@dataclass
class EvalBatches:
    """:meth:`TwoTower.evaluate`'s inputs for one set of targets: per batch, the target rows
    int64 (b,), their user-tower windows and their histories as CSR (offsets int64 (b + 1,),
    items int64) to exclude from the ranking."""

    batches: list[tuple[np.ndarray, _Batch, tuple[np.ndarray, np.ndarray]]]


class TwoTower:
    """Two-tower retrieval (candidate source ``"two_tower"``)."""

    name = "two_tower"

    def __init__(self, config: TwoTowerConfig | None = None) -> None:
        self.config = config or TwoTowerConfig()
        self.net: TwoTowerNet | None = None
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
        #: an earlier model to warm-start from (set before fit; see ``two_tower_warm``), and what
        #: the last fit copied from it
        self.warm_from: PreviousTwoTower | None = None
        self.warm_report: WarmStartReport | None = None

    # -- building ------------------------------------------------------------------------
    def _make_net(
        self, catalog: Catalog, text_vectors: np.ndarray | None, features: ItemFeatures | None
    ) -> TwoTowerNet:
        self.n_items = len(catalog)
        self.features = features
        self.text_dim = None if text_vectors is None else int(text_vectors.shape[1])
        return TwoTowerNet(self.config, self.n_items, features, text_vectors)

    def fit(
        self,
        catalog: Catalog,
        interactions: Interactions,
        valid: EvalTargets | None = None,
        text_vectors: np.ndarray | None = None,
        progress: bool = False,
    ) -> TwoTower:
        """Train on ``interactions``; ``valid`` (validation targets) enables early stopping on
        Recall@``eval_k`` (else all ``epochs`` run); ``text_vectors`` float32 (n_items, t) are
        the frozen text-tower vectors (used when ``config.use_text``). Reproducible: the same
        inputs and ``config.seed`` give the same weights (see :func:`deterministic_training`)."""
        with deterministic_training():
            if self.config.train_procs > 1:
                self.log = train_distributed(self, catalog, interactions, valid, text_vectors, progress)
            else:
                self.log = train(self, catalog, interactions, valid, text_vectors, progress)
        self._finish()
        return self

    @torch.no_grad()
    def evaluate(self, targets: EvalTargets, k: int = 10, batch_size: int = 1024,
                 prepared: EvalBatches | None = None) -> tuple[float, float]:
        """Mean Recall@k and NDCG@k over ``targets`` (e.g. ``Split.valid``): full ranking
        over the catalog with each user's visible history excluded. ``prepared``: the model
        inputs of the same ``targets`` from :meth:`prepare_eval` (training validates every
        epoch on the same users: their windows are made once)."""
        table = self._table()
        final = getattr(self, "_vectors_final", False)  # grown by live catalog changes
        items = torch.from_numpy(self.encode_items() if final else self._item_out(table))
        prepared = prepared or self.prepare_eval(targets, batch_size)
        n = len(targets)
        ranked = np.full((n, k), -1, dtype=np.int64)
        for idx, batch, exclude in prepared.batches:
            scores = torch.from_numpy(self._encode_batch(batch, table)) @ items.T
            ranked[idx] = top_k_excluding(scores.numpy(), exclude, k)
        csr = (targets.indptr, targets.items)
        return float(recall_at_k(ranked, csr, k)), float(ndcg_at_k(ranked, csr, k))

    def prepare_eval(self, targets: EvalTargets, batch_size: int = 1024) -> EvalBatches:
        """The user-tower inputs and history exclusions of every row of ``targets`` for
        :meth:`evaluate`, in batches of similar history lengths (less padding)."""
        n = len(targets)
        reqs = [targets.request(i) for i in range(n)]
        order = np.argsort(np.diff(targets.history_indptr), kind="stable")
        batches = []
        for lo in range(0, n, batch_size):
            idx = order[lo : lo + batch_size]
            batch = self._windows([reqs[i] for i in idx])
            hist = [np.asarray(reqs[i].history, dtype=np.int64) for i in idx]
            counts = np.array([h.size for h in hist], dtype=np.int64)
            exclude = (
                np.concatenate([[0], np.cumsum(counts)]),
                np.concatenate([np.zeros(0, np.int64), *hist]),
            )
            batches.append((idx, batch, exclude))
        return EvalBatches(batches)

    def _finish(self, index: bool = True) -> None:
        """Cache item vectors (and build the ANN index) from the current weights."""
        self._table_cache = self._table()  # frozen weights from here on: serve from the cache
        self._item_vectors = self.encode_items()
        self._index = _build_index(self._item_vectors, self.ann_config) if index else None

    # -- encoding ------------------------------------------------------------------------
    def _require(self) -> TwoTowerNet:
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
        if getattr(self, "_vectors_final", False):  # grown by live catalog changes (retrieval.live_items)
            return self._item_vectors  # type: ignore[return-value]
        return self._item_out(self._table())

    @torch.no_grad()
    def _item_out(self, table: torch.Tensor) -> np.ndarray:
        """float32 (n_items, dim): the item vectors from an item-tower table (:meth:`_table`)."""
        net = self._require()
        return np.ascontiguousarray(net.item_out(table[1:]).numpy(), dtype=np.float32)

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
        out = self._encode_batch(self._windows(requests), table)
        if _table is None and not net.training:
            for r, vec in zip(requests, out, strict=True):
                if r.memo is not None:
                    r.memo[_MEMO_KEY] = vec.copy()
            if len(requests) == 1:
                self._last_user = (requests[0], out[0].copy())
        return out

    def _windows(self, requests: Sequence[RetrievalRequest]) -> _Batch:
        """The requests' left-padded user-tower inputs, as wide as the longest."""
        wins = [_window(*_request_arrays(r, self.n_items), r.now, self.config.max_len) for r in requests]
        return _stack(wins, max([1] + [w[0].shape[0] for w in wins]))

    @torch.no_grad()
    def _encode_batch(self, b: _Batch, table: torch.Tensor) -> np.ndarray:
        """float32 (b, dim): the user vectors of a batch of windows, in eval mode."""
        net = self._require()
        was = net.training
        if was:  # eval()/train() walk every submodule: skip when already in eval mode
            net.eval()
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
        return out

    def score_all(self, requests: Sequence[RetrievalRequest]) -> np.ndarray:
        """float32 (b, n_items): every item's score for each request (history not excluded)."""
        if self._item_vectors is None:
            self._item_vectors = self.encode_items()
        return self.encode_users(requests) @ self._item_vectors.T

    def score_items(self, request: RetrievalRequest, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``items``' inner products with the vector :meth:`retrieve` searches with (the user's,
        else ``request.item``'s) and their ranks among the whole catalog's (:class:`ItemScorer`;
        exact, where the index may approximate them). NaN / 0 for the history and the request's
        item, and for every item when retrieve has nothing to search with."""
        self._require()
        items = np.asarray(items, dtype=np.int64)
        if self._item_vectors is None:
            self._item_vectors = self.encode_items()
        if np.asarray(request.history).size:
            qvec = self.encode_users([request])[0]
        elif request.item is not None and 0 <= request.item < self.n_items:
            qvec = self._item_vectors[request.item]
        else:
            return np.full(items.shape[0], np.nan, dtype=np.float32), np.zeros(items.shape[0], dtype=np.int32)
        return rank_items(self._item_vectors @ qvec, items, request.excluded(self.n_items))

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
            model.log = TrainingLog.from_dict(meta["training"])
        model._item_vectors = np.load(folder / _ITEMS, allow_pickle=False)
        model._table_cache = model._table()
        model._index = _load_index(folder / _INDEX_DIR)
        return model
