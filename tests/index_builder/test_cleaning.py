import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest

from tandem.index_builder.cleaning import CleaningConfig, load_dataset, load_queries, title_from_description
from tandem.index_builder.readers import ReadError
from tandem.index_builder.writers import write_events, write_items, write_queries
from tandem.retrieval.data import EVENT_CODE, Event, Item, Query

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
T0 = 1388534400


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


ITEM_ROWS = [
    {"item_id": "i1", "title": "Lipstick A", "category": "Beauty > Lips", "price": 10},
    {"item_id": "i2", "title": "Lipstick B", "category": "Beauty > Lips", "price": 99},
    {"item_id": "i3", "title": "Lipstick C", "category": "Beauty > Lips", "price": 11},
    {"item_id": "i4", "title": "Lipstick D", "category": "Beauty > Lips", "price": 9},
    {"item_id": "i5", "title": "Lipstick E", "category": "Beauty > Lips", "price": 500},  # outlier
    {"item_id": "i6", "title": "Lip gloss", "category": "Beauty > Lips"},  # Lips median 11
    {"item_id": "i7", "description": "Gentle soap for hands. Smells nice.", "category": "Beauty > Bath"},
    {"item_id": "i8", "title": "Candle", "category": "Home", "price": 20},
    {"item_id": "i9", "title": ""},  # no text, no events: dropped
    {"item_id": "i10"},  # no text but events: kept
    {"item_id": "i2", "title": "Lipstick B2", "category": "Beauty > Lips", "price": 12},  # last wins
    {"item_id": "i11", "title": "Gift card"},  # global median 12
    {"item_id": "i12", "title": "Face cream", "category": "Beauty > Face", "price": 25},
    {"item_id": "bad", "title": "Negative", "price": -1},  # skipped by the reader
]
EVENT_ROWS = [
    {"user_id": "u1", "item_id": "i1", "ts": T0},
    {"user_id": "u1", "item_id": "i2", "ts": T0 + 10, "event": "view"},
    {"user_id": "u1", "item_id": "i2", "ts": T0 + 10, "event": "view"},  # duplicate
    {"user_id": "u1", "item_id": "i2", "ts": T0 + 10, "event": "click"},
    {"user_id": "u1", "item_id": "i3", "ts": T0 + 20, "event": "rate", "value": 4.0},
    {"user_id": "u1", "item_id": "i3", "ts": T0 + 20, "event": "rate", "value": 5.0},
    {"user_id": "u1", "item_id": "i3", "ts": T0 + 20, "event": "rate", "value": 4.0},  # duplicate
    {"user_id": "u2", "item_id": "i1", "ts": T0 + 5},
    {"user_id": "u2", "item_id": "ghost", "ts": T0 + 6},  # unknown item
    {"user_id": "u2", "item_id": "i9", "ts": "yesterday"},  # bad row, skipped by the reader
    {"user_id": "u2", "item_id": "i10", "ts": T0 + 8},
]
EXTRA = [Event("u3", "i4", T0 + 100, "cart"), Event("u1", "i1", T0), Event("u3", "nope", T0 + 101)]


@pytest.fixture
def shop(tmp_path):
    _jsonl(tmp_path / "items.jsonl", ITEM_ROWS)
    _jsonl(tmp_path / "events.jsonl", EVENT_ROWS)
    return tmp_path


def test_every_rule_on_a_hand_made_shop(shop):
    res = load_dataset(shop, extra_events=EXTRA)
    cat, log, rep = res.catalog, res.interactions, res.report
    assert cat.item_ids == ["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8", "i10", "i11", "i12"]
    assert cat.titles[1] == "Lipstick B2" and cat.titles[6] == "Gentle soap for hands" and cat.titles[8] == ""
    # imputed: i6 Lips median 11; i7 Bath has no prices -> Beauty median of 12,11,10,9,500,25 = 11.5;
    # i10 and i11 have no category -> global median of 9,10,11,12,20,25,500 = 12
    np.testing.assert_allclose(cat.prices, [10, 12, 11, 9, 500, 11, 11.5, 20, 12, 12, 25])
    assert cat.price_imputed.tolist() == [False] * 5 + [True, True, False, True, True, False]
    assert cat.price_outlier.tolist() == [False] * 4 + [True] + [False] * 6
    assert (rep.items_read, rep.items_kept, rep.items_dropped, rep.duplicate_item_ids) == (13, 11, {"no_title": 1}, 1)
    assert rep.duplicate_item_examples == ["i2"]
    assert (rep.titles_filled, rep.untitled_items_kept, rep.prices_imputed, rep.price_outliers) == (1, 1, 4, 1)
    assert rep.read["items"]["skipped"] == {"price": 1}

    # file rows 10 valid + 3 extra; 2 unknown (ghost, nope), 3 duplicates (2 in file, extra u1/i1)
    assert (rep.events_read, rep.extra_events, rep.events_kept) == (13, 3, 8)
    assert rep.events_dropped == {"future_ts": 0, "unknown_item": 2, "duplicate": 3, "bot": 0, "k_core": 0}
    assert rep.read["events"]["skipped"] == {"ts": 1}
    assert log.user_ids == ["u1", "u2", "u3"]
    assert log.users.tolist() == [0, 0, 0, 0, 0, 1, 1, 2]
    assert [cat.item_ids[i] for i in log.items] == ["i1", "i2", "i2", "i3", "i3", "i1", "i10", "i4"]
    assert log.events.tolist() == [EVENT_CODE[e] for e in
                                   ("purchase", "view", "click", "rate", "rate", "purchase", "purchase", "cart")]
    assert log.ts.tolist() == [T0, T0 + 10, T0 + 10, T0 + 20, T0 + 20, T0 + 5, T0 + 8, T0 + 100]
    assert log.values[3:5].tolist() == [4.0, 5.0] and np.isnan(log.values[[0, 1, 2, 5, 6, 7]]).all()
    assert (rep.users, rep.items, rep.items_with_events, rep.events) == (3, 11, 5, 8)

    d = json.loads(json.dumps(rep.to_dict()))
    assert d["events_dropped"]["duplicate"] == 3 and d["bot_users"] == []
    text = rep.summary()
    assert "result: 3 users, 11 items (5 with events), 8 events" in text
    assert "dropped: unknown_item 2, duplicate 3" in text


def test_strict_raises_on_the_first_bad_row(shop):
    with pytest.raises(ReadError, match=r'^items\.jsonl:14: field "price"'):
        load_dataset(shop, strict=True)
    bad = [Event("u", "i1", T0, "like")]
    _jsonl(shop / "items.jsonl", ITEM_ROWS[:-1])
    _jsonl(shop / "events.jsonl", EVENT_ROWS[:9] + EVENT_ROWS[10:])
    with pytest.raises(ReadError) as exc:
        load_dataset(shop, strict=True, extra_events=bad)
    assert str(exc.value) == "extra_events:1: field \"event\": expected one of view, click, cart, purchase, rate, got 'like'"
    rep = load_dataset(shop, extra_events=bad).report
    assert rep.extra_events == 0 and rep.read["extra_events"]["skipped"] == {"event": 1}


def test_catalog_without_prices_stays_nan(tmp_path):
    _jsonl(tmp_path / "items.jsonl", [{"item_id": "a", "title": "A"}, {"item_id": "b", "title": "B"}])
    _jsonl(tmp_path / "events.jsonl", [{"user_id": "u", "item_id": "a", "ts": 1}])
    res = load_dataset(tmp_path)
    assert np.isnan(res.catalog.prices).all() and not res.catalog.price_imputed.any()
    assert (res.report.prices_imputed, res.report.prices_missing) == (0, 2)


def test_k_core_iterates_to_a_fixed_point(tmp_path):
    _jsonl(tmp_path / "items.jsonl", [{"item_id": i, "title": i} for i in "xyz"])
    pairs = [("a", "x"), ("a", "y"), ("b", "x"), ("b", "y"), ("b", "z"), ("c", "z")]
    _jsonl(tmp_path / "events.jsonl", [{"user_id": u, "item_id": i, "ts": t} for t, (u, i) in enumerate(pairs)])
    # round 1 drops c (1 event); then z has 1 event and b/z goes; then all counts are 2
    res = load_dataset(tmp_path, CleaningConfig(min_user_events=2, min_item_events=2))
    assert res.report.k_core == {"rounds": 2, "users_removed": 1, "items_removed": 1, "events_removed": 2}
    assert res.report.events_dropped["k_core"] == 2
    assert res.interactions.user_ids == ["a", "b"]
    assert [res.catalog.item_ids[i] for i in res.interactions.items] == ["x", "y", "x", "y"]
    assert len(res.catalog) == 3  # the catalog keeps cold items
    assert "k-core: 2 rounds removed 1 users, 1 items, 2 events" in res.report.summary()
    off = load_dataset(tmp_path)
    assert off.report.k_core["rounds"] == 0 and len(off.interactions) == 6


def _population(tmp_path, extra_users):
    """60 ordinary users (3..12 events, one a day) plus the given (user, n, seconds apart) users."""
    rng = np.random.default_rng(7)
    items = [Item(f"i{k}", f"item {k}") for k in range(50)]
    events = []
    for u in range(60):
        for d in range(int(rng.integers(3, 13))):
            events.append(Event(f"u{u}", f"i{rng.integers(50)}", T0 + 86400 * d + u))
    for user, n, gap in extra_users:
        events += [Event(user, f"i{k % 50}", T0 + gap * k, "view") for k in range(n)]
    write_items(tmp_path / "items.jsonl.gz", items)
    write_events(tmp_path / "events.jsonl.gz", events)
    return len(events)


def test_bots_by_count_and_by_rate_but_not_heavy_users(tmp_path):
    n = _population(tmp_path, [("heavy", 300, 86400), ("crawler", 1500, 3600), ("burst", 200, 10)])
    res = load_dataset(tmp_path)
    bots = res.report.bot_users
    assert [(b["user_id"], b["events"], b["reasons"]) for b in bots] == [
        ("crawler", 1500, ["count"]), ("burst", 200, ["rate"])]
    assert bots[1]["active_hours"] == 1 and bots[1]["events_per_active_hour"] == 200.0
    assert res.report.events_dropped["bot"] == 1700
    assert len(res.interactions) == n - 1700 and res.report.users == 61
    assert "heavy" in res.interactions.user_index and "crawler" not in res.interactions.user_index
    kept = load_dataset(tmp_path, CleaningConfig(remove_bots=False))
    assert kept.report.bot_users == [] and len(kept.interactions) == n


def test_no_bots_in_an_ordinary_population(tmp_path):
    _population(tmp_path, [("heavy", 300, 86400)])
    assert load_dataset(tmp_path).report.bot_users == []


def test_duplicates_vectorised_match_a_set_oracle(tmp_path):
    rng = np.random.default_rng(3)
    n = 3000
    u, i, t = rng.integers(0, 20, n), rng.integers(0, 10, n), rng.integers(0, 6, n)
    e, v = rng.integers(0, 5, n), rng.choice([np.nan, 1.0, 2.0], n)
    write_items(tmp_path / "items.jsonl", (Item(f"i{k}", f"item {k}") for k in range(10)))
    evs = [Event(f"u{a}", f"i{b}", T0 + int(c), ("view", "click", "cart", "purchase", "rate")[d],
                 None if math.isnan(x) else float(x)) for a, b, c, d, x in zip(u, i, t, e, v, strict=True)]
    write_events(tmp_path / "events.jsonl", evs)
    seen, expected = set(), []
    for ev in evs:
        if ev not in seen:
            seen.add(ev)
            expected.append(ev)
    res = load_dataset(tmp_path, CleaningConfig(remove_bots=False))
    log, cat = res.interactions, res.catalog
    got = [Event(log.user_ids[a], cat.item_ids[b], int(c), ("view", "click", "cart", "purchase", "rate")[d],
                 None if math.isnan(x) else float(x))
           for a, b, c, d, x in zip(log.users, log.items, log.ts, log.events, log.values, strict=True)]
    assert got == expected and res.report.events_dropped["duplicate"] == n - len(expected)


def test_title_from_description():
    assert title_from_description("Gentle soap for hands. Smells nice.") == "Gentle soap for hands"
    assert title_from_description("<p>Hello <b>world</b>!</p> More text") == "Hello world !"
    words = " ".join(f"w{k}" for k in range(20)) + "."
    assert title_from_description(words) == " ".join(f"w{k}" for k in range(12))
    assert title_from_description(words, max_words=3) == "w0 w1 w2"
    assert title_from_description("   ") == "" and title_from_description("<br/>") == ""
    assert title_from_description("Version 2.5 is great. Really.") == "Version 2.5 is great"


@pytest.mark.parametrize("kwargs,message", [
    ({"min_user_events": -1}, "CleaningConfig.min_user_events: expected an integer >= 0 (0 turns it off), got -1"),
    ({"min_item_events": 2.5}, "CleaningConfig.min_item_events: expected an integer, got 2.5"),
    ({"bot_max_z": "6"}, "CleaningConfig.bot_max_z: expected a number, got '6'"),
    ({"bot_min_events": True}, "CleaningConfig.bot_min_events: expected an integer, got True"),
    ({"outlier_max_z": 0}, "CleaningConfig.outlier_max_z: expected a number > 0, got 0"),
    ({"outlier_min_scale": float("inf")}, "CleaningConfig.outlier_min_scale: expected a finite number, got inf"),
    ({"title_max_words": 0}, "CleaningConfig.title_max_words: expected an integer >= 1, got 0"),
    ({"remove_bots": 1}, "CleaningConfig.remove_bots: expected true or false, got 1"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError) as exc:
        CleaningConfig(**kwargs)
    assert str(exc.value) == message


def test_load_queries(shop):
    res = load_dataset(shop)
    assert load_queries(shop, res.catalog) is None
    write_queries(shop / "queries.jsonl", [Query("q1", "lipstick", "i1", 3), Query("q1", "lipstick", "gone", 2),
                                           Query("q2", "soap", "i7", 1, user_id="u1")])
    got = load_queries(shop, res.catalog, report=res.report)
    assert got == [Query("q1", "lipstick", "i1", 3), Query("q2", "soap", "i7", 1, user_id="u1")]
    assert res.report.queries == {"read": 3, "kept": 2, "unknown_item": 1}
    assert "queries: 3 read, 2 kept, 1 on unknown items" in res.report.summary()


def _cli(argv):
    from tandem.index_builder.commands import clean

    parser = argparse.ArgumentParser()
    clean.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.handler(args)


def test_clean_command(shop, capsys):
    out = shop / "rep" / "clean.json"
    assert _cli(["clean", "--data", str(shop), "--report", str(out), "--min-user-events", "3"]) == 0
    printed = capsys.readouterr().out
    assert "result: 1 users, 11 items (3 with events), 5 events" in printed
    rep = json.loads(out.read_text())
    assert rep["events_dropped"]["k_core"] == 2 and rep["read"]["events"]["skipped"] == {"ts": 1}
    with pytest.raises(ReadError, match=r'^items\.jsonl:14: field "price": expected a number >= 0, got -1$'):
        _cli(["clean", "--data", str(shop), "--strict"])
    with pytest.raises(SystemExit):
        _cli(["clean", "--data", str(shop), "--min-item-events", "-3"])


def test_beauty_loads_whole_and_clean():
    if not (DATA / "beauty" / "events.jsonl.gz").exists():
        pytest.skip("Amazon Beauty data not present under shared/data/beauty")
    res = load_dataset(DATA / "beauty")
    rep = res.report
    assert (rep.users, rep.items, rep.events) == (22363, 12101, 198502)
    assert len(res.interactions) == 198502 and res.interactions.n_users == 22363 and len(res.catalog) == 12101
    assert rep.bot_users == [] and rep.rows_skipped == 0
    assert rep.events_dropped == {"future_ts": 0, "unknown_item": 0, "duplicate": 0, "bot": 0, "k_core": 0}
    assert rep.untitled_items_kept == 1  # item 10205 has no text but 17 purchases


def test_empty_and_all_unknown_event_files(tmp_path):
    _jsonl(tmp_path / "items.jsonl", [{"item_id": "a", "title": "A"}])
    (tmp_path / "events.jsonl").write_text("")
    res = load_dataset(tmp_path)
    assert len(res.interactions) == 0 and res.interactions.user_ids == [] and len(res.catalog) == 1
    _jsonl(tmp_path / "events.jsonl", [{"user_id": "u", "item_id": "zz", "ts": 1}] * 3)
    res = load_dataset(tmp_path)
    assert res.report.events_dropped["unknown_item"] == 3 and res.report.users == 0
    assert res.interactions.users.dtype == np.int32 and len(res.interactions) == 0


def test_events_dated_in_the_future_are_dropped_and_counted(shop):
    now = T0 + 1_000
    future = [{"user_id": "u9", "item_id": "i4", "ts": 4_102_444_800 + k} for k in range(300)]  # year 2100
    _jsonl(shop / "events.jsonl", EVENT_ROWS + future + [{"user_id": "u9", "item_id": "i4", "ts": now + 86_000}])
    res = load_dataset(shop, now=now)
    assert res.report.events_dropped["future_ts"] == 300
    assert int(res.interactions.ts.max()) == now + 86_000  # inside the default day of skew: kept
    assert "future_ts 300" in res.report.summary()
    tight = load_dataset(shop, CleaningConfig(max_future_s=0), now=now)
    assert tight.report.events_dropped["future_ts"] == 301 and int(tight.interactions.ts.max()) < now
    with pytest.raises(ValueError, match="CleaningConfig.max_future_s: expected seconds >= 0, got -1"):
        CleaningConfig(max_future_s=-1)


def test_extra_events_with_bad_values_are_skipped_naming_the_field(shop):
    bad = [Event("u3", "i4", T0, "rate", float("inf")), Event("u3", "i4", -5), Event("u3", "i4", T0, "rate", math.nan),
           Event("u3", "i4", T0 * 1000), Event("u3", "i4", T0 + 1, "rate", 3.0)]
    res = load_dataset(shop, extra_events=bad)
    read = res.report.read["extra_events"]
    assert read["rows_ok"] == 1 and read["skipped"] == {"ts": 2, "value": 2}
    assert read["errors"][0] == "extra_events:1: field \"value\": expected a finite number or nothing, got inf"
    _jsonl(shop / "items.jsonl", ITEM_ROWS[:-1])  # no bad row in the files: strict reaches the extra events
    _jsonl(shop / "events.jsonl", EVENT_ROWS[:9])
    with pytest.raises(ReadError, match="extra_events:1: field \"value\""):
        load_dataset(shop, extra_events=bad, strict=True)


@pytest.mark.parametrize("events", [None, b""], ids=["no_events_file", "empty_events_file"])
def test_a_shop_without_events_loads_with_empty_interactions(tmp_path, events):
    _jsonl(tmp_path / "items.jsonl", ITEM_ROWS)
    if events is not None:
        (tmp_path / "events.jsonl").write_bytes(events)
    result = load_dataset(tmp_path)
    assert len(result.interactions) == 0 and result.interactions.n_users == 0
    assert "i8" in result.catalog.index and "i10" not in result.catalog.index  # no text and now no events
    assert result.report.events_read == 0
