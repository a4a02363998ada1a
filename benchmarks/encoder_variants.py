"""Text encoder variants side by side: speed (texts/s, one-query latency) and search quality.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/encoder_variants.py \\
        --data ../shared/data/homedepot --out /tmp/encvar

For every variant (torch fp32 sentence-transformers, its ONNX export on ONNX Runtime in fp32, and
int8 dynamic quantisations of that export with several recipes):

- quality: encode every item text (batches of 128, as the build does) and every evaluation-half
  query (one at a time, as the server does) of a search data folder (the texts and the half of
  ``../shared/tools/searcheval.py``), exhaustive inner-product top-100, one
  ``{"query", "items"}`` line per query into ``OUT/<variant>.jsonl``, scored by ``searcheval.py``
  (graded NDCG@10, Recall@100 of grade >= 2); the torch row is the scorer's "minilm_dense" anchor.
  Also the mean and the minimum cosine of each item vector to the torch one.
- speed, measured in the same run, the variants interleaved, best of ``--repeats``: offline
  texts/s (batch 128) with 1 and 2 threads, and texts per CPU-second with 1 thread, on the first
  ``--speed-n`` item texts; one-query encode p50/p99 (1 thread) over ``--queries`` distinct queries.

Item vectors are kept in ``OUT/<variant>.items.npy`` and reused by a later run (``--fresh`` to redo).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

#: variant -> (backend, int8 recipe keyword arguments)
VARIANTS: dict[str, tuple[str, dict]] = {
    "torch": ("torch", {}),
    "onnx": ("onnx", {}),
    "onnx-int8-tensor": ("onnx-int8", {"per_channel": False}),
    "onnx-int8-channel": ("onnx-int8", {"per_channel": True}),
    "onnx-int8-opt": ("onnx-int8", {"per_channel": True, "optimize": True}),
    # the feed-forward output projections (after GELU) left in fp32
    "onnx-int8-ffn-fp32": ("onnx-int8", {"per_channel": True, "keep_fp32": r"layer\.\d+/output/dense/MatMul"}),
}


def _scorer(path: Path):
    spec = importlib.util.spec_from_file_location("searcheval", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


class _Torch:
    def __init__(self, threads: int) -> None:
        from sentence_transformers import SentenceTransformer

        from tandem.retrieval.text_tower import default_model_path

        self.threads = threads
        self.model = SentenceTransformer(str(default_model_path()), device="cpu")
        self.model.max_seq_length = 128
        self.model.eval()

    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        import torch

        torch.set_num_threads(self.threads)  # a process-wide setting: the other torch encoder may have changed it
        return self.model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)


def _make(variant: str, folder: Path | None, threads: int):
    if variant == "torch":
        return _Torch(threads)
    from tandem.retrieval.onnx_encoder import OnnxEncoderSession

    return _Onnx(OnnxEncoderSession(folder, threads=threads))


class _Onnx:
    def __init__(self, session) -> None:
        self.session = session

    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        return self.session.encode(texts, batch_size)


def _export(variant: str, root: Path) -> Path | None:
    backend, recipe = VARIANTS[variant]
    if backend == "torch":
        return None
    from tandem.retrieval.onnx_encoder import Int8Recipe, export_encoder
    from tandem.retrieval.text_tower import default_model_path

    folder = root / variant
    if not (folder / "model.onnx").is_file():
        export_encoder(default_model_path(), folder, backend, 128, Int8Recipe(**recipe))
    return folder


def _bundle_vectors(bundle: Path, ids: list[str], texts: list[str], enc) -> np.ndarray:
    """The torch item vectors a torch fp32 bundle of the same data already holds, in ``ids`` order
    (items the bundle lacks are encoded); checked against a fresh encode of 256 random items."""
    from tandem.retrieval.catalog_io import load_catalog

    catalog = load_catalog(bundle / "catalog")
    held = np.load(bundle / "sources/text/text_vectors.npy", mmap_mode="r")
    out = np.empty((len(ids), held.shape[1]), dtype=np.float32)
    rows = np.array([catalog.index.get(i, -1) for i in ids], dtype=np.int64)
    out[rows >= 0] = held[rows[rows >= 0]]
    missing = np.flatnonzero(rows < 0)
    if missing.size:
        out[missing] = enc.encode([texts[i] for i in missing])
    sample = np.random.default_rng(0).choice(np.flatnonzero(rows >= 0), size=256, replace=False)
    diff = float(np.abs(enc.encode([texts[i] for i in sample]) - out[sample]).max())
    print(f"torch item vectors from {bundle}: {len(ids) - missing.size} held, {missing.size} encoded; "
          f"max abs difference to a fresh encode of 256 of them {diff:.1e}", flush=True)
    if diff > 1e-4:
        raise SystemExit(f"--torch-items {bundle}: its vectors are not this model's encode of these texts")
    return out


def _borrowed(path: Path, texts: list[str], enc, variant: str, lender: str, n: int = 2000) -> np.ndarray:
    """Another variant's item vectors, for a variant that gives the same vectors (fp32 ONNX and
    torch), after checking that on ``n`` random items; saves a whole-catalog encode."""
    vectors = np.load(path)
    sample = np.sort(np.random.default_rng(1).choice(len(texts), size=min(n, len(texts)), replace=False))
    diff = float(np.abs(enc.encode([texts[i] for i in sample]) - vectors[sample]).max())
    print(f"{variant}: item vectors of {lender}; max abs difference on {len(sample)} random items {diff:.1e}",
          flush=True)
    if diff > 1e-4:
        raise SystemExit(f"--borrow-items {variant}:{lender}: the two do not give the same vectors ({diff:.1e})")
    return vectors


def _top100(qv: np.ndarray, iv: np.ndarray) -> np.ndarray:
    out = np.empty((qv.shape[0], 100), dtype=np.int64)
    for s in range(0, qv.shape[0], 256):
        sc = qv[s:s + 256] @ iv.T
        top = np.argpartition(-sc, 100, axis=1)[:, :100]
        for r in range(top.shape[0]):
            out[s + r] = top[r][np.argsort(-sc[r, top[r]], kind="stable")]
    return out


def _speed(encoders: dict, texts: list[str], queries: list[str], repeats: int) -> dict[str, dict]:
    """texts/s and one-query latency per variant, the variants interleaved within each repeat."""
    res: dict[str, dict] = {v: {"wall1": [], "cpu1": [], "wall2": [], "q": []} for v in encoders}
    for _ in range(repeats):
        for v, enc in encoders.items():
            for threads in (1, 2):
                e = enc[threads]
                e.encode(texts[:32])
                w0, c0 = time.perf_counter(), time.process_time()
                e.encode(texts)
                w, c = time.perf_counter() - w0, time.process_time() - c0
                res[v][f"wall{threads}"].append(len(texts) / w)
                if threads == 1:
                    res[v]["cpu1"].append(len(texts) / c)
            lat = []
            for q in queries:
                t0 = time.perf_counter()
                enc[1].encode([q], batch_size=1)
                lat.append((time.perf_counter() - t0) * 1e3)
            res[v]["q"].append(lat)
    out = {}
    for v, r in res.items():
        lat = min(r["q"], key=lambda x: float(np.percentile(x, 50)))
        out[v] = {"texts_s_1t": max(r["wall1"]), "texts_per_cpu_s_1t": max(r["cpu1"]), "texts_s_2t": max(r["wall2"]),
                  "query_p50_ms": float(np.percentile(lat, 50)), "query_p99_ms": float(np.percentile(lat, 99))}
    return out


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="search data folder (items.jsonl.gz, queries.jsonl.gz)")
    ap.add_argument("--out", required=True, help="folder for the run files, vectors and exported models")
    ap.add_argument("--scorer", default="../shared/tools/searcheval.py", help="the independent scorer")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    ap.add_argument("--threads", type=int, default=1, help="threads for the quality encodes")
    ap.add_argument("--speed-n", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--borrow-items", default="", help="VARIANT:LENDER,...: VARIANT takes LENDER's item vectors "
                                                        "after a check on 2,000 items (fp32 ONNX and torch)")
    ap.add_argument("--speed-variants", help="variants timed (default: --variants)")
    ap.add_argument("--torch-items", help="a torch fp32 bundle folder of the same data: take the torch item "
                                          "vectors from it (checked on a sample) instead of encoding them")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--json", help="also write the table here")
    args = ap.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    borrow = dict(pair.split(":", 1) for pair in args.borrow_items.split(",") if pair)
    scorer = _scorer(Path(args.scorer))
    items, qrels = scorer.load(args.data)
    ids = list(items)
    texts = [items[i] for i in ids]
    queries = [q for q in qrels if scorer.in_split(q, "eval")]
    print(f"{len(texts)} items, {len(queries)} evaluation-half queries; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    folders = {v: _export(v, out / "models") for v in variants}
    rows: dict[str, dict] = {v: {} for v in variants}
    if not args.skip_quality:
        for v in variants:
            vec_path, q_path = out / f"{v}.items.npy", out / f"{v}.queries.npy"
            enc = _make(v, folders[v], args.threads)
            c0, w0 = time.process_time(), time.perf_counter()
            if vec_path.is_file() and not args.fresh:
                iv = np.load(vec_path)
            elif v == "torch" and args.torch_items:
                iv = _bundle_vectors(Path(args.torch_items), ids, texts, enc)
                np.save(vec_path, iv)
            elif v in borrow:
                iv = _borrowed(out / f"{borrow[v]}.items.npy", texts, enc, v, borrow[v])
            else:
                iv = enc.encode(texts)
                np.save(vec_path, iv)
            if q_path.is_file() and not args.fresh:
                qv = np.load(q_path)
            elif VARIANTS[v][0] == "onnx-int8":
                # one query at a time, as the server encodes them (int8 activations are quantised per
                # batch: a batch of queries would not give the served vectors)
                qv = np.concatenate([enc.encode([q], batch_size=1) for q in queries])
                np.save(q_path, qv)
            else:  # fp32: a vector does not depend on its batch (tests/retrieval/test_onnx_encoder.py)
                qv = enc.encode(queries)
                np.save(q_path, qv)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            top = _top100(qv, iv)
            run = out / f"{v}.jsonl"
            with run.open("w") as f:
                for q, row in zip(queries, top, strict=True):
                    f.write(json.dumps({"query": q, "items": [ids[j] for j in row]}) + "\n")
            s = scorer.score(args.data, str(run), "eval")
            rows[v].update({"ndcg@10": s["ndcg@10"], "recall@100": s["recall@100_grade>=2"],
                            "encode_cpu_s": round(cpu, 1), "encode_wall_s": round(wall, 1)})
            print(v, json.dumps(rows[v]), f"load {os.getloadavg()[0]:.2f}", flush=True)
        ref_path = out / "torch.items.npy"
        if ref_path.is_file():
            ref = np.load(ref_path)
            for v in (v for v in variants if (out / f"{v}.items.npy").is_file()):
                cos = (np.load(out / f"{v}.items.npy") * ref).sum(axis=1)
                rows[v].update({"cos_mean": float(cos.mean()), "cos_min": float(cos.min())})
    if args.skip_speed:
        if args.json:
            Path(args.json).write_text(json.dumps({"rows": rows}, indent=2))
        return
    load0 = os.getloadavg()
    timed = [v.strip() for v in (args.speed_variants or args.variants).split(",") if v.strip()]
    for v in timed:
        folders.setdefault(v, _export(v, out / "models"))
        rows.setdefault(v, {})
    encoders = {v: {t: _make(v, folders[v], t) for t in (1, 2)} for v in timed}
    speed = _speed(encoders, texts[:args.speed_n], queries[:args.queries], args.repeats)
    load1 = os.getloadavg()
    for v in timed:
        rows[v].update(speed[v])
    base = rows[timed[0]]
    print(f"\nspeed on {args.speed_n} item texts (mean {np.mean([len(t) for t in texts[:args.speed_n]]):.0f} chars), "
          f"{args.queries} one-query encodes, best of {args.repeats}; load average {load0[0]:.2f} before, "
          f"{load1[0]:.2f} after\n")
    print("| variant | NDCG@10 | Recall@100 | cosine to torch (mean / min) | texts/s 1 thread | texts per CPU-s "
          "| texts/s 2 threads | query p50 ms | query p99 ms | speed vs first |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for v in timed:
        r = rows[v]
        cos = "-" if r.get("cos_mean") is None else f"{r['cos_mean']:.4f} / {r['cos_min']:.4f}"
        print(f"| {v} | {r.get('ndcg@10', '-')} | {r.get('recall@100', '-')} | {cos} | {r['texts_s_1t']:,.0f} | "
              f"{r['texts_per_cpu_s_1t']:,.0f} | {r['texts_s_2t']:,.0f} | {r['query_p50_ms']:.2f} | "
              f"{r['query_p99_ms']:.2f} | {r['texts_per_cpu_s_1t'] / base['texts_per_cpu_s_1t']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load": [load0, load1]}, indent=2))


if __name__ == "__main__":
    main()
