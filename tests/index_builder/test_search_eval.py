"""The search evaluation protocol of issue #13 (index_builder/search_eval.py): the split on the
normalised text, and the three metrics checked by hand and against the independent scorer
``shared/tools/searcheval.py`` (imported by path; skipped when the shared folder is absent)."""

import hashlib
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from tandem.index_builder.search_eval import (
    QuerySet,
    group_queries,
    in_eval_half,
    normalize_query,
    search_metrics,
    split_queries,
)
from tandem.retrieval.data import Catalog, Item, Query

ROOT = Path(__file__).resolve().parents[2]


def searcheval_module():
    """The independent scorer beside the checkout (``../shared/tools``; for a worktree in
    ``wt/NAME``, ``../../shared/tools``), or a skip saying where it was looked for."""
    places = [ROOT.parent / "shared" / "tools" / "searcheval.py", ROOT.parents[1] / "shared" / "tools" / "searcheval.py"]
    for path in places:
        if path.is_file():
            spec = importlib.util.spec_from_file_location("searcheval", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    pytest.skip("the independent scorer searcheval.py is not at " + " or ".join(map(str, places)))


def _protocol_even(text: str) -> bool:
    return int(hashlib.sha1(text.encode()).hexdigest(), 16) % 2 == 0


def test_split_follows_the_protocol_on_known_strings():
    texts = ["angle bracket", "l bracket", "deck over", "42 hiking shoes", "red lipstick", "a", "ß straße"]
    expected = [_protocol_even(t) for t in texts]
    assert [in_eval_half(t) for t in texts] == expected
    assert 0 < sum(expected) < len(expected)  # both halves are exercised
    # normalised first: case and white space do not move a query between halves
    assert [in_eval_half("  " + t.upper().replace(" ", " \t ") + "\n") for t in texts] == \
        [_protocol_even(t.upper().lower()) for t in texts]
    assert normalize_query("  Angle\tBRACKET \n") == "angle bracket"


def test_group_queries_merges_spellings_and_split_uses_the_text():
    cat = Catalog.from_items(Item(f"i{i}", f"item {i}") for i in range(6))
    rows = [Query("q1", "Angle  Bracket", "i0", 3), Query("q2", "angle bracket", "i1", 1),
            Query("q2", "angle bracket", "i0", 2),  # the same pair again: the highest grade stays
            Query("q3", "deck over", "i2", 2), Query("q4", "l bracket", "i9", 3),  # i9 is not in the catalog
            Query("q5", "red lipstick", "i3", 0, user_id="u1")]
    qs = group_queries(rows, cat)
    assert qs.texts == ["angle bracket", "deck over", "red lipstick"]  # "l bracket" judged nothing we have
    assert qs.ids == ["q1", "q3", "q5"] and qs.user_ids == [None, None, "u1"]
    first = dict(zip(qs.items[:2].tolist(), qs.grades[:2].tolist(), strict=True))
    assert first == {0: 3.0, 1: 1.0}
    train, evaluate = split_queries(qs)
    assert evaluate.texts == [t for t in qs.texts if _protocol_even(t)]
    assert train.texts == [t for t in qs.texts if not _protocol_even(t)]
    assert len(train) + len(evaluate) == len(qs)


def _qs(judged: list[dict[int, int]]) -> QuerySet:
    items, grades, ptr = [], [], [0]
    for rel in judged:
        items += list(rel)
        grades += list(rel.values())
        ptr.append(len(items))
    n = len(judged)
    return QuerySet([f"q{i}" for i in range(n)], [f"query {i}" for i in range(n)], [None] * n,
                    np.array(ptr, np.int64), np.array(items, np.int64), np.array(grades, np.float32))


def test_metrics_by_hand():
    # query 0: judged 5 (grade 3), 6 (grade 1), 7 (grade 2); the list is 9 (unjudged), 7, 5
    # query 1: only grade 0 and 1 judgements: NDCG counts, recall has nothing to find
    # query 2: judged 4 (grade 2), never retrieved
    qs = _qs([{5: 3, 6: 1, 7: 2}, {1: 0, 2: 1}, {4: 2}])
    ranked = [np.array([9, 7, 5, -1]), np.array([2, 1]), np.array([0, 3])]
    ideal0 = 7 + 3 / math.log2(3) + 1 / 2
    full0 = 3 / math.log2(3) + 7 / 2
    cond0 = 3 + 7 / math.log2(3)  # the unjudged 9 dropped: 7 and 5 move up a place
    got = search_metrics(ranked, qs)
    assert got["ndcg@10"] == pytest.approx((full0 / ideal0 + 1.0 + 0.0) / 3)
    assert got["ndcg@10_condensed"] == pytest.approx((cond0 / ideal0 + 1.0 + 0.0) / 3)
    assert got["recall@100"] == pytest.approx((1.0 + 0.0) / 2)  # queries 0 and 2 have grade >= 2 items
    assert got["queries"] == 3


def test_metrics_agree_with_the_independent_scorer_on_random_runs():
    se = searcheval_module()
    rng = np.random.default_rng(3)
    judged, ranked = [], []
    for _ in range(60):
        rel = {int(i): int(rng.integers(0, 4)) for i in rng.choice(150, rng.integers(1, 12), replace=False)}
        judged.append(rel)
        ranked.append(rng.permutation(150)[: rng.integers(0, 120)])
    ours = search_metrics(ranked, _qs(judged))
    qrels = {f"query {i}": {str(k): g for k, g in rel.items()} for i, rel in enumerate(judged)}
    runs = {f"query {i}": [str(int(x)) for x in row] for i, row in enumerate(ranked)}
    theirs = se.summarize(runs, qrels, "all")
    assert theirs["queries"] == 60 and theirs["missing"] == 0
    assert ours["ndcg@10"] == pytest.approx(theirs["ndcg@10"], abs=1e-4)
    assert ours["ndcg@10_condensed"] == pytest.approx(theirs["ndcg@10_condensed"], abs=1e-4)
    assert ours["recall@100"] == pytest.approx(theirs["recall@100_grade>=2"], abs=1e-4)
    assert [in_eval_half(t) for t in qrels] == [se.in_split(t, "eval") for t in qrels]
