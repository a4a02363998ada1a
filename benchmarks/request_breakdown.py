"""Where one Recommend's time goes, in-process and on one thread: each candidate source, fusion,
the ranking features and the ranker, over the first N users of a bundle.

    .venv/bin/python benchmarks/request_breakdown.py --bundles BUNDLES [--users 500] [--no-memos]

As ``tandem serve`` does, the users' memos (two-tower vector, text profile, history summary) are
filled first; ``--no-memos`` times every request computing them (a user's first request after
an event does).

Prints the mean and p99 milliseconds of each stage and of the whole `Pipeline.recommend` call
(the server adds transport and conversion on top; see serve_latency.py). Runs vary by ~10% on a
shared machine, so compare stages within one run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundles", type=Path, required=True)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--no-memos", action="store_true",
                    help="keep no user memos: every request runs the user tower and summarises the history")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(1)  # as tandem serve runs a request
    from tandem.ranking.api import RecommendRequest
    from tandem.ranking.features import compute_features
    from tandem.ranking.loader import load_engine
    from tandem.retrieval.fusion import fuse

    p = load_engine(args.bundles)
    users = p.histories.user_ids[: args.users + args.warmup]
    p.warm(0 if args.no_memos else p.n_users)  # as tandem serve does at load (--user-memos)
    names = p.available("recommend")
    ranker = p.rankers.get("recommend")
    times: dict[str, list[float]] = {n: [] for n in (*names, "fusion", "features", "ranker", "recommend")}
    tt = p.sources.get("two_tower")
    for i, user in enumerate(users):
        req, _ = p.user_request(user)  # the request Pipeline.recommend builds, with the user's memo
        if tt is not None:
            tt._last_user = None  # noqa: SLF001 - time the user tower, not its per-request cache
        lap = {}
        lists = []
        for name in names:
            t0 = time.perf_counter()
            lists.append(p.sources[name].retrieve(req, p.config.per_source_k))
            lap[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fused = fuse(lists, p.config.fused_k, p.config.fusion())
        lap["fusion"] = time.perf_counter() - t0
        ctx = p.context(req, "recommend")
        t0 = time.perf_counter()
        feats = compute_features(p.table, ctx, fused.items, fused.scores, fused.ranks, fused.source_scores)
        lap["features"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        if ranker is not None:
            ranker.score(feats)
        lap["ranker"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        p.recommend(RecommendRequest(user_id=user, k=10))
        lap["recommend"] = time.perf_counter() - t0
        if i >= args.warmup:
            for k, v in lap.items():
                times[k].append(v)
    memos = "no user memos" if args.no_memos else "user memos filled at load"
    print(f"bundle {p.version}: {p.n_items} items; {len(times['recommend'])} users; one thread; {memos}")
    print("| stage | mean ms | p99 ms |\n|---|---|---|")
    for k, v in times.items():
        a = np.array(v) * 1e3
        print(f"| {k} | {a.mean():.3f} | {np.percentile(a, 99):.3f} |")


if __name__ == "__main__":
    main()
