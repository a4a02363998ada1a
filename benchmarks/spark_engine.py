"""The offline stages of ``tandem build`` on the local and the Spark engine: seconds per stage,
peak memory, and (``--engine both``) a parity check of every result.

    python benchmarks/spark_engine.py --data ../shared/data/beauty --engine both
    python benchmarks/spark_engine.py --data /tmp/shop --engine local --json out.json
    python benchmarks/spark_engine.py --data /tmp/shop --engine spark --master local[2] --json out.json

Stages: clean (read, validate, clean), split (leave-last-out), popularity and item-CF (the
default transition similarity, top 200) fitted on the split's training part. Each stage's wall
seconds and CPU seconds are printed as it ends (on a shared machine the CPU time is the steadier
figure), with the load average at its start and end. CPU seconds: the own user + system time of
every process ever seen in this process's tree (this Python driver, the Spark JVM, which on a
``local[N]`` master runs the driver and the executors' tasks as threads, and Spark's Python
workers), each at its last 0.2 s sample, by kind (driver / jvm / python); a process that exits
keeps its time in the sum, which the children's times of /proc or ``time -v`` do not give (a
JVM or worker nobody waits for never reaches them). Peak memory is the largest sum of resident
memory over the tree at one sample, per stage, overall and by kind. ``--json`` is written even
when a stage fails, with what the finished stages measured.

The parity check needs both engines in one process and prints the first difference it finds;
timings of a ``both`` run are not comparable (the engines share the machine and the page cache),
run each engine alone for those (see benchmarks/README.md).
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


def _scan_tree(pid: int) -> dict[tuple[int, int], tuple[str, float, int]]:
    """Every process of ``pid``'s tree (``pid`` and its descendants, Linux /proc) as
    ``(pid, start time) -> (kind, own CPU seconds user + system, resident bytes)``; ``kind`` is
    ``jvm`` (java: Spark's driver with its local executors), ``driver`` (``pid`` itself) or
    ``python`` (anything else: Spark's Python workers and their daemon)."""
    tick, page = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[int, str, float, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            fields = rest.split()
            comm = head.split("(", 1)[1]
            children.setdefault(int(fields[1]), []).append(int(entry))
            # own utime + stime only: the children's (cutime, cstime) are counted as processes
            info[int(entry)] = (int(fields[19]), comm, (int(fields[11]) + int(fields[12])) / tick,
                                int(fields[21]) * page)
        except (OSError, IndexError, ValueError):
            continue
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in info:
            start, comm, cpu, rss = info[p]
            kind = "driver" if p == pid else "jvm" if comm == "java" else "python"
            out[(p, start)] = (kind, cpu, rss)
        todo.extend(children.get(p, []))
    return out


class TreeMeter:
    """CPU seconds and resident memory of this process's tree, sampled every 0.2 s.

    CPU is the sum, over every process ever seen in the tree, of its own user + system time when
    last seen, by kind (driver, jvm, python); a process that exits keeps what it had at its last
    sample, so a Python worker that leaves (and may be reaped by a process outside the tree) does
    not take its time out of the sum. A process's last < 0.2 s, or one shorter than that, is
    missed. Peak memory: the largest sum of resident memory over the tree at one sample, and the
    largest of each kind."""

    KINDS = ("driver", "jvm", "python")

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._seen: dict[tuple[int, int], tuple[str, float]] = {}
        self._lock = threading.Lock()
        self.peak = self.stage_peak = 0
        self.peak_by_kind = dict.fromkeys(self.KINDS, 0)
        self.rss_by_kind = dict.fromkeys(self.KINDS, 0)
        self._stop = threading.Event()
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        tree = _scan_tree(self._pid)
        now = dict.fromkeys(self.KINDS, 0)
        with self._lock:
            for key, (kind, cpu, rss) in tree.items():
                self._seen[key] = (kind, cpu)
                now[kind] += rss
            self.rss_by_kind = now
            self.peak = max(self.peak, sum(now.values()))
            self.stage_peak = max(self.stage_peak, sum(now.values()))
            for kind in self.KINDS:
                self.peak_by_kind[kind] = max(self.peak_by_kind[kind], now[kind])

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far by kind (after a fresh sample)."""
        self.sample()
        out = dict.fromkeys(self.KINDS, 0.0)
        with self._lock:
            for kind, cpu in self._seen.values():
                out[kind] += cpu
        return out

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _load() -> float:
    return os.getloadavg()[0]


class Stage:
    """Times one stage: wall seconds into ``times[name]``, CPU seconds of the process tree (this
    process, the Spark JVM and its Python workers) into ``cpu[name]`` and by kind into
    ``detail[name]``; prints a line when it ends, so a run stopped part way still reports the
    stages it finished."""

    def __init__(self, meter: TreeMeter, times: dict, cpu: dict, detail: dict, name: str) -> None:
        self.meter, self.times, self.cpu, self.detail, self.name = meter, times, cpu, detail, name

    def __enter__(self) -> Stage:
        self._t, self._c, self._l = time.perf_counter(), self.meter.cpu(), _load()
        with self.meter._lock:
            self.meter.stage_peak = sum(self.meter.rss_by_kind.values())
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t
        c = self.meter.cpu()
        by_kind = {k: round(c[k] - self._c[k], 2) for k in c}
        stage_peak = self.meter.stage_peak
        self.times[self.name] = wall
        self.cpu[self.name] = sum(by_kind.values())
        self.detail[self.name] = {"cpu_by_kind": by_kind, "peak_tree_mb": round(stage_peak / 2**20),
                                  "rss_after_mb": {k: round(v / 2**20) for k, v in self.meter.rss_by_kind.items()},
                                  "load_start": round(self._l, 2), "load_end": round(_load(), 2),
                                  "failed": exc[0] is not None}
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in by_kind.items() if v)
        print(f"stage {self.name}{' FAILED' if exc[0] else ''}: {wall:.1f} s wall, {self.cpu[self.name]:.1f} CPU-s "
              f"({kinds}), stage peak {stage_peak / 2**20:.0f} MiB, tree RSS now "
              f"{sum(self.meter.rss_by_kind.values()) / 2**20:.0f} MiB, load {self._l:.1f} -> {_load():.1f}",
              flush=True)


def run_local(data: Path, meter: TreeMeter, times: dict, cpu: dict, detail: dict) -> dict:
    with Stage(meter, times, cpu, detail, "clean"):
        clean = load_dataset(data)
    with Stage(meter, times, cpu, detail, "split"):
        split = make_split(clean.interactions, "leave-last-out")
    with Stage(meter, times, cpu, detail, "popularity"):
        pop = Popularity(PopularityConfig()).fit(clean.catalog, split.train)
    with Stage(meter, times, cpu, detail, "item_cf"):
        cf = ItemCF(ItemCFConfig()).fit(clean.catalog, split.train)
    return {"clean": clean, "split": split, "popularity": pop, "item_cf": cf}


def run_spark(data: Path, meter: TreeMeter, times: dict, cpu: dict, detail: dict, master: str,
              driver_memory: str) -> dict:
    from tandem.index_builder.spark_engine import SparkEngine

    with Stage(meter, times, cpu, detail, "session_start"):
        engine = SparkEngine(master, driver_memory=driver_memory)
    with Stage(meter, times, cpu, detail, "clean"):
        clean = engine.load_dataset(data)
    with Stage(meter, times, cpu, detail, "split"):
        split = engine.make_split(clean.interactions, "leave-last-out")
    n = len(clean.catalog)
    with Stage(meter, times, cpu, detail, "popularity"):
        pop = engine.fit_source("popularity", PopularityConfig(), n, split.train)
    with Stage(meter, times, cpu, detail, "item_cf"):
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
    meter = TreeMeter()
    t0 = time.perf_counter()
    result: dict = {"data": str(args.data), "engine": args.engine, "load_start": round(_load(), 2)}
    runs = {}

    def finish() -> None:
        result["wall_s"] = round(time.perf_counter() - t0, 1)
        result["cpu_s_by_kind"] = {k: round(v, 1) for k, v in meter.cpu().items()}
        result["cpu_s"] = round(sum(result["cpu_s_by_kind"].values()), 1)
        result["peak_rss_mb"] = round(meter.peak / 2**20)
        result["peak_rss_mb_by_kind"] = {k: round(v / 2**20) for k, v in meter.peak_by_kind.items()}
        result["load_end"] = round(_load(), 2)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=float))

    try:
        if args.engine in ("local", "both"):
            result["local_s"], result["local_cpu_s"], result["local_stages"] = {}, {}, {}
            runs["local"] = run_local(args.data, meter, result["local_s"], result["local_cpu_s"],
                                      result["local_stages"])
        if args.engine in ("spark", "both"):
            result["spark_s"], result["spark_cpu_s"], result["spark_stages"] = {}, {}, {}
            runs["spark"] = run_spark(args.data, meter, result["spark_s"], result["spark_cpu_s"],
                                      result["spark_stages"], args.master, args.driver_memory)
    except BaseException as exc:
        result["error"] = f"{type(exc).__name__}: {str(exc)[:2000]}"
        finish()  # what the finished stages measured
        raise
    finish()
    meter.stop()
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
