import time

import numpy as np
import pytest

from tandem.index_builder.splits import (
    SPLIT_PROTOCOLS,
    Targets,
    leave_last_out,
    make_split,
    no_split,
    temporal,
)
from tandem.retrieval.data import EVENT_CODE, Interactions


def _log(rows, user_ids):
    """rows: (user index, item, ts, event name) in file order."""
    u, i, t, e = zip(*rows, strict=True)
    return Interactions(list(user_ids), np.array(u), np.array(i), np.array(t),
                        np.array([EVENT_CODE[x] for x in e]), np.full(len(rows), np.nan))


V, P = "view", "purchase"
# user a (0): 0@1 view, 1@2 view, 0@3 buy, 2@4, 3@4 (tie: file order), 2@5 buy -> distinct 0,1,2,3
# user b (1): 5, 6 -> fewer than 3 distinct items: training only
# user c (2): file order 4@10, 5@9, 6@11, 4@12 -> by time 5,4,6,4 -> distinct 5,4,6
ROWS = [
    (0, 0, 1, V), (2, 4, 10, V), (0, 1, 2, V), (1, 5, 3, P), (0, 0, 3, P), (2, 5, 9, V),
    (0, 2, 4, V), (0, 3, 4, V), (1, 6, 4, P), (2, 6, 11, P), (0, 2, 5, P), (2, 4, 12, P),
]


def _hist(t: Targets, i):
    lo, hi = t.history_indptr[i], t.history_indptr[i + 1]
    return t.history_items[lo:hi].tolist(), t.history_ts[lo:hi].tolist(), t.history_events[lo:hi].tolist()


def test_leave_last_out_hand_example():
    s = leave_last_out(_log(ROWS, ["a", "b", "c"]))
    assert s.protocol["name"] == "leave-last-out"
    # test targets: a -> 3 (tie at ts 4 broken by file order), c -> 6; b has only 2 distinct items
    assert s.test.users.tolist() == [0, 2] and s.test.indptr.tolist() == [0, 1, 2]
    assert s.test.items.tolist() == [3, 6]
    # valid targets: a -> 2, c -> 4 (its first event at ts 10 comes before 6@11)
    assert s.valid.users.tolist() == [0, 2] and s.valid.items.tolist() == [2, 4]
    # valid history = training events; test history = training + validation events, in time order
    assert _hist(s.valid, 0) == ([0, 1, 0], [1, 2, 3], [0, 0, 3])
    assert _hist(s.valid, 1) == ([5], [9], [0])
    assert _hist(s.test, 0) == ([0, 1, 0, 2, 2], [1, 2, 3, 4, 5], [0, 0, 3, 0, 3])
    assert _hist(s.test, 1) == ([5, 4, 4], [9, 10, 12], [0, 0, 3])
    # training: every event on a non-target item (both of c's events on item 4 are held out), file order
    assert list(zip(s.train.users.tolist(), s.train.items.tolist(), s.train.ts.tolist(), strict=True)) == [
        (0, 0, 1), (0, 1, 2), (1, 5, 3), (0, 0, 3), (2, 5, 9), (1, 6, 4)]
    assert len(s.train_and_valid) == 12 - 2  # all but the test events (3@4 and 6@11)
    r = s.test.request(1)
    assert r.user_id == "c" and r.history.tolist() == [5, 4, 4] and r.history.dtype == np.int64
    assert r.history_events.dtype == np.int8 and r.now is None
    assert s.counts() == {"train_events": 6, "train_and_valid_events": 10, "valid_users": 2,
                          "valid_targets": 2, "test_users": 2, "test_targets": 2}


def test_targets_never_in_history_and_train_disjoint_random():
    rng = np.random.default_rng(0)
    n = 3000
    log = Interactions([str(u) for u in range(200)], rng.integers(0, 200, n), rng.integers(0, 50, n),
                       rng.integers(0, 100, n), rng.integers(0, 5, n), np.full(n, np.nan))
    s = leave_last_out(log)
    train_pairs = set(zip(s.train.users.tolist(), s.train.items.tolist(), strict=True))
    for t in (s.valid, s.test):
        for i in range(len(t)):
            u = int(t.users[i])
            assert not set(t.targets(i).tolist()) & set(t.history(i).tolist())
            assert all((u, int(x)) not in train_pairs for x in t.targets(i))
            assert np.all(np.diff(t.history_ts[t.history_indptr[i]:t.history_indptr[i + 1]]) >= 0)
    # every user with >= 3 distinct items has one target at each stage
    distinct = np.array([len(set(log.items[log.users == u].tolist())) for u in range(200)])
    assert s.test.users.tolist() == np.flatnonzero(distinct >= 3).tolist()
    assert len(s.train) + sum(int(np.sum((log.users == u) & np.isin(log.items, t)))
                              for u, t in [(int(s.valid.users[i]), s.valid.targets(i)) for i in range(len(s.valid))]
                              + [(int(s.test.users[i]), s.test.targets(i)) for i in range(len(s.test))]) == n


def test_temporal_explicit_cuts():
    # x (0): 0@1, 1@5, 0@6, 2@8, 1@9, 3@10; y (1): 4@9 only
    log = _log([(0, 0, 1, V), (0, 1, 5, V), (0, 0, 6, P), (0, 2, 8, V), (1, 4, 9, V), (0, 1, 9, P),
                (0, 3, 10, V)], ["x", "y"])
    s = temporal(log, cut_ts=8, valid_cut_ts=5)
    assert s.protocol == {"name": "temporal", "parameters": {
        "cut_ts": 8, "valid_cut_ts": 5, "valid_fraction": 0.1, "test_fraction": 0.1}}
    assert s.train.items.tolist() == [0]  # only 0@1 is before the validation cut
    # item 1 first met at 5 (validation period); item 0 was seen before -> not a target
    assert s.valid.users.tolist() == [0] and s.valid.items.tolist() == [1]
    assert _hist(s.valid, 0)[0] == [0]
    # test: 2 and 3 are new after 8; 1@9 was met in validation -> not a target; y is a cold user
    assert s.test.users.tolist() == [0, 1] and s.test.indptr.tolist() == [0, 2, 3]
    assert s.test.items.tolist() == [2, 3, 4]
    assert _hist(s.test, 0)[:2] == ([0, 1, 0], [1, 5, 6]) and _hist(s.test, 1)[0] == []
    assert len(s.train_and_valid) == 3
    assert s.valid.request(0).now == 5 and s.test.request(1).now == 8  # asked at the cut


def test_temporal_default_cuts_from_fractions():
    # one user, 10 new items at ts 1..10. test_fraction .2: cut at sorted[floor(10*.8)] = 9 (2 events >= 9);
    # valid_fraction .2: 8 events before 9, minus 2 -> sorted[6] = 7 (events 7, 8 in validation).
    log = _log([(0, k, k + 1, V) for k in range(10)], ["x"])
    s = temporal(log, valid_fraction=0.2, test_fraction=0.2)
    assert s.protocol["parameters"]["cut_ts"] == 9 and s.protocol["parameters"]["valid_cut_ts"] == 7
    assert s.test.items.tolist() == [8, 9] and s.valid.items.tolist() == [6, 7] and len(s.train) == 6
    s0 = temporal(log, valid_fraction=0.0, test_fraction=0.2)
    assert len(s0.valid) == 0 and len(s0.train) == 8


@pytest.mark.parametrize("kw", [dict(test_fraction=0.0), dict(valid_fraction=0.5, test_fraction=0.5),
                                dict(cut_ts=3, valid_cut_ts=5)])
def test_temporal_rejects_bad_parameters(kw):
    with pytest.raises(ValueError, match="temporal split"):
        temporal(_log(ROWS, ["a", "b", "c"]), **kw)


def test_no_split_and_make_split():
    log = _log(ROWS, ["a", "b", "c"])
    s = no_split(log)
    assert s.train is log and len(s.valid) == 0 and len(s.test) == 0 and s.test.n_targets == 0
    assert make_split(log, "none").protocol["name"] == "none"
    assert make_split(log, "leave-last-out").test.items.tolist() == [3, 6]
    assert set(SPLIT_PROTOCOLS) == {"leave-last-out", "temporal", "none"}
    with pytest.raises(ValueError, match="choose one of"):
        make_split(log, "random")


def test_split_is_fast_at_beauty_scale():
    rng = np.random.default_rng(1)
    n, n_users = 200_000, 22_000
    log = Interactions([str(u) for u in range(n_users)], rng.integers(0, n_users, n),
                       rng.integers(0, 12_000, n), rng.integers(0, 10**6, n), np.full(n, 3),
                       np.full(n, np.nan))
    t0 = time.perf_counter()
    s = leave_last_out(log)
    elapsed = time.perf_counter() - t0
    assert len(s.test) > 15_000
    assert elapsed < 2.0, f"leave_last_out took {elapsed:.2f}s"  # ~0.2 s on one core; room for a busy CI box
