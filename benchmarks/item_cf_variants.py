"""Item-CF variants on a leave-last-out split (full ranking, history excluded, one target per user).

    .venv/bin/python benchmarks/item_cf_variants.py --data /work/shared/data/beauty

Per user the last distinct item is the test target, the second last the validation target, the
rest is training. Validation: fit on training, history = training events. Test: fit on training
plus validation, history = those events. Every variant ranks the whole catalog with the user's
history excluded; the table prints Recall@10 / NDCG@10 on both stages (and Recall@50), plus the
fit time. Defaults of :class:`retrieval.item_cf.ItemCFConfig` are picked on the validation columns.

The reference row ``baseline`` is the plain item-to-item transition count (i -> next item,
scored from the last history item only).

Results on Amazon Beauty 5-core (12,101 items, 22,363 users, 198,502 events), 2-core shared CPU
container, 2026-11. Round 1 varied one field at a time from the then defaults (transition,
window 3, distance_decay 0.5, reverse_weight 0.5, history_len 10, recency_decay 0.5):

    variant            valid R@10  N@10   R@50 | test R@10  N@10   R@50
    baseline               0.0818 0.0538 0.1139 |    0.0721 0.0491 0.1023
    round-1 defaults       0.1040 0.0652 0.1820 |    0.0914 0.0574 0.1644
    cosine                 0.0765 0.0472 0.1398 |    0.0732 0.0462 0.1337
    jaccard                0.0819 0.0507 0.1464 |    0.0758 0.0479 0.1379
    trans w=1              0.0973 0.0612 0.1679 |    0.0851 0.0543 0.1517
    trans w=5              0.1045 0.0655 0.1828 |    0.0925 0.0579 0.1659
    trans w=10 dd=0.7      0.1056 0.0660 0.1868 |    0.0932 0.0583 0.1714
    trans rev=0            0.1033 0.0658 0.1773 |    0.0924 0.0586 0.1609
    trans rev=1            0.0977 0.0599 0.1745 |    0.0860 0.0530 0.1595
    trans pop=0.25         0.1003 0.0635 0.1731 |    0.0908 0.0581 0.1600
    trans rownorm          0.0988 0.0629 0.1808 |    0.0893 0.0580 0.1633
    trans hl=30d           0.0967 0.0588 0.1764 |    0.0853 0.0513 0.1609
    trans h=1              0.0922 0.0595 0.1502 |    0.0838 0.0549 0.1368
    trans rd=0.8           0.0982 0.0602 0.1786 |    0.0860 0.0514 0.1634
    user_cf                0.0675 0.0384 0.1274 |    0.0622 0.0346 0.1217

Round 2 combined the winners; the best on validation became the default (window 20,
distance_decay 0.8, reverse_weight 0.25):

    w=10 dd=0.7 rev=0.25   0.1072 0.0675 0.1882 |    0.0957 0.0601 0.1722
    w=10 dd=0.7 rev=0      0.1073 0.0674 0.1837 |    0.0959 0.0606 0.1688
    w=20 dd=0.8 rev=0.25   0.1077 0.0676 0.1892 |    0.0969 0.0604 0.1743   <- default
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np

from tandem.index_builder.cleaning import load_dataset
from tandem.index_builder.splits import Targets, leave_last_out
from tandem.retrieval.data import Catalog, Interactions
from tandem.retrieval.item_cf import ItemCF, ItemCFConfig, UserCF
from tandem.retrieval.metrics import ndcg_at_k, recall_at_k, top_k_excluding

_BATCH = 2048

#: name -> config overrides of ItemCFConfig() (the defaults row is ItemCFConfig() itself)
VARIANTS: dict[str, dict] = {
    "baseline": dict(similarity="transition", window=1, reverse_weight=0.0, history_len=1),
    "default": {},
    "cosine": dict(similarity="cosine"),
    "jaccard": dict(similarity="jaccard"),
    "cosine h=1": dict(similarity="cosine", history_len=1),
    "trans w=1": dict(window=1),
    "trans w=2": dict(window=2),
    "trans w=5": dict(window=5),
    "trans w=10 dd=0.7": dict(window=10, distance_decay=0.7),
    "trans dd=1.0": dict(distance_decay=1.0),
    "trans dd=0.3": dict(distance_decay=0.3),
    "trans rev=0": dict(reverse_weight=0.0),
    "trans rev=1": dict(reverse_weight=1.0),
    "trans pop=0.25": dict(pop_exponent=0.25),
    "trans pop=0.5": dict(pop_exponent=0.5),
    "trans rownorm": dict(row_normalise=True),
    "trans hl=30d": dict(half_life_days=30.0),
    "trans hl=365d": dict(half_life_days=365.0),
    "trans h=1": dict(history_len=1),
    "trans h=3": dict(history_len=3),
    "trans h=30": dict(history_len=30),
    "trans rd=0.3": dict(recency_decay=0.3),
    "trans rd=0.8": dict(recency_decay=0.8),
    # second round: combinations of the single changes that helped on validation
    "w=10 dd=0.7 rev=0.25": dict(window=10, distance_decay=0.7, reverse_weight=0.25),
    "w=10 dd=0.7 rev=0": dict(window=10, distance_decay=0.7, reverse_weight=0.0),
    "w=5 dd=0.7 rev=0.25": dict(window=5, distance_decay=0.7, reverse_weight=0.25),
    "w=20 dd=0.8 rev=0.25": dict(window=20, distance_decay=0.8, reverse_weight=0.25),
}


def _evaluate(model, targets: Targets) -> dict[str, float]:
    ranked = []
    for lo in range(0, len(targets), _BATCH):
        reqs = targets.requests(lo, lo + _BATCH)
        scores = model.score_all(reqs)
        hp = targets.history_indptr
        exclude = (hp[lo:lo + len(reqs) + 1] - hp[lo], targets.history_items[hp[lo]:hp[lo + len(reqs)]])
        ranked.append(top_k_excluding(scores, exclude, 50))
    r = np.concatenate(ranked)
    return {"R@10": recall_at_k(r, targets, 10), "N@10": ndcg_at_k(r, targets, 10), "R@50": recall_at_k(r, targets, 50)}


def run(catalog: Catalog, interactions: Interactions, names: list[str]) -> list[dict]:
    split = leave_last_out(interactions)
    rows = []
    for name in names:
        if name == "user_cf":
            make = UserCF
        else:
            config = dataclasses.replace(ItemCFConfig(), **VARIANTS[name])
            def make(config=config):
                return ItemCF(config)
        t0 = time.perf_counter()
        model = make().fit(catalog, split.train)
        fit_s = time.perf_counter() - t0
        valid = _evaluate(model, split.valid)
        test = _evaluate(make().fit(catalog, split.train_and_valid), split.test)
        rows.append({"variant": name, **{f"valid {k}": v for k, v in valid.items()},
                     **{f"test {k}": v for k, v in test.items()}, "fit s": fit_s})
        print(_format([rows[-1]], header=len(rows) == 1), flush=True)
    return rows


def _format(rows: list[dict], header: bool = True) -> str:
    cols = list(rows[0])
    lines = []
    if header:
        lines.append(" | ".join(f"{c:>18}" if i == 0 else f"{c:>11}" for i, c in enumerate(cols)))
    for r in rows:
        lines.append(" | ".join(f"{r[c]:>18}" if i == 0 else f"{r[c]:>11.4f}" for i, c in enumerate(cols)))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="folder with items and events files")
    parser.add_argument("--variants", nargs="*", default=[*VARIANTS, "user_cf"],
                        help=f"subset of: {', '.join(VARIANTS)}, user_cf")
    args = parser.parse_args()
    result = load_dataset(args.data)
    print(f"{len(result.catalog)} items, {result.interactions.n_users} users, {len(result.interactions)} events")
    print(f"defaults: {ItemCFConfig()}")
    run(result.catalog, result.interactions, args.variants)


if __name__ == "__main__":
    main()
