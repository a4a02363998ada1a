"""The two-tower training loop: batches of similar-length windows, a sampled (logQ-corrected)
or full softmax per step, validation each ``eval_every`` epochs with noise-aware patience
(``tandem.retrieval.early_stopping``), progress on a terminal or in the log, and the best state kept."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Catalog, Interactions
from tandem.retrieval.early_stopping import Patience, epoch_cap, recall_standard_error
from tandem.retrieval.progress import Progress
from tandem.retrieval.two_tower_config import TrainingLog, TwoTowerConfig
from tandem.retrieval.two_tower_model import ItemFeatures, TwoTowerNet
from tandem.retrieval.two_tower_warm import warm_start_state
from tandem.retrieval.two_tower_windows import _Batch, _training_windows

if TYPE_CHECKING:
    from tandem.retrieval.two_tower import EvalBatches, TwoTower

__all__ = ["EvalTargets", "max_epochs", "train"]

log = logging.getLogger(__name__)


class EvalTargets(Protocol):
    """What evaluation needs from targets (``index_builder.splits.Targets`` fits): CSR target
    items ``indptr``/``items``, the history CSR offsets, and one request per row."""

    indptr: np.ndarray
    items: np.ndarray
    history_indptr: np.ndarray

    def __len__(self) -> int: ...
    def request(self, i: int) -> RetrievalRequest: ...


def train(model: TwoTower, catalog: Catalog, interactions: Interactions, valid: EvalTargets | None,
          text_vectors: np.ndarray | None, progress: bool) -> TrainingLog:
    """Fit ``model``'s network (made here) on ``interactions``; see :meth:`TwoTower.fit`.
    Leaves the best validation state loaded, in eval mode, and returns what happened."""
    c = model.config
    rng = np.random.default_rng(c.seed)
    gen = torch.Generator().manual_seed(c.seed)
    net, windows, lengths, log_pop = _prepare(model, catalog, interactions, text_vectors)
    opt = torch.optim.AdamW(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)

    start = time.perf_counter()
    losses: list[float] = []
    track = EpochTracker(model, net, valid)
    stopped = "epochs"
    epoch = 0
    most = max_epochs(c, windows.items.shape[0])
    bar = Progress("two-tower epochs", most, unit="epoch", logger=log, interval=0, enabled=progress,
                   eta=False)
    for epoch in range(1, most + 1):
        net.train()
        total, steps = 0.0, 0
        for rows in _batches(c.batch_size, lengths, rng):
            loss = _step(model, windows, lengths, rows, log_pop, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        losses.append(total / max(steps, 1))
        out_of_time = c.time_budget_s is not None and time.perf_counter() - start > c.time_budget_s
        bar.update(1, **track.end_epoch(epoch, losses[-1], out_of_time))
        if track.patience.stop:
            stopped = "patience"
            break
        if out_of_time:
            stopped = "time budget"
            log.info("two-tower: time budget of %.0fs spent after epoch %d", c.time_budget_s, epoch)
            break
    bar.close(summary=progress)
    stopped = capped(stopped, epoch, most, c)
    if track.best_state is not None:
        net.load_state_dict(track.best_state)
    else:
        track.best_epoch = epoch
    net.eval()
    return TrainingLog(track.evals, losses, track.best_epoch, epoch, time.perf_counter() - start, stopped, most)


def max_epochs(c: TwoTowerConfig, n_windows: int) -> int:
    """The most epochs a fit on ``n_windows`` training windows runs (``c.epochs`` limited by the
    data-size cap ``c.epochs_per_1k_windows``); logs the cap when it is below ``c.epochs``."""
    most = epoch_cap(c.epochs, n_windows, c.epochs_per_1k_windows, c.min_epochs)
    if most < c.epochs:
        log.info("two-tower: at most %d epochs for %d training windows (epochs_per_1k_windows = %g, "
                 "min_epochs = %d)", most, n_windows, c.epochs_per_1k_windows, c.min_epochs)
    return most


def capped(stopped: str, epoch: int, most: int, c: TwoTowerConfig) -> str:
    """``stopped``, or "epoch cap" when the run ended at the data-size cap below ``c.epochs``."""
    if stopped == "epochs" and epoch == most < c.epochs:
        log.info("two-tower: stopped at the data-size cap of %d epochs", most)
        return "epoch cap"
    return stopped


class EpochTracker:
    """What happens after every training epoch, in one process or on rank 0 of several:
    validation every ``eval_every`` epochs (and at the last one a time budget allows), the
    noise-aware patience, and a copy of the best state. ``end_epoch`` returns what the progress
    line shows."""

    def __init__(self, model: TwoTower, net: torch.nn.Module, valid: EvalTargets | None) -> None:
        self.model, self.net = model, net
        self.valid = valid if valid is not None and len(valid) else None
        self.patience = Patience(model.config.patience, model.config.min_improvement)
        self.evals: list[tuple[int, float, float]] = []
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self._prepared: EvalBatches | None = None

    def end_epoch(self, epoch: int, loss: float, out_of_time: bool) -> dict[str, float]:
        c = self.model.config
        shown: dict[str, float] = {"loss": loss}
        if self.valid is not None and (epoch % c.eval_every == 0 or out_of_time):
            if self._prepared is None:  # the same users every time: their windows once
                self._prepared = self.model.prepare_eval(self.valid)
            recall, ndcg = self.model.evaluate(self.valid, c.eval_k, prepared=self._prepared)
            self.evals.append((epoch, recall, ndcg))
            shown[f"valid recall@{c.eval_k}"] = recall
            shown[f"ndcg@{c.eval_k}"] = ndcg
            noise = recall_standard_error(max(self.patience.progress_at, recall), len(self.valid))
            if self.patience.observe(recall, noise):
                self.best_epoch = epoch
                self.best_state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
            shown["best epoch"] = self.best_epoch
        return shown


def _prepare(
    model: TwoTower, catalog: Catalog, interactions: Interactions, text_vectors: np.ndarray | None
) -> tuple[TwoTowerNet, _Batch, np.ndarray, torch.Tensor]:
    """The seeded network (set as ``model.net``), the training windows with their non-padding
    lengths, and the log-popularity of every item row (for the logQ correction): what every
    training process makes alike from the same inputs."""
    net = _network(model, catalog, text_vectors)
    c = model.config
    windows, lengths = _training_windows(interactions, model.n_items, c.max_len)
    if windows.items.shape[0] == 0:
        raise ValueError("TwoTower.fit: no user has 2 or more distinct training items; nothing to learn")
    counts = np.bincount(
        windows.items[:, 1:][windows.items[:, :-1] > 0].ravel(), minlength=model.n_items + 1
    )
    log_pop = torch.from_numpy(np.log(np.maximum(counts / max(counts.sum(), 1), 1e-12))).float()
    return net, windows, lengths, log_pop


def _network(model: TwoTower, catalog: Catalog, text_vectors: np.ndarray | None) -> TwoTowerNet:
    """``model``'s freshly initialised network (torch seeded with ``config.seed``), set as ``model.net``."""
    c = model.config
    model._table_cache = None
    torch.manual_seed(c.seed)
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
    net = model._make_net(catalog, text_vectors if c.use_text else None, features)
    if model.warm_from is not None:
        # the fresh network above first (the same random draws as a cold fit), then the earlier weights
        state, model.warm_report = warm_start_state(
            model.warm_from, c, catalog, net.state_dict(), None if features is None else features.vocab,
            None if text_vectors is None else int(text_vectors.shape[1]))
        if state is not None:
            net.load_state_dict(state)
        else:
            log.warning("two-tower: cold start: %s", model.warm_report.reason)
    model.net = net
    return net


def _batches(b: int, lengths: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of ``b`` similar-length windows (less padding to compute)."""
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
    model: TwoTower, w: _Batch, lengths: np.ndarray, rows: np.ndarray, log_pop: torch.Tensor,
    gen: torch.Generator,
) -> torch.Tensor:
    """One batch's loss: next-item prediction at every position of the windows ``rows``."""
    c, net = model.config, model.net
    assert net is not None
    width = int(lengths[rows].max())
    cut = slice(w.items.shape[1] - width, None)
    items = torch.from_numpy(w.items[rows, cut])
    inp, tgt = items[:, :-1], items[:, 1:]
    pick = (inp > 0) & (tgt > 0)
    targets = tgt[pick]
    if c.loss == "full":
        cand = torch.arange(0, model.n_items + 1)
    else:
        negs = torch.randint(1, model.n_items + 1, (c.n_negatives,), generator=gen)
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
        expected = n_pos * log_pop[cand_rows].exp() + c.n_negatives / model.n_items
        logits = logits - torch.log(expected)
    return F.cross_entropy(logits, cand_inv[: targets.shape[0]])
