"""Text-encoding rate of Tandem's TextEncoder beside bare sentence-transformers, same run.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/text_encoding.py --data /work/shared/data/beauty --n 4000

Both encode the same item texts (``Catalog.text``) with the same model folder and batch size;
the ratio shows the wrapper's overhead (tokenisation, batching, normalisation are the same code).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=4000, help="items to encode")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from tandem.index_builder.cleaning import load_dataset
    from tandem.retrieval.text_tower import TextEncoder, TextEncoderConfig, default_model_path

    cat = load_dataset(args.data).catalog
    texts = [cat.text(i) for i in range(min(args.n, len(cat)))]
    enc = TextEncoder(TextEncoderConfig(batch_size=args.batch_size, backend="torch"))  # the wrapper over the same model
    bare = SentenceTransformer(str(default_model_path()), device="cpu")
    bare.max_seq_length = enc.config.max_seq_length
    enc.encode(texts[:64])  # load + warm up both
    bare.encode(texts[:64], batch_size=args.batch_size)
    rows = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        a = bare.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        t_bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        b = enc.encode(texts)
        t_ours = time.perf_counter() - t0
        rows.append((t_bare, t_ours))
        print(f"repeat {r + 1}: bare {len(texts) / t_bare:,.0f} texts/s, tandem {len(texts) / t_ours:,.0f} texts/s")
    t_bare = min(x for x, _ in rows)
    t_ours = min(y for _, y in rows)
    print(f"\n{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"{len(texts)} texts, mean {np.mean([len(t) for t in texts]):.0f} chars")
    print("| encoder | texts/s | ratio to bare |\n|---|---|---|")
    print(f"| bare sentence-transformers | {len(texts) / t_bare:,.0f} | 1.00 |")
    print(f"| tandem TextEncoder | {len(texts) / t_ours:,.0f} | {t_bare / t_ours:.2f} |")
    print(f"max abs difference of vectors: {np.abs(a - b).max():.2e}")


if __name__ == "__main__":
    main()
