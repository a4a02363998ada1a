"""Ranker compression: p50 latency of scoring one candidate list and NDCG@10 of the final list,
for the serving path (the eval-mode model in numpy, fp32), fp32 torch, int8 dynamic-quantised torch
and ONNX Runtime, in one run.

    .venv/bin/python benchmarks/ranker_variants.py --bundle BUNDLES --data DIR --users 2000

The bundle must have been built with a split (leave-last-out); test users' candidate lists are
computed once through the serving pipeline, then each variant scores the same lists.
"""

from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np


def _p50_ms(fn, lists, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        for x in lists:
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--users", type=int, default=2000)
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from tandem.index_builder.build import ranker_lists
    from tandem.index_builder.cleaning import load_dataset
    from tandem.index_builder.splits import make_split
    from tandem.ranking.loader import load_engine
    from tandem.ranking.ranker import ndcg_of_lists
    from tandem.retrieval.bundle import current_bundle

    torch.set_num_threads(1)
    folder = current_bundle(args.bundle)
    p = load_engine(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    split = make_split(load_dataset(args.data).interactions, manifest["split"]["name"],
                       **manifest["split"].get("parameters", {}))
    rows = np.random.default_rng(0).permutation(len(split.test))[: args.users]
    lists, info = ranker_lists(p, split.test, np.sort(rows))
    ranker = p.rankers["recommend"]
    feats = [lists.features[i][lists.mask[i]] for i in range(len(lists))]

    def torch_fp32(x):
        with torch.no_grad():
            return ranker.model(torch.from_numpy(np.ascontiguousarray(x))).numpy()

    variants = {
        "fp32 numpy (serving path)": lambda x: ranker.score(x),
        "fp32 torch": torch_fp32,
        "int8 dynamic torch": lambda x: ranker.score(x, quantized=True),
    }
    try:  # the ONNX export needs the `onnx` package, which is not a Tandem dependency
        buf = io.BytesIO()
        torch.onnx.export(ranker.model, torch.from_numpy(feats[0]), buf, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        sess = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])
        variants["fp32 onnxruntime"] = lambda x: sess.run(None, {"x": x})[0]
    except Exception as exc:  # noqa: BLE001
        print(f"onnxruntime variant skipped: {exc}")
    print(f"{len(lists)} test users, mean list {np.mean([f.shape[0] for f in feats]):.0f} candidates, "
          f"fused recall {info['fused_recall']:.4f}")
    print("| variant | p50 ms / list | NDCG@10 |\n|---|---|---|")
    for name, fn in variants.items():
        scores = np.full(lists.mask.shape, -np.inf, dtype=np.float32)
        for i, x in enumerate(feats):
            scores[i, : x.shape[0]] = fn(x)
        print(f"| {name} | {_p50_ms(fn, feats[:300]):.3f} | {ndcg_of_lists(scores, lists):.4f} |")


if __name__ == "__main__":
    main()
