"""The neural re-ranker: a DCN-v2 style network over ranking features, trained listwise.

Training data are the retrieval stage's own candidate lists: one list per training request,
the held-out next item as the positive (when retrieval found it) and every other candidate as
a hard negative. The loss is a softmax over each list; early stopping watches NDCG@10 of the
re-ranked validation lists. Features are standardised with statistics stored in the model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from threadpoolctl import ThreadpoolController
from torch import nn

from tandem.retrieval.early_stopping import Patience, epoch_cap
from tandem.retrieval.progress import Progress
from tandem.retrieval.two_tower import deterministic_training

__all__ = ["RankerConfig", "RankingLists", "DCNRanker", "Ranker", "ndcg_of_lists", "ndcg_per_list"]

log = logging.getLogger(__name__)
_FORMAT = 1


@dataclass(frozen=True)
class RankerConfig:
    hidden: tuple[int, ...] = (128, 64)
    cross_layers: int = 2
    dropout: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-5
    epochs: int = 30
    #: effort that grows with the data: at most this many epochs per 1,000 training lists (rounded
    #: up), never fewer than ``min_epochs`` nor more than ``epochs``; 0 or None: ``epochs`` only
    #: (``retrieval.early_stopping.epoch_cap``)
    epochs_per_1k_lists: float | None = 4.0
    min_epochs: int = 5
    patience: int = 4
    #: the least rise of validation NDCG@10 that resets patience; None: half the standard error
    #: of the validation NDCG (the per-list spread over the square root of the number of lists).
    #: Default 0 (any new best resets it): with None the ranker stopped at epoch 6 on Amazon Beauty
    #: and the final NDCG@10 fell from 0.0692 to 0.0664 (benchmarks/README.md); the two-tower keeps
    #: the noise-aware rule, which gave the same Beauty table as before.
    min_improvement: float | None = 0.0
    batch_lists: int = 128
    max_list: int = 200
    valid_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ValueError(f"ranker.hidden must be positive sizes, got {self.hidden}")
        if self.cross_layers < 0:
            raise ValueError(f"ranker.cross_layers must be >= 0, got {self.cross_layers}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ranker.dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.epochs < 1 or self.patience < 1 or self.batch_lists < 1 or self.min_epochs < 1:
            raise ValueError("ranker.lr, epochs, min_epochs, patience and batch_lists must be positive")
        if self.epochs_per_1k_lists is not None and not self.epochs_per_1k_lists >= 0:
            raise ValueError(f"ranker.epochs_per_1k_lists must be >= 0 (0: no cap), got {self.epochs_per_1k_lists}")
        if self.min_improvement is not None and not self.min_improvement >= 0:
            raise ValueError(f"ranker.min_improvement must be >= 0 or unset, got {self.min_improvement}")
        if not 0.0 < self.valid_fraction < 0.5:
            raise ValueError(f"ranker.valid_fraction must be in (0, 0.5), got {self.valid_fraction}")

    @classmethod
    def from_dict(cls, d: dict) -> RankerConfig:
        d = dict(d)
        if "hidden" in d:
            d["hidden"] = tuple(d["hidden"])
        return cls(**d)


@dataclass
class RankingLists:
    """Candidate lists as a padded batch.

    ``features`` float32 (L, M, F); ``mask`` bool (L, M) true for real candidates;
    ``labels`` float32 (L, M) relevance (1 for the held-out item); lists without any positive
    are kept for evaluation (they count as zero NDCG) but skipped by the loss.
    """

    features: np.ndarray
    mask: np.ndarray
    labels: np.ndarray

    @classmethod
    def from_lists(cls, feats: Sequence[np.ndarray], labels: Sequence[np.ndarray], max_list: int) -> RankingLists:
        n_lists = len(feats)
        n_feat = feats[0].shape[1] if n_lists else 0
        m = min(max_list, max((f.shape[0] for f in feats), default=1))
        x = np.zeros((n_lists, m, n_feat), dtype=np.float32)
        mask = np.zeros((n_lists, m), dtype=bool)
        y = np.zeros((n_lists, m), dtype=np.float32)
        for i, (f, lab) in enumerate(zip(feats, labels, strict=True)):
            k = min(m, f.shape[0])
            x[i, :k] = f[:k]
            mask[i, :k] = True
            y[i, :k] = lab[:k]
        return cls(x, mask, y)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def take(self, rows: np.ndarray) -> RankingLists:
        return RankingLists(self.features[rows], self.mask[rows], self.labels[rows])


def ndcg_of_lists(scores: np.ndarray, lists: RankingLists, k: int = 10) -> float:
    """Mean NDCG@k of lists ordered by ``scores`` float (L, M); masked slots never rank."""
    out = ndcg_per_list(scores, lists, k)
    return float(out.mean()) if out.size else 0.0


def ndcg_per_list(scores: np.ndarray, lists: RankingLists, k: int = 10) -> np.ndarray:
    """float64 (L,): NDCG@k of each list ordered by ``scores`` float (L, M) (labels are the
    gains; a list without a positive scores 0); masked slots never rank."""
    s = np.where(lists.mask, scores, -np.inf)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    rel = np.take_along_axis(lists.labels, order, axis=1)
    rel = np.where(np.take_along_axis(lists.mask, order, axis=1), rel, 0.0)
    disc = 1.0 / np.log2(np.arange(2, order.shape[1] + 2))
    dcg = (rel * disc).sum(1)
    ideal_rel = -np.sort(-lists.labels, axis=1)[:, :k]
    idcg = (ideal_rel * disc[: ideal_rel.shape[1]]).sum(1)
    return np.where(idcg > 0, dcg / np.maximum(idcg, 1e-12), 0.0)


class _Cross(nn.Module):
    """One DCN-v2 cross layer: x_{l+1} = x0 * (W x_l + b) + x_l."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.lin(x) + x


class DCNRanker(nn.Module):
    """DCN-v2 (parallel): cross network and deep MLP over standardised features -> one logit."""

    def __init__(self, n_features: int, config: RankerConfig) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.cross = nn.ModuleList(_Cross(n_features) for _ in range(config.cross_layers))
        layers: list[nn.Module] = []
        d = n_features
        for h in config.hidden:
            layers += [nn.Linear(d, h), nn.ReLU(), nn.Dropout(config.dropout)]
            d = h
        self.deep = nn.Sequential(*layers)
        self.head = nn.Linear(d + n_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x float32 (..., F) -> logits float32 (...)."""
        z = (x - self.mean) / self.std
        c = z
        for layer in self.cross:
            c = layer(z, c)
        return self.head(torch.cat([self.deep(z), c], dim=-1)).squeeze(-1)


class _NumpyDCN:
    """:meth:`DCNRanker.forward` in eval mode, in numpy float32: the request path.

    One request scores a few hundred candidates through a few small layers; torch's per-op
    dispatch is most of that time. The same weights and arithmetic (features standardised,
    cross layers, the ReLU MLP, the head) run here on a (F, m) layout, so each layer is one
    matrix product. ``tests/ranking/test_ranker.py`` holds it equal to the torch model."""

    def __init__(self, model: DCNRanker) -> None:
        def arr(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().numpy(), dtype=np.float32)

        self.mean = arr(model.mean)[:, None]
        self.std = arr(model.std)[:, None]
        self.cross = [(arr(c.lin.weight), arr(c.lin.bias)[:, None]) for c in model.cross]
        linears = [m for m in model.deep if isinstance(m, nn.Linear)]
        if any(not isinstance(m, nn.Linear | nn.ReLU | nn.Dropout) for m in model.deep):
            raise TypeError("_NumpyDCN knows Linear, ReLU and Dropout layers only")
        self.deep = [(arr(m.weight), arr(m.bias)[:, None]) for m in linears]
        head = arr(model.head.weight)[0]
        width = self.deep[-1][0].shape[0] if self.deep else self.mean.shape[0]
        self.head_deep, self.head_cross = head[:width], head[width:]
        self.head_bias = np.float32(model.head.bias.item())

    def __call__(self, features: np.ndarray) -> np.ndarray:
        # one BLAS thread: products this small gain nothing from more, and OpenBLAS's spinning
        # threads starve FAISS's and torch's where a process uses them all (10x slower evaluation)
        with _one_blas_thread():
            z = (features.T - self.mean) / self.std  # (F, m)
            c = z
            for w, b in self.cross:
                c = z * (w @ c + b) + c
            h = z
            for w, b in self.deep:
                h = w @ h
                h += b
                np.maximum(h, 0.0, out=h)
            return (self.head_deep @ h + self.head_cross @ c + self.head_bias).astype(np.float32)


@functools.cache
def _blas_libraries() -> list:
    return list(ThreadpoolController().select(user_api="blas").lib_controllers)


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS on one thread for the body; a ~1 us check where it already is (``tandem serve``)."""
    libs = [(lib, lib.num_threads) for lib in _blas_libraries()]
    for lib, n in libs:
        if n != 1:
            lib.set_num_threads(1)
    try:
        yield
    finally:
        for lib, n in libs:
            if n != 1:
                lib.set_num_threads(n)


class Ranker:
    """Train, score, explain, save and load the re-ranker."""

    def __init__(self, feature_names: Sequence[str], config: RankerConfig = RankerConfig()) -> None:
        self.feature_names = list(feature_names)
        self.config = config
        with torch.random.fork_rng(devices=[]):  # seeded initial weights; the global RNG is left as it was
            torch.manual_seed(config.seed)
            self.model = DCNRanker(len(self.feature_names), config)
        self.model.eval()
        self.history: list[dict] = []
        #: the most epochs the last fit could run (``epochs`` or the data-size cap below it)
        self.max_epochs: int | None = None
        self._quantized: nn.Module | None = None
        self._fast: _NumpyDCN | None = None

    # -- training -------------------------------------------------------------------------
    def fit(self, lists: RankingLists, valid: RankingLists | None = None, init: Ranker | None = None) -> Ranker:
        """Listwise softmax training with early stopping on validation NDCG@10.

        Without ``valid``, a seeded ``valid_fraction`` of ``lists`` is held out. ``init``: an
        earlier ranker to warm-start from (:meth:`warm_start_problem` must be None): its weights
        and feature standardisation are the starting point instead of fresh ones. Reproducible
        under torch's deterministic algorithms (``retrieval.two_tower.deterministic_training``)."""
        if init is not None and (problem := self.warm_start_problem(init)) is not None:
            raise ValueError(f"ranker: cannot warm-start: {problem}")
        with deterministic_training():
            return self._fit(lists, valid, init)

    def warm_start_problem(self, previous: Ranker) -> str | None:
        """Why ``previous``'s weights cannot start this ranker's training (other features or
        another network shape), or None when they can."""
        if previous.feature_names != self.feature_names:
            gone = sorted(set(previous.feature_names) - set(self.feature_names))
            new = sorted(set(self.feature_names) - set(previous.feature_names))
            return (f"the ranking features differ (only before: {', '.join(gone) or '-'}; only now: "
                    f"{', '.join(new) or '-'}; or another order)")
        for name in ("hidden", "cross_layers"):
            if getattr(previous.config, name) != getattr(self.config, name):
                return f"ranker.{name} changed ({getattr(previous.config, name)} -> {getattr(self.config, name)})"
        return None

    def _fit(self, lists: RankingLists, valid: RankingLists | None, init: Ranker | None = None) -> Ranker:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        rng = np.random.default_rng(cfg.seed)
        if valid is None:
            perm = rng.permutation(len(lists))
            n_valid = max(1, int(len(lists) * cfg.valid_fraction))
            valid, lists = lists.take(perm[:n_valid]), lists.take(perm[n_valid:])
        trainable = np.flatnonzero((lists.labels * lists.mask).sum(1) > 0)
        if trainable.size == 0:
            raise ValueError("ranker: no training list contains its positive; retrieval found nothing to learn from")
        if init is not None:
            # the earlier weights with the standardisation they were learned under
            self.model.load_state_dict(init.model.state_dict())
        else:
            flat = lists.features[lists.mask]
            mean = flat.mean(0)
            std = flat.std(0)
            std[std < 1e-6] = 1.0
            self.model.mean.copy_(torch.from_numpy(mean))
            self.model.std.copy_(torch.from_numpy(std))
        opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        x_all = torch.from_numpy(lists.features)
        m_all = torch.from_numpy(lists.mask)
        y_all = torch.from_numpy(lists.labels)
        best_state = None
        patience = Patience(cfg.patience, cfg.min_improvement)
        self.max_epochs = epoch_cap(cfg.epochs, len(lists), cfg.epochs_per_1k_lists, cfg.min_epochs)
        if self.max_epochs < cfg.epochs:
            log.info("ranker: at most %d epochs for %d training lists (epochs_per_1k_lists = %g, min_epochs = %d)",
                     self.max_epochs, len(lists), cfg.epochs_per_1k_lists, cfg.min_epochs)
        bar = Progress("ranker epochs", self.max_epochs, unit="epoch", logger=log, interval=0, eta=False)
        for epoch in range(self.max_epochs):
            t0 = time.perf_counter()
            self.model.train()
            order = rng.permutation(trainable)
            total = 0.0
            for start in range(0, order.size, cfg.batch_lists):
                rows = torch.from_numpy(order[start : start + cfg.batch_lists])
                x, m, y = x_all[rows], m_all[rows], y_all[rows]
                logits = self.model(x).masked_fill(~m, -1e9)
                target = y / y.sum(1, keepdim=True)
                loss = -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * rows.numel()
            per_list = ndcg_per_list(self.score_lists(valid), valid)
            score = float(per_list.mean()) if per_list.size else 0.0
            self.history.append({"epoch": epoch + 1, "loss": total / order.size, "valid_ndcg@10": score,
                                 "seconds": time.perf_counter() - t0})
            noise = float(per_list.std()) / np.sqrt(max(per_list.size, 1))  # standard error of the mean
            if patience.observe(score, noise):
                best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            bar.update(1, loss=total / order.size, **{"valid ndcg@10": score, "best": patience.best})
            if patience.stop:
                break
        bar.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()
        self._quantized = None
        self._fast = None
        return self

    # -- inference ------------------------------------------------------------------------
    def _net(self, quantized: bool) -> nn.Module:
        if not quantized:
            return self.model
        if self._quantized is None:
            self._quantized = torch.ao.quantization.quantize_dynamic(self.model, {nn.Linear}, dtype=torch.qint8)
        return self._quantized

    def score(self, features: np.ndarray, quantized: bool = False) -> np.ndarray:
        """features float32 (m, F) -> scores float32 (m,). The default path is the numpy copy
        of the eval-mode model (made on first use); ``quantized`` runs torch's int8 dynamic
        quantisation of it instead."""
        if features.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        if not quantized:
            if self._fast is None:
                self._fast = _NumpyDCN(self.model)
            return self._fast(np.asarray(features, dtype=np.float32))
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
            return self._net(quantized)(x).numpy()

    @torch.no_grad()
    def score_lists(self, lists: RankingLists, batch: int = 512) -> np.ndarray:
        self.model.eval()
        out = np.empty(lists.mask.shape, dtype=np.float32)
        for s in range(0, len(lists), batch):
            out[s : s + batch] = self.model(torch.from_numpy(lists.features[s : s + batch])).numpy()
        return out

    def explain(self, features: np.ndarray, top: int = 3) -> list[tuple[tuple[str, float], ...]]:
        """Per candidate, the features that pushed its score up the most.

        Contribution = gradient x (standardised feature - 0), i.e. relative to an average
        candidate; returns (name, contribution) pairs with positive contribution, largest first.
        """
        if features.shape[0] == 0:
            return []
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).requires_grad_(True)
        self.model.eval()
        self.model(x).sum().backward()
        with torch.no_grad():
            z = (x - self.model.mean) / self.model.std
            contrib = (x.grad * self.model.std * z).numpy()  # d(score)/dz * z
        out = []
        for row in contrib:
            idx = np.argsort(-row)[:top]
            out.append(tuple((self.feature_names[i], float(row[i])) for i in idx if row[i] > 0))
        return out

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: Path) -> list[Path]:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / "ranker.safetensors"
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(weights))
        meta = folder / "ranker.json"
        meta.write_text(json.dumps({"format": _FORMAT, "config": asdict(self.config),
                                    "feature_names": self.feature_names, "history": self.history}, indent=2))
        return [weights, meta]

    @classmethod
    def load(cls, folder: Path) -> Ranker:
        folder = Path(folder)
        meta = json.loads((folder / "ranker.json").read_text())
        if meta.get("format", 0) > _FORMAT:
            raise ValueError(f"{folder / 'ranker.json'}: ranker format {meta['format']} is newer than {_FORMAT}")
        r = cls(meta["feature_names"], RankerConfig.from_dict(meta["config"]))
        r.model.load_state_dict(load_file(str(folder / "ranker.safetensors")))
        r.model.eval()
        r.history = meta.get("history", [])
        return r
