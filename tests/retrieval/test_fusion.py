import numpy as np
import pytest

from retrieval.base import Candidates
from retrieval.fusion import FusionConfig, fuse


def C(items, scores, source):
    return Candidates(np.array(items, np.int64), np.array(scores, np.float32), source)


def test_rrf_hand_values_and_provenance():
    a = C([1, 2, 3], [0.9, 0.8, 0.1], "a")
    b = C([3, 4], [5.0, 4.0], "b")
    f = fuse([a, b, C([], [], "empty")], k=10, config=FusionConfig(rrf_k=1))
    # item 3: 1/(1+3) + 1/(1+1) = 0.75; item 1: 1/2 = 0.5; item 2: 1/3; item 4: 1/3 (tie -> lower id first)
    assert f.items.tolist() == [3, 1, 2, 4]
    np.testing.assert_allclose(f.scores, [0.75, 0.5, 1 / 3, 1 / 3], rtol=1e-6)
    assert f.sources == ("a", "b", "empty")
    assert f.ranks.tolist() == [[3, 1, 2, 0], [1, 0, 0, 2], [0, 0, 0, 0]]
    assert f.source_scores[1, 0] == 5.0 and np.isnan(f.source_scores[0, 3])


def test_weighted_normalises_each_list():
    a = C([1, 2], [10.0, 0.0], "a")
    b = C([2, 3], [1.0, 0.5], "b")
    f = fuse([a, b], k=2, config=FusionConfig(method="weighted", weights={"a": 1.0, "b": 2.0}))
    # a: 1 -> 1, 2 -> 0; b: 2 -> 1, 3 -> 0  =>  1: 1, 2: 0 + 2 = 2, 3: 0
    assert f.items.tolist() == [2, 1] and f.scores.tolist() == [2.0, 1.0]


def test_quota_guarantees_a_place():
    strong = C(list(range(10)), np.linspace(1, 0, 10), "strong")
    weak = C([99, 98], [1.0, 0.9], "weak")
    plain = fuse([strong, strong, weak], k=3, config=FusionConfig())
    assert 99 not in plain.items.tolist()
    q = fuse([strong, strong, weak], k=3, config=FusionConfig(quotas={"weak": 1}))
    assert 99 in q.items.tolist() and len(q) == 3


def test_empty_and_bad_config():
    f = fuse([C([], [], "a")], k=5)
    assert len(f) == 0 and f.ranks.shape == (1, 0)
    with pytest.raises(ValueError, match="fusion.method"):
        FusionConfig(method="max")
