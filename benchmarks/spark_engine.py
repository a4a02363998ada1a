"""The offline stages of ``tandem build`` on the local and the Spark engine: seconds per stage,
peak memory, and (``--engine both``) a parity check of every result.

    python benchmarks/spark_engine.py --data ../shared/data/beauty --engine both
    python benchmarks/spark_engine.py --data /tmp/shop --engine local --json out.json
    python benchmarks/spark_engine.py --data /tmp/shop --engine spark --master local[2] --json out.json

Stages: clean (read, validate, clean), split (leave-last-out), popularity and item-CF (the
default transition similarity, top 200) fitted on the split's training part. Each stage's wall
seconds and CPU seconds (user + system of the whole process tree; on a shared machine the CPU
time is the steadier figure) are printed as it ends. Peak memory is the
largest sum of resident memory over this process and its children (the Spark JVM and its Python
workers), sampled every 0.2 s. The parity check needs both engines in one process and prints
the first difference it finds; timings of a ``both`` run are not comparable (the engines share
the machine and the page cache), run each engine alone for those (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tandem.index_builder.cleaning import load_dataset
from tandem.index_builder.splits import make_split
from tandem.retrieval.item_cf import ItemCF, ItemCFConfig
from tandem.retrieval.popularity import Popularity, PopularityConfig


def _tree_stat(pid: int, rss_field: bool = True) -> int | float:
    """Resident bytes (``rss_field``) or CPU seconds (user + system, including reaped children) of
    ``pid`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    value: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
            if rss_field:
                value[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
            else:  # utime, stime, cutime, cstime
                value[int(entry)] = sum(int(v) for v in fields[11:15]) / tick
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += value.get(p, 0)
        todo.extend(children.get(p, []))
    return int(total) if rss_field else total


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (Linux /proc)."""
    return int(_tree_stat(pid))


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and its descendants, the reaped ones included."""
    return float(_tree_stat(pid, rss_field=False))


class Stage:
    """Times one stage: wall seconds into ``times[name]``, CPU seconds of the process tree (this
    process, the Spark JVM and its Python workers) into ``cpu[name]``; prints a line when it ends,
    so a run stopped part way still reports the stages it finished."""

    def __init__(self, times: dict, cpu: dict, name: str) -> None:
        self.times, self.cpu, self.name = times, cpu, name

    def __enter__(self) -> Stage:
        self._t, self._c = time.perf_counter(), _tree_cpu(os.getpid())
        return self

    def __exit__(self, *exc: object) -> None:
        self.times[self.name] = time.perf_counter() - self._t
        self.cpu[self.name] = _tree_cpu(os.getpid()) - self._c
        print(f"stage {self.name}: {self.times[self.name]:.1f} s wall, {self.cpu[self.name]:.1f} CPU-s, "
              f"tree RSS now {_tree_rss(os.getpid()) / 2**20:.0f} MB", flush=True)


class PeakMemory:
    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss(os.getpid()))
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_local(data: Path, times: dict, cpu: dict) -> dict:
    with Stage(times, cpu, "clean"):
        clean = load_dataset(data)
    with Stage(times, cpu, "split"):
        split = make_split(clean.interactions, "leave-last-out")
    with Stage(times, cpu, "popularity"):
        pop = Popularity(PopularityConfig()).fit(clean.catalog, split.train)
    with Stage(times, cpu, "item_cf"):
        cf = ItemCF(ItemCFConfig()).fit(clean.catalog, split.train)
    return {"clean": clean, "split": split, "popularity": pop, "item_cf": cf}


def run_spark(data: Path, times: dict, cpu: dict, master: str, driver_memory: str) -> dict:
    from tandem.index_builder.spark_engine import SparkEngine

    with Stage(times, cpu, "session_start"):
        engine = SparkEngine(master, driver_memory=driver_memory)
    with Stage(times, cpu, "clean"):
        clean = engine.load_dataset(data)
    with Stage(times, cpu, "split"):
        split = engine.make_split(clean.interactions, "leave-last-out")
    n = len(clean.catalog)
    with Stage(times, cpu, "popularity"):
        pop = engine.fit_source("popularity", PopularityConfig(), n, split.train)
    with Stage(times, cpu, "item_cf"):
        cf = engine.fit_source("item_cf", ItemCFConfig(), n, split.train)
    return {"clean": clean, "split": split, "popularity": pop, "item_cf": cf, "engine": engine}


def compare(a: dict, b: dict) -> list[str]:
    """Differences between two engines' results (empty: the same)."""
    out = []
    ra, rb = a["clean"].report.to_dict(), b["clean"].report.to_dict()
    out += [f"report.{k}: {ra[k]!r} != {rb[k]!r}" for k in ra if ra[k] != rb[k]]
    ia, ib = a["clean"].interactions, b["clean"].interactions
    if ia.user_ids != ib.user_ids:
        out.append("interactions.user_ids differ")
    for col in ("users", "items", "ts", "events", "values"):
        if not np.array_equal(getattr(ia, col), getattr(ib, col), equal_nan=True):
            out.append(f"interactions.{col} differ")
    sa, sb = a["split"], b["split"]
    if sa.counts() != sb.counts():
        out.append(f"split counts {sa.counts()} != {sb.counts()}")
    for part in ("valid", "test"):
        for f in ("users", "indptr", "items", "history_indptr", "history_items", "history_ts"):
            if not np.array_equal(getattr(getattr(sa, part), f), getattr(getattr(sb, part), f)):
                out.append(f"split.{part}.{f} differ")
    for col in ("users", "items", "ts"):
        if not np.array_equal(getattr(sa.train, col), getattr(sb.train, col)):
            out.append(f"split.train.{col} differ")
    pa, pb = a["popularity"].scores, b["popularity"].scores
    if not np.allclose(pa, pb, rtol=1e-6, atol=1e-6):
        out.append(f"popularity scores differ (max {np.abs(pa - pb).max()})")
    ma, mb = a["item_cf"].similarity, b["item_cf"].similarity
    if not (np.array_equal(ma.indptr, mb.indptr) and np.array_equal(ma.indices, mb.indices)):
        rows = np.flatnonzero(np.diff(ma.indptr) != np.diff(mb.indptr))
        out.append(f"item-CF neighbours differ ({ma.nnz} vs {mb.nnz} entries; rows with another count: "
                   f"{rows[:10].tolist()})")
    else:
        diff = float(np.abs(ma.data - mb.data).max()) if ma.nnz else 0.0
        print(f"item-CF: {ma.nnz} entries, the same neighbours, max weight difference {diff:.3g}")
        if diff > 1e-6:
            out.append(f"item-CF weights differ by up to {diff}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--engine", choices=("local", "spark", "both"), default="both")
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--driver-memory", default="4g")
    ap.add_argument("--json", type=Path, help="write the timings and peak memory here")
    args = ap.parse_args()
    mem = PeakMemory()
    t0 = time.perf_counter()
    result: dict = {"data": str(args.data), "engine": args.engine}
    runs = {}
    if args.engine in ("local", "both"):
        result["local_s"], result["local_cpu_s"] = {}, {}
        runs["local"] = run_local(args.data, result["local_s"], result["local_cpu_s"])
    if args.engine in ("spark", "both"):
        result["spark_s"], result["spark_cpu_s"] = {}, {}
        runs["spark"] = run_spark(args.data, result["spark_s"], result["spark_cpu_s"], args.master,
                                  args.driver_memory)
    result["wall_s"] = time.perf_counter() - t0
    result["cpu_s"] = _tree_cpu(os.getpid())
    result["peak_rss_mb"] = round(mem.stop() / 2**20)
    first = next(iter(runs.values()))
    result["events"] = len(first["clean"].interactions)
    result["items"] = len(first["clean"].catalog)
    result["users"] = first["clean"].interactions.n_users
    status = 0
    if args.engine == "both":
        diffs = compare(runs["local"], runs["spark"])
        result["parity"] = "same" if not diffs else diffs
        print("parity:", "the same cleaning report, interactions, split, popularity and item-CF" if not diffs
              else "\n  ".join(["DIFFERENT", *diffs]))
        status = 1 if diffs else 0
    for key in ("local_s", "spark_s", "local_cpu_s", "spark_cpu_s"):
        if key in result:
            result[key] = {k: round(v, 2) for k, v in result[key].items()}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if "spark" in runs:
        runs["spark"]["engine"].stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
