"""The synthetic shop: determinism, schema, world structure, behaviour signals, query truth, dirt."""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from tandem.index_builder import synthetic
from tandem.index_builder.readers import read_events, read_items, read_queries
from tandem.index_builder.synthetic import ITEM_TRUTH_DTYPE, SyntheticConfig, generate
from tandem.index_builder.synthetic_catalog import ItemSampler
from tandem.index_builder.synthetic_vocab import shop_vocabulary
from tandem.retrieval.data import EVENT_TYPES

FILES = ("items.jsonl.gz", "events.jsonl.gz", "queries.jsonl.gz", "truth.json", "truth_items.npy")


@pytest.fixture(scope="module")
def dirty(tmp_path_factory) -> Path:
    """Dirty data written in four user chunks, so the streaming path is what the dirt tests see."""
    out = tmp_path_factory.mktemp("dirty")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synthetic, "_USERS_PER_CHUNK", 250)
        generate(out, SyntheticConfig(items=1500, users=800, seed=7, queries=60))
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clean")
    generate(out, SyntheticConfig(items=1500, users=1500, seed=3, queries=60, dirt=False))
    return out


def _rows(path: Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _truth(folder: Path) -> dict:
    return json.loads((folder / "truth.json").read_text())


def _item_truth(folder: Path) -> np.ndarray:
    return np.load(folder / "truth_items.npy", allow_pickle=False)


def _index(item_id: str) -> int:
    return int(item_id[1:])


def _sha(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    cfg = SyntheticConfig(items=500, users=150, seed=11, queries=20)
    generate(tmp_path / "a", cfg)
    generate(tmp_path / "b", cfg)
    generate(tmp_path / "c", SyntheticConfig(items=500, users=150, seed=12, queries=20))
    a, b, c = _sha(tmp_path / "a"), _sha(tmp_path / "b"), _sha(tmp_path / "c")
    assert a == b
    assert all(a[name] != c[name] for name in FILES)


def test_files_pass_the_strict_readers(dirty, clean):
    for folder in (dirty, clean):
        truth = _truth(folder)
        items = list(read_items(folder / "items.jsonl.gz", strict=True))
        events = list(read_events(folder / "events.jsonl.gz", strict=True))
        queries = list(read_queries(folder / "queries.jsonl.gz", strict=True))
        assert len(items) == truth["counts"]["item_rows"]
        assert len(events) == truth["counts"]["events"]
        assert len(queries) == truth["counts"]["judgements"]
        assert all(it.price is None or it.price >= 0 for it in items)
        assert all(len(it.category.split(" > ")) == 3 and it.brand and it.tags for it in items)
        assert {e.event for e in events} == set(EVENT_TYPES)
        assert all((e.value is not None) == (e.event == "rate") for e in events)
        assert all(e.value in (1.0, 2.0, 3.0, 4.0, 5.0) for e in events if e.event == "rate")
        assert all(0 <= q.grade <= 3 for q in queries)
        # raw rows: the contract's field names and JSON types
        for rec in _rows(folder / "items.jsonl.gz")[:200]:
            assert set(rec) <= {"item_id", "title", "description", "category", "brand", "price", "tags", "in_stock"}
            assert isinstance(rec["tags"], list) and isinstance(rec["in_stock"], bool)
        for rec in _rows(folder / "events.jsonl.gz")[:200]:
            assert isinstance(rec["ts"], int) and rec["event"] in EVENT_TYPES


def test_category_tree_and_vocabulary():
    vocab = shop_vocabulary()
    assert len(vocab.tops) == 10 and vocab.n_leaves >= 50
    assert all(len(leaf.path.split(" > ")) >= 3 for leaf in vocab.leaves)
    assert len({leaf.path for leaf in vocab.leaves}) == vocab.n_leaves
    assert len(vocab.complement_pairs()) >= 30
    assert all(a != b for a, b in vocab.complement_pairs())


def test_items_share_words_within_a_leaf_and_a_query_finds_its_leaf(clean):
    items = [it for it in read_items(clean / "items.jsonl.gz")]
    query = "wireless earbuds noise cancelling".split()

    def overlap(it) -> int:
        words = set(f"{it.title} {it.description} {' '.join(it.tags)}".lower().replace(",", " ").split())
        return sum(w in words for w in query)

    scores = [overlap(it) for it in items]
    best = [it for it, sc in zip(items, scores, strict=True) if sc == max(scores)]
    assert max(scores) == 4 and all(it.category == "Electronics > Audio > Earbuds" for it in best)
    top = sorted(zip(scores, range(len(items)), strict=True), reverse=True)[:20]
    leaves = Counter(items[k].category for _, k in top)
    assert leaves.most_common(1)[0][0] == "Electronics > Audio > Earbuds"
    # items of a leaf share words: every earbud's text names the leaf's canonical noun
    assert all("wireless earbuds" in it.description.lower() for it in items if it.category.endswith("Earbuds"))


def test_popularity_is_heavy_tailed(clean):
    counts = np.sort(_item_truth(clean)["events"])[::-1]
    share = np.cumsum(counts) / counts.sum()
    assert share[len(counts) // 100 - 1] > 0.08  # top 1% of items; uniform would give 0.01
    assert share[len(counts) // 10 - 1] > 0.35   # top 10%
    assert counts[0] > 15 * np.median(counts)


def test_prices_are_log_normal_per_leaf(clean):
    truth = _item_truth(clean)
    vocab = shop_vocabulary()
    medians = np.array([np.median(truth["price"][truth["leaf"] == lf]) for lf in range(vocab.n_leaves)])
    expected = np.array([leaf.price for leaf in vocab.leaves])
    assert np.all(np.abs(np.log(medians / expected)) < 0.25)
    spread = np.abs(np.log(truth["price"] / medians[truth["leaf"]]))
    assert spread.max() < 0.875  # the cleaning rule's smallest outlier threshold


def test_events_per_user_near_target_and_stock_mostly_true(clean):
    truth = _truth(clean)
    mean = truth["counts"]["events"] / truth["counts"]["users"]
    assert 0.8 * 30 < mean < 1.2 * 30
    stock = _item_truth(clean)["in_stock"]
    assert 0.85 < stock.mean() < 1.0


def _sessions(folder: Path) -> list[list[dict]]:
    """Each user's events in time order, cut where 30 minutes pass without an event."""
    by_user: dict[str, list[dict]] = defaultdict(list)
    for rec in _rows(folder / "events.jsonl.gz"):
        by_user[rec["user_id"]].append(rec)
    sessions = []
    for rows in by_user.values():
        rows.sort(key=lambda r: r["ts"])
        cur = [rows[0]]
        for prev, r in zip(rows, rows[1:], strict=False):
            if r["ts"] - prev["ts"] > 1800:
                sessions.append(cur)
                cur = []
            cur.append(r)
        sessions.append(cur)
    return sessions


def test_funnel_order_inside_sessions_and_most_sessions_stop_early(clean):
    need = {"click": "view", "cart": "click", "purchase": "cart", "rate": "purchase"}
    sessions = _sessions(clean)
    stages = Counter()
    for s in sessions:
        seen: set[tuple[str, str]] = set()
        for r in s:
            if r["event"] in need:
                assert (r["item_id"], need[r["event"]]) in seen, (r, s)
            seen.add((r["item_id"], r["event"]))
        stages[max(("view", "click", "cart", "purchase").index(r["event"]) for r in s if r["event"] != "rate")] += 1
    n = sum(stages.values())
    assert stages[0] / n > 0.5          # most sessions only view
    assert 0.02 < stages[3] / n < 0.25  # some buy
    assert stages[0] > stages[1] > stages[3]


def test_complement_transitions_far_above_chance_and_directed(clean):
    truth = _truth(clean)
    leaves = {path: k for k, path in enumerate(truth["categories"]["leaves"])}
    comp = {(leaves[a], leaves[b]) for a, b in truth["categories"]["complements"]}
    leaf = _item_truth(clean)["leaf"]
    by_user: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for rec in _rows(clean / "events.jsonl.gz"):
        by_user[rec["user_id"]].append((rec["ts"], int(leaf[_index(rec["item_id"])]), rec["event"]))
    changes, after_buy = Counter(), Counter()  # (leaf, next different leaf) of any event / of a purchase
    for seq in by_user.values():
        seq.sort()
        for j, (_, a, event) in enumerate(seq):
            b = next((x[1] for x in seq[j + 1:] if x[1] != a), None)
            if b is None:
                continue
            if j + 1 < len(seq) and seq[j + 1][1] == b:
                changes[(a, b)] += 1
            if event == "purchase":
                after_buy[(a, b)] += 1
    for pairs in (changes, after_buy):
        total = sum(pairs.values())
        src, dst = Counter(), Counter()
        for (a, b), k in pairs.items():
            src[a] += k
            dst[b] += k
        observed = sum(k for p, k in pairs.items() if p in comp) / total
        chance = sum(src[a] * dst[b] for a, b in comp) / total**2
        assert observed > 5 * chance, (observed, chance)
    # order matters: after buying A people move on to its complement B, not the other way round
    one_way = [(a, b) for a, b in comp if (b, a) not in comp]
    forward = sum(after_buy[p] for p in one_way)
    backward = sum(after_buy[(b, a)] for a, b in one_way)
    assert forward > 3 * backward, (forward, backward)


def test_no_event_before_release(dirty):
    release = _item_truth(dirty)["release"]
    n = len(release)
    checked = 0
    for rec in _rows(dirty / "events.jsonl.gz"):
        k = _index(rec["item_id"])
        if k < n:
            assert rec["ts"] >= release[k], rec
            checked += 1
    assert checked > 10_000
    truth = _truth(dirty)
    assert ((release >= truth["window"]["start"]) & (release < truth["window"]["end"])).mean() > 0.1


def test_query_grades_follow_the_truth(dirty):
    truth = _truth(dirty)
    items = {it.item_id: it for it in read_items(dirty / "items.jsonl.gz")}
    comp = defaultdict(set)
    for a, b in truth["categories"]["complements"]:
        comp[a].add(b)
    judged = defaultdict(list)
    for q in read_queries(dirty / "queries.jsonl.gz"):
        judged[q.query_id].append(q)
    assert set(judged) == {t["query_id"] for t in truth["queries"]}
    sizes = [len(v) for v in judged.values()]
    assert 10 <= np.mean(sizes) <= 30 and max(sizes) <= 27
    grades = Counter()
    for t in truth["queries"]:
        rows = judged[t["query_id"]]
        assert {q.query for q in rows} == {t["query"]}
        assert (t["source_item"], 3) in {(q.item_id, q.grade) for q in rows}
        assert len({q.item_id for q in rows}) == len(rows)
        for q in rows:
            it = items[q.item_id]
            if it.category == t["leaf"]:
                exact = set(t["terms"]) <= set(it.tags) and t["brand"] in (None, it.brand)
                expected = 3 if exact else 2
            else:
                expected = 1 if it.category in comp[t["leaf"]] else 0
            assert q.grade == expected, (t, q, it)
            grades[q.grade] += 1
        words = t["query"].split()
        assert all(term.lower() in t["query"] for term in t["terms"]) and len(words) >= 1
    assert all(grades[g] > 0 for g in range(4))


def test_dirt_in_truth_matches_the_files(dirty):
    truth = _truth(dirty)
    dirt = truth["dirt"]
    rows = _rows(dirty / "items.jsonl.gz")
    ids = Counter(r["item_id"] for r in rows)
    assert sorted(k for k, v in ids.items() if v > 1) == dirt["duplicate_item_ids"]
    assert all(v <= 2 for v in ids.values())
    last = {r["item_id"]: r for r in rows}
    first: dict[str, dict] = {}
    for r in rows:
        first.setdefault(r["item_id"], r)
    for i in dirt["duplicate_item_ids"]:
        assert last[i]["price"] == dirt["redefined_prices"][i] and last[i]["in_stock"] != first[i]["in_stock"]
    untitled = sorted(k for k, r in last.items() if not r.get("title"))
    assert untitled == sorted(dirt["missing_title_with_description"] + dirt["missing_title_without_description"])
    assert sorted(k for k in untitled if last[k].get("description")) == dirt["missing_title_with_description"]
    assert sorted(k for k, r in last.items() if r.get("price") is None) == dirt["missing_price"]
    truth_price = _item_truth(dirty)["price"]
    for name, factor in (("price_outliers_high", 50.0), ("price_outliers_low", 0.01)):
        assert dirt[name]
        for i in dirt[name]:
            assert last[i]["price"] == dirt["outlier_prices"][i]
            assert last[i]["price"] == pytest.approx(max(0.01, truth_price[_index(i)] * factor), abs=0.006)
    kinds = [set(dirt[k]) for k in ("duplicate_item_ids", "missing_title_with_description",
                                    "missing_title_without_description", "missing_price",
                                    "price_outliers_high", "price_outliers_low")]
    assert sum(map(len, kinds)) == len(set().union(*kinds))  # disjoint, so every count is exact

    with gzip.open(dirty / "events.jsonl.gz", "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(lines) == truth["counts"]["events"]
    assert sum(k - 1 for k in Counter(lines).values()) == dirt["duplicate_events"] > 0
    events = [json.loads(x) for x in lines]
    assert sum(e["item_id"] not in ids for e in events) == dirt["unknown_item_events"] > 0
    assert {e["item_id"] for e in events if e["item_id"] not in ids} <= set(dirt["unknown_item_ids"])
    per_user = Counter(e["user_id"] for e in events)
    assert dirt["bots"] and all(per_user[u] == k for u, k in dirt["bots"].items())
    ordinary = [k for u, k in per_user.items() if u not in dirt["bots"]]
    assert min(dirt["bots"].values()) > 5 * max(ordinary) / 2
    # apart from the injected copies (written after their original), each user's log is in strict
    # time order across the four chunks: the simulation itself never repeats an event
    last_ts: dict[str, int] = {}
    seen: set[str] = set()
    for line, e in zip(lines, events, strict=True):
        if line in seen or e["item_id"] not in ids:
            continue
        seen.add(line)
        assert e["ts"] > last_ts.get(e["user_id"], -1), e
        last_ts[e["user_id"]] = e["ts"]
    with_events = {e["item_id"] for e in events}
    assert sorted(i for i in dirt["missing_title_without_description"] if i in with_events) == \
        dirt["missing_title_without_description_with_events"]


def test_no_dirt_means_clean_files(clean):
    truth = _truth(clean)
    assert truth["counts"]["bots"] == 0
    assert all(not v for k, v in truth["dirt"].items() if k != "enabled")
    rows = _rows(clean / "items.jsonl.gz")
    assert len({r["item_id"] for r in rows}) == len(rows) == truth["counts"]["items"]
    assert all(r.get("title") and r.get("price") is not None for r in rows)
    with gzip.open(clean / "events.jsonl.gz", "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert len(set(lines)) == len(lines)


def test_cleaning_report_finds_exactly_the_injected_dirt(dirty):
    """Every expected count is exact. The only statistical rule, price outliers (robust z-score
    within the leaf), needs no tolerance: honest prices stay within exp(0.6) of the leaf median
    and every leaf has at least 5 priced items, below the rule's smallest threshold exp(0.875),
    while injected outliers are 50x or 0.01x."""
    from tandem.index_builder.cleaning import load_dataset

    expected = _truth(dirty)["expected_cleaning"]
    result = load_dataset(dirty)
    report = result.report.to_dict()
    assert report["duplicate_item_ids"] == expected["duplicate_item_ids"]
    assert report["titles_filled"] == expected["titles_filled"]
    assert report["items_dropped"]["no_title"] == expected["items_dropped_no_title"]
    assert report["untitled_items_kept"] == expected["untitled_items_kept"]
    assert report["prices_imputed"] == expected["prices_imputed"]
    assert report["price_outliers"] == expected["price_outliers"]
    for reason, n in expected["events_dropped"].items():
        assert report["events_dropped"][reason] == n, reason
    assert sorted(b["user_id"] for b in report["bot_users"]) == expected["bot_users"]
    dirt = _truth(dirty)["dirt"]
    flagged = {result.catalog.item_ids[i] for i in np.flatnonzero(result.catalog.price_outlier)}
    assert flagged == set(dirt["price_outliers_high"] + dirt["price_outliers_low"])
    imputed = {result.catalog.item_ids[i] for i in np.flatnonzero(result.catalog.price_imputed)}
    assert imputed == set(dirt["missing_price"])


def test_item_sampler_against_brute_force():
    rng = np.random.default_rng(0)
    n = 200
    group = rng.integers(0, 4, n)
    release = rng.integers(0, 100, n)
    weight = rng.random(n)
    sampler = ItemSampler(group, release, weight)
    m = 40_000
    g = np.full(m, 2)
    t = np.full(m, 60)
    got = sampler.draw(g, t, rng.random(m))
    ok = (group == 2) & (release <= 60)
    assert np.all(ok[got])
    freq = np.bincount(got, minlength=n)[ok] / m
    want = weight[ok] / weight[ok].sum()
    assert np.abs(freq - want).max() < 0.02
    assert np.all(sampler.draw(np.array([1]), np.array([-5]), np.array([0.5])) == -1)  # nothing released yet


def test_item_truth_layout(dirty):
    arr = _item_truth(dirty)
    assert arr.dtype == ITEM_TRUTH_DTYPE and len(arr) == _truth(dirty)["counts"]["items"]


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="SyntheticConfig.items"):
        SyntheticConfig(items=0)
    with pytest.raises(ValueError, match="SyntheticConfig.duplicate_event_rate"):
        SyntheticConfig(duplicate_event_rate=1.5)
    with pytest.raises(ValueError, match="SyntheticConfig.users: expected an integer"):
        SyntheticConfig(users=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--items"):
        generate("/nonexistent/never", SyntheticConfig(items=40))


def test_generate_command(tmp_path, capsys):
    from tandem.index_builder.commands import generate as command

    parser = argparse.ArgumentParser()
    command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["generate", "--out", str(tmp_path / "d"), "--items", "400", "--users", "100",
                              "--seed", "5", "--events-per-user", "12", "--days", "30", "--no-dirt"])
    assert args.handler(args) == 0
    truth = _truth(tmp_path / "d")
    assert truth["config"]["events_per_user"] == 12 and truth["config"]["days"] == 30
    assert truth["window"]["end"] - truth["window"]["start"] == 30 * 86400
    assert not truth["config"]["dirt"] and truth["seed"] == 5
    assert "wrote" in capsys.readouterr().out


@pytest.mark.slow
def test_cleaning_matches_truth_at_a_larger_size(tmp_path):
    """Bots among 25,000 users and outliers among 50,000 items: the statistical rules still
    find exactly the injected sets (measured too at 1M items / 10M events, see the report)."""
    from tandem.index_builder.cleaning import load_dataset

    generate(tmp_path, SyntheticConfig(items=50_000, users=25_000, seed=21, queries=10))
    truth = _truth(tmp_path)
    expected = truth["expected_cleaning"]
    report = load_dataset(tmp_path).report.to_dict()
    assert sorted(b["user_id"] for b in report["bot_users"]) == expected["bot_users"]
    assert len(expected["bot_users"]) == 20
    assert report["price_outliers"] == expected["price_outliers"]
    assert report["prices_imputed"] == expected["prices_imputed"]
    assert {k: report["events_dropped"][k] for k in expected["events_dropped"]} == expected["events_dropped"]
    assert report["items_dropped"]["no_title"] == expected["items_dropped_no_title"]
