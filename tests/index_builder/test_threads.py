"""The build's thread policy: a fixed count, OMP_NUM_THREADS, or the cores idle at the stage's start."""

import os

import pytest
import torch

from tandem.index_builder.build import _Timer
from tandem.index_builder.config import BuildConfig, ConfigError, load_config
from tandem.index_builder.threads import available_cores, choose_threads, idle_cores, threads_for_stage


@pytest.mark.parametrize(("setting", "cores", "idle", "env", "expected"), [
    (3, 2, 0.0, None, 3),       # a fixed count is used as it is
    (0, 2, 2.0, None, 2),       # idle machine: every core
    (0, 2, 0.0, None, 1),       # busy machine: one thread, never zero
    (0, 2, 0.4, None, 1),
    (0, 2, 1.6, None, 2),       # rounded to the nearest core
    (0, 8, 5.2, None, 5),
    (0, 2, 7.0, None, 2),       # never more than this process may use
    (0, 2, 0.0, "2", 2),        # OMP_NUM_THREADS is the user's choice
    (0, 2, 2.0, "garbage", 2),  # an unreadable OMP_NUM_THREADS is ignored
    (0, 2, 2.0, "0", 2),
    (1, 2, 2.0, "2", 1),        # a fixed count wins over OMP_NUM_THREADS
])
def test_choose_threads(setting, cores, idle, env, expected):
    assert choose_threads(setting, cores, idle, env) == expected


def test_idle_cores_is_a_share_of_this_machine():
    idle = idle_cores(0.2)
    assert 0.0 <= idle <= (os.cpu_count() or 1) + 1e-9


def test_stage_threads_are_set_and_recorded(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    try:
        timer = _Timer(threads=1)
        with timer.stage("a"):
            assert torch.get_num_threads() == 1
        assert timer.threads == {"a": 1} and timer.seconds["a"] >= 0
        n = threads_for_stage(0)  # what the idle cores allow right now
        assert 1 <= n <= available_cores() and torch.get_num_threads() == n
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert threads_for_stage(0) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_timer_measures_again_only_after_a_while(monkeypatch):
    calls = []
    monkeypatch.setattr("tandem.index_builder.build.threads_for_stage", lambda s: calls.append(s) or 1)
    timer = _Timer(threads=0, remeasure_s=3600)
    for name in ("a", "b", "c"):
        with timer.stage(name):
            pass
    assert calls == [0] and timer.threads == {"a": 1, "b": 1, "c": 1}
    timer = _Timer(threads=0, remeasure_s=0)
    for name in ("a", "b"):
        with timer.stage(name):
            pass
    assert calls == [0, 0, 0]


def test_threads_setting_is_validated_and_settable():
    with pytest.raises(ConfigError, match="threads"):
        BuildConfig(threads=-1)
    assert load_config(environ={"TANDEM_BUILD__THREADS": "2"}).threads == 2
    assert BuildConfig().threads == 0
