"""The two-tower model's settings, its training log, and the deterministic-training context."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = ["TwoTowerConfig", "TrainingLog", "deterministic_training"]


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
    ``epochs_per_1k_windows``: effort that grows with the data: at most that many epochs per
    1,000 training windows (rounded up), never fewer than ``min_epochs`` and never more than
    ``epochs`` (``retrieval.early_stopping.epoch_cap``; 0 or None: ``epochs`` only). At 5 the
    5,000-item quick-start shop (2,748 windows) trains at most 14 epochs; Amazon Beauty (22,512
    windows, cap 113) still stops on patience.
    ``train_procs`` processes train together (torch DistributedDataParallel over gloo, see
    ``two_tower_distributed``), each on ``batch_size / train_procs`` windows of every batch, so
    the global batch and the learning rate stay those of one process; 1 trains in this process.
    ``train_restarts``: when a worker of several dies by a signal (a crash in native code, such
    as a C++ abort in gloo, not a Python exception), the whole group starts again from the
    beginning at most that many times, like torchrun's ``--max-restarts``; each restart is
    logged with the worker's stderr and counted in the training log. A Python exception in a
    worker (bad data, a bug) fails at once.
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
    epochs_per_1k_windows: float | None = 5.0
    min_epochs: int = 10
    patience: int = 5
    eval_every: int = 1
    eval_k: int = 10
    min_improvement: float | None = None
    time_budget_s: float | None = None
    seed: int = 0
    train_procs: int = 1
    train_restarts: int = 1

    def __post_init__(self) -> None:
        positive = (
            "dim",
            "layers",
            "heads",
            "max_len",
            "batch_size",
            "epochs",
            "min_epochs",
            "patience",
            "eval_every",
            "eval_k",
            "train_procs",
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
        if self.train_restarts < 0:
            raise ValueError(f"TwoTowerConfig.train_restarts must be >= 0, got {self.train_restarts}")
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
        if self.train_procs > self.batch_size:
            raise ValueError(
                f"TwoTowerConfig.train_procs={self.train_procs} must be <= batch_size={self.batch_size} "
                "(each process trains on batch_size / train_procs windows of every batch)"
            )
        if self.epochs_per_1k_windows is not None and not self.epochs_per_1k_windows >= 0:
            raise ValueError(
                f"TwoTowerConfig.epochs_per_1k_windows must be >= 0 (0: no cap) or None, got {self.epochs_per_1k_windows}"
            )
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise ValueError(f"TwoTowerConfig.time_budget_s must be > 0 or None, got {self.time_budget_s}")


@dataclass
class TrainingLog:
    """What :meth:`TwoTower.fit` did: per validation run ``(epoch, recall, ndcg)``, the best
    epoch, the number of epochs run, the mean training loss per epoch, seconds, why it
    stopped ("patience", "time budget", "epoch cap": the cap the data size sets, see
    ``TwoTowerConfig.epochs_per_1k_windows``, or "epochs"), the most epochs it could run, and
    how often a group of training processes was restarted after a worker crashed
    (``TwoTowerConfig.train_restarts``)."""

    evals: list[tuple[int, float, float]]
    losses: list[float]
    best_epoch: int
    epochs_run: int
    seconds: float
    stopped: str = "epochs"
    max_epochs: int | None = None
    restarts: int = 0

    @classmethod
    def from_dict(cls, t: dict[str, Any], **changes: Any) -> TrainingLog:
        """A log from its ``asdict`` form (JSON: the evaluations come back as lists); fields an
        older writer did not know take their defaults; ``changes`` replace fields."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in t.items() if k in known}
        values["evals"] = [tuple(e) for e in values.get("evals", [])]
        return cls(**{**values, **changes})
