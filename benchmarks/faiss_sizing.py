"""FAISS index size and search cost at Tandem's vector dimensions: the size formula against a real
index built by Tandem's own ``AnnIndex.build``, its resident memory once loaded the way the server
loads it, its search latency and its recall against exact search.

    nice -n 19 python benchmarks/faiss_sizing.py --n 1000000 --dim 384 \\
        --base BUNDLE/sources/text/text_vectors.npy --kinds ivf_pq ivf_sq8 --json faiss384.json
    nice -n 19 python benchmarks/faiss_sizing.py --n 1000000 --dim 64 \\
        --base BUNDLE/sources/two_tower/two_tower_items.npy --kinds ivf_pq ivf_sq8 hnsw --json faiss64.json

Vectors (``--vectors``):

* ``realish`` (default, needs ``--base``): each vector is a random row of a real embedding matrix
  (a bundle's text or two-tower item vectors) plus Gaussian noise with the real matrix's own
  covariance scaled by ``--noise`` (0.5: half the catalogue's spread), then given back the base's
  norm when the base is unit-norm. It keeps the real spectrum and the real items' clusters; it is
  not a real 1M-item catalogue (each real item has ``n / len(base)`` noisy siblings).
* ``random``: i.i.d. Gaussian, unit norm: no structure at all, the worst case for quantisation.

Queries are drawn from the same generator with another seed (not indexed): 500 tune the index to
``--recall-target`` at depth ``--k-tune`` (Tandem's build-time tuning of nprobe and the re-scoring
depth; ``tandem build`` tunes at the pipeline's ``per_source_k``, 200), another 500 measure it.
Exact top-k comes from ``faiss.knn``. Each index is saved with ``AnnIndex.save`` and measured in a
fresh subprocess that loads it with ``AnnIndex.load`` (IVF float vectors memory-mapped, as
``tandem serve`` does): resident memory (anonymous and file-backed) after loading and after the
searches, then single-query latency (wall and the thread's CPU time; one thread) at k = 10 and
k = 200 (the pipeline's ``per_source_k``), recall@k against exact search, recall of the codes
alone (no exact re-scoring), and the codes scanned per query.
The formula sizes (``formula_bytes``) are printed beside the measured ones. Large files go under
``--work`` (default /tmp/faiss_sizing) and are removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")


def _status_kb() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile of this process in KiB (Linux /proc)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(rest.split()[0])
    return out


def make_vectors(kind: str, n: int, d: int, base: np.ndarray | None, noise: float, seed: int,
                 chunk: int = 100_000) -> np.ndarray:
    """float32 (n, d) vectors from the generator ``kind`` (see the module docstring), seeded."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    if kind == "random":
        for s in range(0, n, chunk):
            x = rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)
            out[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out
    assert base is not None
    b = base.astype(np.float64)
    cov = np.cov(b, rowvar=False) + 1e-9 * np.eye(d)
    chol = np.linalg.cholesky(cov).astype(np.float32)
    norms = np.linalg.norm(b, axis=1)
    unit = bool(np.abs(norms - 1).max() < 1e-3)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        parents = rng.integers(0, len(base), m)
        x = base[parents] + noise * (rng.standard_normal((m, d), dtype=np.float32) @ chol.T)
        if unit:
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s:s + m] = x
    return out


def formula_bytes(kind: str, n: int, d: int, factory: str, hnsw_m: int = 32) -> dict[str, float]:
    """Resident bytes by the textbook formula: ``resident`` (what stays in RAM) and ``disk_floats``
    (the float vectors an IVF index re-scores from, memory-mapped)."""
    if kind == "flat":
        return {"resident": 4.0 * n * d, "disk_floats": 0.0}
    if kind == "hnsw":
        # floats + level-0 links (2M int32) + upper levels (~M/(M-1) links a node) + offsets and levels
        links = n * 4.0 * (2 * hnsw_m + hnsw_m / (hnsw_m - 1))
        return {"resident": 4.0 * n * d + links + 12.0 * n, "disk_floats": 0.0}
    nlist = int(factory.split(",")[0][3:])
    coarse = 4.0 * nlist * d
    if kind == "ivf_sq8":
        return {"resident": n * (d + 8.0) + coarse + 8.0 * d, "disk_floats": 4.0 * n * d}
    pq = factory.split(",")[1][2:]
    m, nbits = (int(v) for v in pq.split("x"))
    return {"resident": n * (m * nbits / 8 + 8.0) + coarse + 4.0 * d * 2**nbits, "disk_floats": 4.0 * n * d}


def measure(folder: Path, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Load the index in this (fresh) process and measure memory, latency and recall."""
    import faiss

    from tandem.retrieval.ann import AnnIndex

    faiss.omp_set_num_threads(1)
    before = _status_kb()
    t = time.perf_counter()
    ann = AnnIndex.load(folder)
    load_s = time.perf_counter() - t
    loaded = _status_kb()
    res: dict = {"load_s": round(load_s, 2), "rss_before_load_kb": before, "rss_after_load_kb": loaded}
    for k in (10, 200):
        for q in queries[:50]:  # warm-up: first touches of the lists and of the mapped floats
            ann.search(q[None, :], k)
        lat = []
        cpu = []
        found = []
        stats = faiss.cvar.indexIVF_stats
        stats.reset()
        for q in queries:
            t, c = time.perf_counter(), time.thread_time()
            _, ids = ann.search(q[None, :], k)
            lat.append(time.perf_counter() - t)
            cpu.append(time.thread_time() - c)
            found.append(ids[0, :k])
        lat_ms = np.array(lat) * 1e3
        found_k = np.array(found)
        entry = {"p50_ms": round(float(np.percentile(lat_ms, 50)), 3),
                 "p99_ms": round(float(np.percentile(lat_ms, 99)), 3),
                 "mean_ms": round(float(lat_ms.mean()), 3),
                 # CPU time of the searching thread: what a busy machine's preemption does not inflate
                 "cpu_mean_ms": round(float(np.mean(cpu)) * 1e3, 3),
                 "cpu_p50_ms": round(float(np.percentile(cpu, 50)) * 1e3, 3),
                 f"recall_at_{k}": round(_recall(found_k, truth[:, :k]), 4),
                 "recall_at_10": round(_recall(found_k[:, :10], truth[:, :10]), 4)}
        if ann.kind.startswith("ivf"):
            entry["codes_scanned_per_query"] = round(stats.ndis / len(queries))
        res[f"k{k}"] = entry
    if ann.kind.startswith("ivf"):
        for k in (10, 200):  # the codes alone at the tuned nprobe, no exact re-scoring
            _, raw = ann._index.search(queries, k)
            res[f"recall_at_{k}_codes_only"] = round(_recall(raw, truth[:, :k]), 4)
        invlists = faiss.extract_index_ivf(ann._index).invlists
        sizes = np.array([invlists.list_size(i) for i in range(invlists.nlist)])
        res["list_size"] = {"mean": round(float(sizes.mean()), 1), "max": int(sizes.max()),
                            "p99": int(np.percentile(sizes, 99))}
    res["rss_after_search_kb"] = _status_kb()
    return res


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=1).sum(axis=1)
    return float((hits / k).mean())


def run(args: argparse.Namespace) -> dict:
    import faiss

    from tandem.retrieval.ann import AnnConfig, AnnIndex

    faiss.omp_set_num_threads(1)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    base = None
    if args.vectors == "realish":
        if args.base is None:
            raise SystemExit("--vectors realish needs --base FILE.npy (a bundle's text or two-tower item vectors)")
        base = np.load(args.base, allow_pickle=False).astype(np.float32)
        if base.ndim != 2 or base.shape[1] != args.dim:
            raise SystemExit(f"--base {args.base} has shape {base.shape}; --dim says {args.dim}")
    t = time.perf_counter()
    vectors = make_vectors(args.vectors, args.n, args.dim, base, args.noise, args.seed)
    tune_q = make_vectors(args.vectors, args.queries, args.dim, base, args.noise, args.seed + 1)
    eval_q = make_vectors(args.vectors, args.queries, args.dim, base, args.noise, args.seed + 2)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    _, truth = faiss.knn(eval_q, vectors, 200, metric=faiss.METRIC_INNER_PRODUCT)
    exact_s = time.perf_counter() - t
    qfile, tfile = work / "queries.npy", work / "truth.npy"
    np.save(qfile, eval_q, allow_pickle=False)
    np.save(tfile, truth.astype(np.int64), allow_pickle=False)
    result: dict = {"n": args.n, "dim": args.dim, "vectors": args.vectors, "noise": args.noise,
                    "base": str(args.base) if args.base else None, "base_rows": None if base is None else len(base),
                    "faiss": faiss.__version__, "generate_s": round(gen_s, 1),
                    "exact_search_s_per_query": round(exact_s / args.queries, 4),
                    "flat_formula_bytes": 4.0 * args.n * args.dim, "indexes": {}}
    print(f"{args.n} x {args.dim} {args.vectors} vectors in {gen_s:.1f} s; exact top-200 of "
          f"{args.queries} queries in {exact_s:.1f} s", flush=True)
    for kind in args.kinds:
        t = time.perf_counter()
        config = AnnConfig(kind=kind, recall_target=args.recall_target, k_tune=args.k_tune, seed=args.seed)
        ann = AnnIndex.build(vectors, config, tune_queries=tune_q)
        build_s = time.perf_counter() - t
        folder = work / kind
        shutil.rmtree(folder, ignore_errors=True)
        files = ann.save(folder)
        info = ann.info()
        del ann
        sizes = {p.name: p.stat().st_size for p in files}
        entry = {"factory": info["factory"], "params": info["params"], "build_s": round(build_s, 1),
                 "k_tune": info["tuning"]["k"], "tuned_recall": info["tuning"]["recall"], "target_met": info["tuning"]["met"],
                 "tuning_curve": info["tuning"]["curve"], "file_bytes": sizes,
                 "formula_bytes": formula_bytes(kind, args.n, args.dim, info["factory"])}
        print(f"{kind}: {info['factory']} built and tuned in {build_s:.1f} s, {info['params']}, "
              f"tuned recall@{info['tuning']['k']} {info['tuning']['recall']}; files {sizes}", flush=True)
        out = subprocess.run([sys.executable, __file__, "--measure", str(folder), "--query-file", str(qfile),
                              "--truth-file", str(tfile)], check=True, capture_output=True, text=True)
        entry["serving"] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{kind}: served {json.dumps(entry['serving'])}", flush=True)
        result["indexes"][kind] = entry
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if not args.keep:
        qfile.unlink()
        tfile.unlink()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors to index (default 1,000,000)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--vectors", choices=("realish", "random"), default="realish")
    ap.add_argument("--base", type=Path, help="real float32 (rows, dim) .npy for --vectors realish")
    ap.add_argument("--noise", type=float, default=0.5)
    ap.add_argument("--kinds", nargs="+", default=["ivf_pq", "ivf_sq8"],
                    choices=("flat", "hnsw", "ivf_sq8", "ivf_pq"))
    ap.add_argument("--recall-target", type=float, default=0.95)
    ap.add_argument("--k-tune", type=int, default=200, help="depth the index is tuned at (default 200, "
                    "the pipeline's per_source_k, as tandem build tunes it)")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=Path("/tmp/faiss_sizing"))
    ap.add_argument("--keep", action="store_true", help="keep the index folders under --work")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--query-file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--truth-file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        q = np.load(args.query_file, allow_pickle=False)
        truth = np.load(args.truth_file, allow_pickle=False)
        print(json.dumps(measure(args.measure, q, truth)))
        return 0
    result = run(args)
    result["peak_rss_kb"] = _status_kb()["VmHWM"]
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
