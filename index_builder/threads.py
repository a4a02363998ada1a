"""How many threads a build stage's math libraries get (torch, FAISS, BLAS).

torch and FAISS start one OpenMP thread per core. On a machine whose cores are busy with other
work, those threads wait for each other at every operation: on the 2-core machines of
``benchmarks/README.md`` at load 8-10, one two-tower epoch on Amazon Beauty took ~170 s with two
threads and ~25 s with one. ``tandem build`` therefore picks the thread count before each stage
from the cores that are idle at that moment (``[build] threads = 0``, the default), or uses a fixed
count (``threads = N``). An ``OMP_NUM_THREADS`` set in the environment is the user's choice and
wins over ``0``.

The idle cores are read from ``/proc/stat`` over a short window while the build itself sleeps
(so its own threads do not count); where there is no ``/proc/stat`` (macOS), from the one-minute
load average.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["available_cores", "choose_threads", "idle_cores", "set_threads"]

_STAT = Path("/proc/stat")


def available_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies over all cores, or None without /proc/stat."""
    try:
        first = _STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    values = [int(v) for v in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values[:8])  # guest time is already counted in user and nice


def idle_cores(window_s: float = 0.3) -> float:
    """How many cores of the machine were idle over the next ``window_s`` seconds (this process
    sleeps meanwhile); from the load average where /proc/stat is missing."""
    cores = os.cpu_count() or 1
    before = _cpu_times()
    if before is None:
        try:
            return max(0.0, cores - os.getloadavg()[0])
        except OSError:
            return float(cores)
    time.sleep(window_s)
    after = _cpu_times()
    total = after[1] - before[1]
    if total <= 0:
        return float(cores)
    return cores * (after[0] - before[0]) / total


def choose_threads(setting: int, cores: int, idle: float, env: str | None = None) -> int:
    """The thread count for a stage: ``setting`` when it is > 0; else ``OMP_NUM_THREADS``
    (``env``) when it is a positive number; else the idle cores rounded to the nearest whole core,
    at least one and at most ``cores``."""
    if setting > 0:
        return setting
    if env is not None and env.strip().isdigit() and int(env) > 0:
        return int(env)
    return max(1, min(cores, int(idle + 0.5)))


def set_threads(n: int) -> None:
    """Give torch, FAISS and the BLAS libraries ``n`` threads each."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")


def threads_for_stage(setting: int) -> int:
    """Choose (see :func:`choose_threads`) and set the thread count for the stage about to run."""
    env = os.environ.get("OMP_NUM_THREADS")
    if setting > 0 or (env is not None and env.strip().isdigit() and int(env) > 0):
        n = choose_threads(setting, available_cores(), 0.0, env)
    else:
        n = choose_threads(setting, available_cores(), idle_cores())
    set_threads(n)
    return n
