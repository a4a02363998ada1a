"""Two-tower training in ``train_procs`` processes: torch DistributedDataParallel over gloo (CPU).

The parent spawns N workers on a free loopback port. Every worker makes the same network (same
seed), the same windows and the same shuffled list of batches of ``batch_size`` windows per
epoch; worker r trains on rows r, r + N, ... of each batch, so one step of N workers sees the
windows one step of a single process sees, with the gradients averaged (the global batch and the
learning rate are unchanged). Each worker draws its own sampled-softmax negatives and dropout
(rank-dependent seeds; rank 0 keeps the single process's streams), with the logQ correction of
its own share of the batch. Rank 0 validates, keeps the best state and decides when to stop
(patience, time budget); the decision is broadcast so every rank stops after the same epoch.
Rank 0 writes the best weights (safetensors) and the training log (JSON) to a temporary folder
the parent reads. The parent hosts the rendezvous store (a TCPStore listening on a port the
system picks, so no other process can take it between choosing and binding, and it outlives every
worker); the ranks meet in it once more after their last collective before leaving the group, so
no rank tears its connections down while another still uses them. A worker that fails makes the
parent raise (the others are terminated), except a worker killed by a signal (a native crash): then
the whole group starts again, at most ``train_restarts`` times, like torchrun's ``--max-restarts``.
The process group's timeout bounds any wait on a rank that hangs. A worker killed by a signal
(a C++ ``std::terminate`` is SIGABRT) first prints every thread's Python stack; ranks above 0
write their stderr to a file the parent copies to its own stderr, and the parent's error quotes
the end of the failing rank's file.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from tandem.retrieval.data import Catalog, Interactions
from tandem.retrieval.early_stopping import epoch_cap
from tandem.retrieval.progress import Progress
from tandem.retrieval.two_tower_config import TrainingLog, TwoTowerConfig, deterministic_training
from tandem.retrieval.two_tower_training import (
    EpochTracker,
    EvalTargets,
    _batches,
    _network,
    _prepare,
    _step,
    capped,
    max_epochs,
)
from tandem.retrieval.two_tower_windows import _Batch

if TYPE_CHECKING:
    from tandem.retrieval.two_tower import TwoTower

__all__ = ["train_distributed"]

log = logging.getLogger(__name__)

#: Seconds any collective waits for a slow rank (rank 0 validates while the others wait).
PROCESS_GROUP_TIMEOUT_S = 1800.0
_WEIGHTS = "best.safetensors"
_LOG = "log.json"
_STOP = {0: None, 1: "patience", 2: "time budget"}


def train_distributed(
    model: TwoTower, catalog: Catalog, interactions: Interactions, valid: EvalTargets | None,
    text_vectors: np.ndarray | None, progress: bool, _worker: Callable[..., None] | None = None,
) -> TrainingLog:
    """Fit ``model``'s network in ``model.config.train_procs`` processes (see the module doc);
    like :func:`two_tower_training.train`, leaves the best state loaded in eval mode. Raises
    RuntimeError naming the failing worker when one fails. ``_worker`` replaces the worker
    function (tests; it is called with the arguments of :func:`_worker_main`)."""
    c = model.config
    n = c.train_procs
    net = _network(model, catalog, text_vectors)  # checks the inputs here, before any spawn
    threads = max(1, torch.get_num_threads() // n)
    log.info("two-tower: %d training processes (gloo), each with %d torch thread(s) and ~%d windows of "
             "every batch of %d", n, threads, c.batch_size // n, c.batch_size)
    restarts = 0
    while True:
        try:
            t = _run_group(model, catalog, interactions, valid, text_vectors, progress, _worker, net, threads,
                           restarts)
            break
        except _WorkerCrashed as e:
            if restarts >= c.train_restarts:
                raise RuntimeError(str(e)) from e
            restarts += 1
            log.warning("two-tower distributed training: %s; starting the %d processes again from the beginning "
                        "(restart %d of at most %d, train_restarts)", e, n, restarts, c.train_restarts)
    net.eval()
    return TrainingLog.from_dict(t, restarts=restarts)


class _WorkerCrashed(RuntimeError):
    """A worker died by a signal (a native crash): the group may start again (``train_restarts``)."""


def _run_group(
    model: TwoTower, catalog: Catalog, interactions: Interactions, valid: EvalTargets | None,
    text_vectors: np.ndarray | None, progress: bool, worker: Callable[..., None] | None, net: nn.Module,
    threads: int, restarts: int,
) -> dict[str, Any]:
    """One start of the group of workers: loads the best state into ``net`` and returns rank 0's
    training log (a dict). Raises :class:`_WorkerCrashed` when a worker died by a signal and
    RuntimeError when one raised."""
    c = model.config
    n = c.train_procs
    what = f"two-tower distributed training (train_procs={n}" + (f", restart {restarts})" if restarts else ")")
    with tempfile.TemporaryDirectory(prefix="tandem-two-tower-ddp-") as tmp:
        out = Path(tmp)
        # the parent's store: port 0 lets the system pick a free port while the store already holds it
        store = dist.TCPStore("127.0.0.1", 0, n, True, timedelta(seconds=PROCESS_GROUP_TIMEOUT_S),
                              wait_for_workers=False)
        args = (n, store.port, threads, c, catalog, interactions, valid, text_vectors, progress, tmp,
                model.warm_from)
        ctx = mp.start_processes(_run_worker, args=(worker or _worker_main, tmp, *args), nprocs=n, join=False,
                                 start_method="spawn")
        try:
            while not ctx.join(timeout=0.5):
                pass
        except mp.ProcessExitedException as e:
            raise _WorkerCrashed(f"{what}: worker {e.error_index} "
                                 f"failed: {e}{_stderr_tail(out, e.error_index)}") from e
        except mp.ProcessRaisedException as e:
            raise RuntimeError(f"{what}: worker {e.error_index} "
                               f"failed: {e}{_stderr_tail(out, e.error_index)}") from e
        finally:
            for p in ctx.processes:  # an interrupt in the parent leaves no worker behind
                if p.is_alive():
                    p.terminate()
                    p.join()
            _replay_stderr(out, n)
            del store
        runs = {json.loads((out / f"rank{r}.json").read_text())["epochs_run"] for r in range(n)}
        if len(runs) != 1:
            raise RuntimeError(f"two-tower distributed training: the ranks stopped after different epochs {runs}")
        net.load_state_dict(load_file(str(out / _WEIGHTS)))
        return dict(json.loads((out / _LOG).read_text()))


def _stderr_file(folder: Path, rank: int) -> Path:
    return folder / f"rank{rank}.stderr"


def _replay_stderr(folder: Path, world: int) -> None:
    """Copy what the ranks above 0 wrote to their stderr files to the parent's stderr."""
    for rank in range(1, world):
        path = _stderr_file(folder, rank)
        if path.exists() and path.stat().st_size:
            sys.stderr.write(path.read_text(errors="replace"))
            sys.stderr.flush()


def _stderr_tail(folder: Path, rank: int | None, lines: int = 25) -> str:
    """The last ``lines`` lines of rank ``rank``'s stderr file, as the end of an error message
    (empty for rank 0, whose stderr is the parent's, or when the file is empty)."""
    path = _stderr_file(folder, rank) if rank else None
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").strip().splitlines()
    return "; the end of its stderr:\n" + "\n".join(text[-lines:]) if text else ""


def _run_worker(rank: int, fn: Callable[..., None], folder: str, *args: Any) -> None:
    """Every worker process: ``fn(rank, *args)``, with :mod:`faulthandler` on, so that a fatal
    signal (SIGABRT from a C++ ``std::terminate`` in gloo or torch, SIGSEGV) prints where each
    thread was before the parent reports only 'terminated with signal SIGABRT'. Ranks above 0
    write their stderr (C++ messages included) to a file in ``folder``; rank 0's progress stays live."""
    if rank:
        sys.stderr.flush()
        fd = os.open(_stderr_file(Path(folder), rank), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    faulthandler.enable(all_threads=True)
    fn(rank, *args)


def _worker_main(
    rank: int, world: int, port: int, threads: int, config: TwoTowerConfig, catalog: Catalog,
    interactions: Interactions, valid: EvalTargets | None, text_vectors: np.ndarray | None, progress: bool,
    out: str, warm_from: Any = None,
) -> None:
    """One training process (``rank`` of ``world``): joins the group, trains, writes its results."""
    torch.set_num_threads(threads)
    timeout = timedelta(seconds=PROCESS_GROUP_TIMEOUT_S)
    store = dist.TCPStore("127.0.0.1", port, world, False, timeout)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timeout)
    try:
        with deterministic_training():
            result = _train_rank(rank, world, config, catalog, interactions, valid, text_vectors, progress,
                                 warm_from)
        folder = Path(out)
        if rank == 0:
            state, training = result
            save_file(state, str(folder / _WEIGHTS))
            (folder / _LOG).write_text(json.dumps(asdict(training)))
        (folder / f"rank{rank}.json").write_text(json.dumps({"epochs_run": result[1].epochs_run}))
        # meet in the parent's store, not over gloo: nobody closes its connections while another
        # rank may still be reading the last collective's messages from them
        store.set(f"done/{rank}", "1")
        store.wait([f"done/{r}" for r in range(world)])
    finally:
        dist.destroy_process_group()


class _Loss(nn.Module):
    """One step's loss as a module, so DistributedDataParallel averages its gradients."""

    def __init__(self, model: TwoTower, windows: _Batch, lengths: np.ndarray, log_pop: torch.Tensor,
                 gen: torch.Generator) -> None:
        super().__init__()
        assert model.net is not None
        self.net = model.net
        self._args = (model, windows, lengths, log_pop, gen)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        model, windows, lengths, log_pop, gen = self._args
        return _step(model, windows, lengths, rows.numpy(), log_pop, gen)


def _train_rank(
    rank: int, world: int, config: TwoTowerConfig, catalog: Catalog, interactions: Interactions,
    valid: EvalTargets | None, text_vectors: np.ndarray | None, progress: bool, warm_from: Any = None,
) -> tuple[dict[str, torch.Tensor], TrainingLog]:
    """The training loop of one rank; rank 0's result holds the best state, the others' an empty dict."""
    from tandem.retrieval.two_tower import TwoTower

    c = config
    model = TwoTower(c)
    model.warm_from = warm_from  # every rank starts from the same (warm) weights
    rng = np.random.default_rng(c.seed)  # the same batches on every rank
    net, windows, lengths, log_pop = _prepare(model, catalog, interactions, text_vectors)
    own_seed = c.seed if rank == 0 else int(np.random.SeedSequence([c.seed, rank]).generate_state(1)[0])
    if rank:
        torch.manual_seed(own_seed)  # dropout: rank 0 keeps the single process's stream
    gen = torch.Generator().manual_seed(own_seed)  # negatives
    # static graph: the same parameters take part in every step (log_scale in none, with dot similarity);
    # the buffers (frozen text vectors, feature ids) are equal on every rank already
    ddp = DistributedDataParallel(_Loss(model, windows, lengths, log_pop, gen), forward_sync_buffers=False,
                                  static_graph=True)
    opt = torch.optim.AdamW(net.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    lead = rank == 0

    start = time.perf_counter()
    losses: list[float] = []
    track = EpochTracker(model, net, valid if lead else None)  # rank 0 validates and decides
    stopped = "epochs"
    epoch = 0
    most = max_epochs(c, windows.items.shape[0]) if lead else epoch_cap(
        c.epochs, windows.items.shape[0], c.epochs_per_1k_windows, c.min_epochs)
    bar = Progress("two-tower epochs", most, unit="epoch", logger=log, interval=0,
                   enabled=progress and lead, eta=False)
    for epoch in range(1, most + 1):
        net.train()
        total = torch.zeros(2, dtype=torch.float64)
        for rows in _batches(c.batch_size, lengths, rng):
            if rows.shape[0] < world:  # every rank takes part in every step
                continue
            loss = ddp(torch.from_numpy(np.ascontiguousarray(rows[rank::world])))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total[0] += float(loss.detach())
            total[1] += 1
        dist.all_reduce(total)
        losses.append(float(total[0] / max(float(total[1]), 1.0)))
        decision = torch.zeros(1, dtype=torch.int64)
        if lead:
            out_of_time = c.time_budget_s is not None and time.perf_counter() - start > c.time_budget_s
            bar.update(1, **track.end_epoch(epoch, losses[-1], out_of_time))
            decision[0] = 1 if track.patience.stop else 2 if out_of_time else 0
        dist.broadcast(decision, src=0)
        reason = _STOP[int(decision[0])]
        if reason is not None:
            stopped = reason
            break
    bar.close(summary=progress and lead)
    stopped = capped(stopped, epoch, most, c) if lead else stopped
    _check_same_weights(net)
    best_state, best_epoch = track.best_state, track.best_epoch
    if best_state is None:
        best_epoch = epoch
        best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    state: dict[str, Any] = {k: v.contiguous() for k, v in best_state.items()} if lead else {}
    return state, TrainingLog(track.evals, losses, best_epoch, epoch, time.perf_counter() - start, stopped, most)


def _check_same_weights(net: nn.Module) -> None:
    """Raise unless every rank holds the same weights (averaged gradients keep them equal)."""
    total = float(sum(p.detach().double().abs().sum() for p in net.parameters()))
    both = torch.tensor([total, -total], dtype=torch.float64)
    dist.all_reduce(both, op=dist.ReduceOp.MAX)
    if float(both[0]) != -float(both[1]):
        raise RuntimeError(f"two-tower distributed training: the ranks' weights differ after training "
                           f"(sums of |w| from {-float(both[1])!r} to {float(both[0])!r}); gradients were not averaged")
