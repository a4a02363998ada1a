"""Two-tower training in two processes (DistributedDataParallel over gloo) on tiny generated data:
it learns what one process learns, stops all ranks at the same epoch, round-trips, fails loudly;
train_procs = 1 trains exactly as the single-process loop."""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import pytest
import torch

from tandem.index_builder.splits import leave_last_out
from tandem.retrieval.two_tower import TwoTower, TwoTowerConfig, deterministic_training
from tandem.retrieval.two_tower_distributed import _worker_main
from tandem.retrieval.two_tower_training import train
from tests.retrieval.test_two_tower import SMALL, _catalog, _chain_interactions

TEXT = np.random.default_rng(1).normal(size=(40, 8)).astype(np.float32)


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)  # two threads on busy cores wait for each other


def _split():
    return leave_last_out(_chain_interactions(n_users=300))


@pytest.mark.slow  # starts worker processes: 30-140 s each on a busy 2-core machine
def test_two_processes_learn_what_one_learns_and_round_trip(tmp_path) -> None:
    catalog, split = _catalog(), _split()
    cfg = dataclasses.replace(SMALL, epochs=8, patience=8, lr=1e-2)
    one = TwoTower(cfg).fit(catalog, split.train, valid=split.valid, text_vectors=TEXT)
    two = TwoTower(dataclasses.replace(cfg, train_procs=2)).fit(catalog, split.train, valid=split.valid,
                                                                text_vectors=TEXT)
    assert one.log is not None and two.log is not None
    assert two.log.epochs_run == 8 and len(two.log.losses) == 8 and len(two.log.evals) == 8
    best_one, best_two = max(e[1] for e in one.log.evals), max(e[1] for e in two.log.evals)
    # the chain is learnable: both far above chance (10 of 40 items), and close to each other
    assert best_one > 0.8 and best_two > 0.8
    assert abs(best_one - best_two) < 0.1
    # the parent holds the best state of rank 0: its recall is the logged best
    assert two.evaluate(split.valid, 10)[0] == pytest.approx(best_two)
    assert two.log.best_epoch == max(two.log.evals, key=lambda e: e[1])[0]
    # the processes' losses fall like one process's
    assert two.log.losses[-1] < 0.8 * two.log.losses[0]
    two.save(tmp_path)
    loaded = TwoTower.load(tmp_path, catalog)
    np.testing.assert_array_equal(loaded.encode_items(), two.encode_items())
    assert loaded.config.train_procs == 2


@pytest.mark.slow  # starts worker processes: 30-140 s each on a busy 2-core machine
def test_every_rank_stops_at_the_epoch_rank_0_decides() -> None:
    """Patience is decided on rank 0 only; the parent checks all ranks ran the same epochs (a
    rank that stopped alone would have hung the others in the next all-reduce)."""
    catalog, split = _catalog(), _split()
    cfg = dataclasses.replace(SMALL, epochs=30, patience=1, min_improvement=0.5, train_procs=2)
    model = TwoTower(cfg).fit(catalog, split.train, valid=split.valid)
    assert model.log is not None
    assert model.log.stopped == "patience"
    assert model.log.epochs_run == 2  # epoch 1 is progress from nothing, epoch 2 cannot rise by 0.5
    assert len(model.log.losses) == 2


def _worker_failing_on_rank_1(rank: int, *args) -> None:
    if rank == 1:
        raise ValueError("rank 1 broke on purpose")
    _worker_main(rank, *args)  # rank 0 waits for rank 1 to join the group: it must not hang


@pytest.mark.slow  # starts worker processes: 30-140 s each on a busy 2-core machine
def test_a_failing_worker_raises_in_the_parent_quickly() -> None:
    from tandem.retrieval.two_tower_distributed import train_distributed

    catalog, split = _catalog(), _split()
    model = TwoTower(dataclasses.replace(SMALL, train_procs=2))
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="(?s)worker 1 failed.*rank 1 broke on purpose"):
        with deterministic_training():
            train_distributed(model, catalog, split.train, split.valid, None, False,
                              _worker=_worker_failing_on_rank_1)
    # process start-up (importing torch twice) dominates; the group's timeout is 30 minutes
    assert time.perf_counter() - t0 < 120


def _worker_aborting_on_rank_1(rank: int, *args) -> None:
    if rank == 1:
        os.abort()  # what a C++ std::terminate in gloo or torch does


@pytest.mark.slow  # starts worker processes: 30-140 s on a busy 2-core machine
def test_a_worker_killed_by_sigabrt_says_where_it_was(capfd) -> None:
    from tandem.retrieval.two_tower_distributed import train_distributed

    catalog, split = _catalog(), _split()
    model = TwoTower(dataclasses.replace(SMALL, train_procs=2))
    with pytest.raises(RuntimeError, match="worker 1 failed: process 1 terminated with signal SIGABRT") as info:
        train_distributed(model, catalog, split.train, split.valid, None, False, _worker=_worker_aborting_on_rank_1)
    err = capfd.readouterr().err  # the worker's stderr, copied to the parent's: its Python stack when it died
    assert "Fatal Python error: Aborted" in err and "_worker_aborting_on_rank_1" in err
    # and the error itself quotes it, so a log that keeps only the exception still says where
    assert "the end of its stderr" in str(info.value) and "Fatal Python error: Aborted" in str(info.value)
    # a crash that happens every time fails after the one restart train_restarts allows by default
    assert "(train_procs=2, restart 1): worker 1 failed" in str(info.value)
    assert err.count("Fatal Python error: Aborted") == 2


def _worker_aborting_once(rank: int, *args) -> None:
    flag = os.environ["TANDEM_TEST_ABORT_FLAG"]
    if rank == 1 and not os.path.exists(flag):
        open(flag, "w").close()
        os.abort()  # the first start only: a crash that bad luck causes
    _worker_main(rank, *args)


@pytest.mark.slow  # starts worker processes twice: 60-280 s on a busy 2-core machine
def test_a_crashed_group_starts_again_and_trains(tmp_path, monkeypatch, caplog) -> None:
    from tandem.retrieval.two_tower_distributed import train_distributed

    monkeypatch.setenv("TANDEM_TEST_ABORT_FLAG", str(tmp_path / "aborted"))
    catalog, split = _catalog(), _split()
    model = TwoTower(dataclasses.replace(SMALL, epochs=2, train_procs=2))
    with deterministic_training():
        training = train_distributed(model, catalog, split.train, split.valid, None, False,
                                     _worker=_worker_aborting_once)
    assert (tmp_path / "aborted").exists()
    assert training.restarts == 1 and training.epochs_run == 2
    assert "worker 1 failed: process 1 terminated with signal SIGABRT" in caplog.text
    assert "restart 1 of at most 1" in caplog.text
    # with no restarts allowed, the same crash fails the training
    (tmp_path / "aborted").unlink()
    model = TwoTower(dataclasses.replace(SMALL, epochs=2, train_procs=2, train_restarts=0))
    with pytest.raises(RuntimeError, match=r"\(train_procs=2\): worker 1 failed: process 1 terminated"):
        train_distributed(model, catalog, split.train, split.valid, None, False, _worker=_worker_aborting_once)


def test_one_process_is_the_single_process_loop() -> None:
    """train_procs = 1 gives the weights of the loop that never touches torch.distributed."""
    catalog, split = _catalog(), _split()
    cfg = dataclasses.replace(SMALL, epochs=3)
    fitted = TwoTower(cfg).fit(catalog, split.train, valid=split.valid, text_vectors=TEXT)
    direct = TwoTower(cfg)
    with deterministic_training():
        train(direct, catalog, split.train, split.valid, TEXT, False)
    assert fitted.net is not None and direct.net is not None
    a, b = fitted.net.state_dict(), direct.net.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.distributed.is_initialized()


def test_train_procs_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="train_procs must be >= 1"):
        TwoTowerConfig(train_procs=0)
    with pytest.raises(ValueError, match="train_procs=200 must be <= batch_size=128"):
        TwoTowerConfig(train_procs=200)
    with pytest.raises(ValueError, match="train_restarts must be >= 0"):
        TwoTowerConfig(train_restarts=-1)


def test_build_flag_and_environment_set_train_procs() -> None:
    import argparse

    from tandem.index_builder.commands.build import _overrides, register
    from tandem.index_builder.config import load_config

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["build", "--data", "d", "--out", "o", "--train-procs", "3"])
    env = {"TANDEM_BUILD__TWO_TOWER__TRAIN_PROCS": "2", "TANDEM_BUILD__TWO_TOWER__DIM": "32"}
    cfg = load_config(overrides=_overrides(args), environ=env)
    assert cfg.two_tower.train_procs == 3 and cfg.two_tower.dim == 32  # the flag wins, the rest stays
    assert load_config(environ=env).two_tower.train_procs == 2
    with pytest.raises(ValueError, match="train_procs"):
        load_config(overrides=_overrides(parser.parse_args(["build", "--data", "d", "--out", "o",
                                                            "--train-procs", "0"])), environ={})
    assert load_config(environ={}).two_tower.train_procs == 1
