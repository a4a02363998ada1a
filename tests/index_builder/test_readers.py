import csv
import gzip
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tandem.index_builder.readers import (
    DataFiles,
    ReadError,
    ReadStats,
    file_format,
    find_data_files,
    parse_ts,
    read_event_rows,
    read_events,
    read_items,
    read_queries,
)
from tandem.retrieval.data import Event, Item, Query

T0 = 1388534400  # 2014-01-01T00:00:00Z

ITEM_ROWS = [
    {"item_id": "a1", "title": "Red lipstick", "description": "A red one. Lasts long.",
     "category": "Beauty > Makeup > Lips", "brand": "Acme", "price": 12.5, "tags": ["red", "matte"],
     "in_stock": True},
    {"item_id": 7, "title": "Blue nail polish", "price": 3, "in_stock": False, "color": "ignored"},
    {"item_id": "c3", "title": "Soap"},
]
ITEMS = [
    Item("a1", "Red lipstick", "A red one. Lasts long.", "Beauty > Makeup > Lips", "Acme", 12.5, ("red", "matte")),
    Item("7", "Blue nail polish", price=3.0, in_stock=False),
    Item("c3", "Soap"),
]
EVENT_ROWS = [
    {"user_id": "u1", "item_id": "a1", "ts": T0, "event": "view"},
    {"user_id": 5, "item_id": 7, "ts": "2014-01-01T00:00:10Z"},
    {"user_id": "u1", "item_id": "c3", "ts": T0 + 20, "event": "rate", "value": 4.5, "session": "x"},
]
EVENTS = [
    Event("u1", "a1", T0, "view"),
    Event("5", "7", T0 + 10, "purchase"),
    Event("u1", "c3", T0 + 20, "rate", 4.5),
]
QUERY_ROWS = [
    {"query_id": "q1", "query": "red lipstick", "item_id": "a1", "grade": 3, "user_id": "u1"},
    {"query_id": 2, "query": "soap", "item_id": "c3", "grade": 0},
]
QUERIES = [Query("q1", "red lipstick", "a1", 3, "u1"), Query("2", "soap", "c3", 0)]


def _write_jsonl(path, rows):
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")


def _write_csv(path, rows):
    cols = list(dict.fromkeys(k for r in rows for k in r))
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wt", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            out = []
            for c in cols:
                v = r.get(c, "")
                out.append("|".join(v) if isinstance(v, list) else ("true" if v is True else
                                                                    "false" if v is False else v))
            w.writerow(out)


def _write_parquet(path, rows, schema=None):
    cols = list(dict.fromkeys(k for r in rows for k in r))
    data = {c: [r.get(c) for r in rows] for c in cols}
    for c in ("item_id", "user_id", "query_id", "ts"):  # parquet columns need one type
        if c in data:
            data[c] = [None if v is None else str(v) for v in data[c]]
    pq.write_table(pa.table(data, schema=schema), path)


WRITERS = {".jsonl": _write_jsonl, ".jsonl.gz": _write_jsonl, ".csv": _write_csv, ".csv.gz": _write_csv,
           ".parquet": _write_parquet}


@pytest.mark.parametrize("suffix", list(WRITERS))
def test_round_trip_every_format(tmp_path, suffix):
    write = WRITERS[suffix]
    write(tmp_path / f"items{suffix}", ITEM_ROWS)
    write(tmp_path / f"events{suffix}", EVENT_ROWS)
    write(tmp_path / f"queries{suffix}", QUERY_ROWS)
    files = find_data_files(tmp_path)
    assert files == DataFiles(tmp_path, tmp_path / f"items{suffix}", tmp_path / f"events{suffix}",
                              tmp_path / f"queries{suffix}")
    stats = ReadStats()
    assert list(read_items(files.items, strict=True, stats=stats)) == ITEMS
    assert (stats.rows_read, stats.rows_ok, stats.rows_skipped) == (3, 3, 0)
    assert list(read_events(files.events, strict=True)) == EVENTS
    assert list(read_queries(files.queries, strict=True)) == QUERIES
    rows = list(read_event_rows(files.events, strict=True))
    assert rows[0] == ("u1", "a1", T0, 0, rows[0][4]) and math.isnan(rows[0][4])
    assert rows[2] == ("u1", "c3", T0 + 20, 4, 4.5)


def test_file_format_and_unknown_ending(tmp_path):
    assert [file_format(f"x{s}") for s in WRITERS] == ["jsonl", "jsonl", "csv", "csv", "parquet"]
    with pytest.raises(ValueError, match=r"x\.json: unknown data file type; name it with one of the endings "
                                         r"\.jsonl, \.jsonl\.gz, \.csv, \.csv\.gz, \.parquet"):
        file_format("x.json")


def test_find_data_files_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist or is not a folder"):
        find_data_files(tmp_path / "nope")
    (tmp_path / "items.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as exc:
        find_data_files(tmp_path)
    assert str(exc.value) == (f"data folder {tmp_path} has no items file: expected one of items.jsonl, "
                              "items.jsonl.gz, items.csv, items.csv.gz, items.parquet; found items.json, which "
                              "is not an accepted name (see docs/data.md)")
    _write_jsonl(tmp_path / "items.jsonl", ITEM_ROWS)
    # no events file: a search-only shop
    assert find_data_files(tmp_path) == DataFiles(tmp_path, tmp_path / "items.jsonl", None, None)
    (tmp_path / "events.json").write_text("{}")  # meant as events, misnamed: an error, not a search-only shop
    with pytest.raises(FileNotFoundError, match="has no events file: expected one of events.jsonl,.*; found "
                                                "events.json, which is not an accepted name"):
        find_data_files(tmp_path)
    (tmp_path / "events.json").unlink()
    _write_jsonl(tmp_path / "events.jsonl", EVENT_ROWS)
    assert find_data_files(tmp_path).queries is None
    _write_csv(tmp_path / "events.csv", EVENT_ROWS)
    with pytest.raises(ValueError) as exc:
        find_data_files(tmp_path)
    assert str(exc.value) == (f"data folder {tmp_path} has events in more than one format (events.jsonl, "
                              "events.csv); keep one and move the others away")


# One bad row per rule: (file name, rows, expected message). The bad row is always the second.
BAD = [
    ("items.jsonl", [{"title": "no id"}],
     'items.jsonl:2: field "item_id": expected a non-empty string or integer id, got nothing (the field is missing)'),
    ("items.jsonl", [{"item_id": "", "title": "empty id"}],
     'items.jsonl:2: field "item_id": expected a non-empty string or integer id, got ""'),
    ("items.jsonl", [{"item_id": True, "title": "bool id"}],
     'items.jsonl:2: field "item_id": expected a non-empty string or integer id, got true'),
    ("items.jsonl", [{"item_id": "x", "title": "neg", "price": -5}],
     'items.jsonl:2: field "price": expected a number >= 0, got -5'),
    ("items.jsonl", [{"item_id": "x", "title": "p", "price": "cheap"}],
     'items.jsonl:2: field "price": expected a number >= 0, got "cheap"'),
    ("items.jsonl", [{"item_id": "x", "title": ["a", "b"]}],
     'items.jsonl:2: field "title": expected a string, got ["a", "b"]'),
    ("items.jsonl", [{"item_id": "x", "title": "t", "tags": [1.5]}],
     'items.jsonl:2: field "tags": expected a list of strings (or one "|"-separated string), got [1.5]'),
    ("items.jsonl", [{"item_id": "x", "title": "t", "in_stock": "maybe"}],
     'items.jsonl:2: field "in_stock": expected true or false, got "maybe"'),
    ("items.jsonl", [{"item_id": "x", "title": "t", "category": {"a": 1}}],
     'items.jsonl:2: field "category": expected a string with levels joined by " > " (or a list of levels), '
     'got {"a": 1}'),
    ("events.jsonl.gz", [{"user_id": "u", "item_id": "a1", "ts": "yesterday"}],
     'events.jsonl.gz:2: field "ts": expected epoch seconds or ISO-8601, got "yesterday"'),
    ("events.jsonl.gz", [{"user_id": "u", "item_id": "a1", "ts": 1388534400000}],
     'events.jsonl.gz:2: field "ts": expected epoch seconds or ISO-8601, got 1388534400000 '
     '(milliseconds? divide by 1000)'),
    ("events.jsonl.gz", [{"user_id": "u", "item_id": "a1"}],
     'events.jsonl.gz:2: field "ts": expected epoch seconds or ISO-8601, got nothing (the field is missing)'),
    ("events.jsonl", [{"user_id": "u", "item_id": "a1", "ts": T0, "event": "like"}],
     'events.jsonl:2: field "event": expected one of view, click, cart, purchase, rate, got "like"'),
    ("events.jsonl", [{"user_id": ["u"], "item_id": "a1", "ts": T0}],
     'events.jsonl:2: field "user_id": expected a non-empty string or integer id, got ["u"]'),
    ("events.jsonl", [{"user_id": "u", "item_id": "a1", "ts": T0, "value": "high"}],
     'events.jsonl:2: field "value": expected a number, got "high"'),
    ("queries.jsonl", [{"query_id": "q", "query": "soap", "item_id": "c3", "grade": 5}],
     'queries.jsonl:2: field "grade": expected an integer 0..3, got 5'),
    ("queries.jsonl", [{"query_id": "q", "query": "soap", "item_id": "c3", "grade": 1.5}],
     'queries.jsonl:2: field "grade": expected an integer 0..3, got 1.5'),
    ("queries.jsonl", [{"query_id": "q", "query": "  ", "item_id": "c3", "grade": 1}],
     'queries.jsonl:2: field "query": expected a non-empty string, got "  "'),
]
GOOD_FIRST = {"items": ITEM_ROWS[0], "events": EVENT_ROWS[0], "queries": QUERY_ROWS[0]}
READERS = {"items": read_items, "events": read_events, "queries": read_queries}


@pytest.mark.parametrize("name,rows,message", BAD, ids=[m.split(": ")[1] + "-" + m[-20:] for _, _, m in BAD])
def test_validation_messages_lenient_and_strict(tmp_path, name, rows, message):
    kind = name.split(".")[0]
    path = tmp_path / name
    _write_jsonl(path, [GOOD_FIRST[kind], *rows, GOOD_FIRST[kind]])
    stats = ReadStats()
    got = list(READERS[kind](path, stats=stats))
    assert len(got) == 2
    field = message.split('field "')[1].split('"')[0]
    assert (stats.rows_read, stats.rows_ok, stats.skipped, stats.errors) == (3, 2, {field: 1}, [message])
    with pytest.raises(ReadError) as exc:
        list(READERS[kind](path, strict=True))
    assert str(exc.value) == message
    assert (exc.value.file, exc.value.line, exc.value.field) == (name, 2, field)


def test_malformed_json_and_non_object_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"user_id": "u", "item_id": "a", "ts": 5}\n\n{"user_id": "u" "item_id": "b"}\n[1, 2]\n'
                    '{"user_id": "u", "item_id": "c", "ts": 6}\n')
    stats = ReadStats()
    assert [e.item_id for e in read_events(path, stats=stats)] == ["a", "c"]
    assert stats.errors == ["events.jsonl:3: malformed JSON: Expecting ',' delimiter (column 17)",
                            "events.jsonl:4: expected a JSON object, got [1, 2]"]
    assert (stats.rows_read, stats.rows_ok, stats.skipped) == (4, 2, {"json": 2})
    with pytest.raises(ReadError, match=r"^events\.jsonl:3: malformed JSON"):
        list(read_events(path, strict=True))


def test_many_errors_are_counted_but_only_the_first_twenty_kept(tmp_path):
    path = tmp_path / "events.jsonl"
    _write_jsonl(path, [{"user_id": "u", "item_id": "a", "ts": "bad"}] * 25 + [EVENT_ROWS[0]])
    stats = ReadStats()
    assert len(list(read_events(path, stats=stats))) == 1
    assert stats.skipped == {"ts": 25} and len(stats.errors) == 20
    assert stats.errors[19].startswith("events.jsonl:20: ")
    assert stats.to_dict()["rows_skipped"] == 25


def test_csv_lines_count_the_header_and_multiline_fields(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text('item_id,title,description,price,tags,in_stock\n'
                    'a,Lipstick,"two\nlines",1.5,red| matte |,FALSE\n'
                    'b,Polish,,-2,,\n'
                    'c,Soap,,,,yes\n', encoding="utf-8")
    stats = ReadStats()
    got = list(read_items(path, stats=stats))
    assert got == [Item("a", "Lipstick", "two\nlines", price=1.5, tags=("red", "matte"), in_stock=False),
                   Item("c", "Soap")]
    assert stats.errors == ['items.csv:4: field "price": expected a number >= 0, got "-2"']


def test_csv_missing_required_column_fails_even_when_lenient(tmp_path):
    path = tmp_path / "events.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("user,item_id,ts\nu,a,5\n")
    with pytest.raises(ReadError) as exc:
        list(read_events(path))
    assert str(exc.value) == ('events.csv.gz:1: field "user_id": column missing (found columns: user, item_id, '
                              'ts); events need user_id, item_id, ts (see docs/data.md)')


def test_parquet_errors_use_the_row_number_and_native_types(tmp_path):
    path = tmp_path / "events.parquet"
    table = pa.table({
        "user_id": pa.array([1, 2, 3], pa.int64()),
        "item_id": ["a", "b", "c"],
        "ts": pa.array([T0 * 1000, None, (T0 + 60) * 1000], pa.timestamp("ms", tz="UTC")),
        "event": ["view", "click", "cart"],
    })
    pq.write_table(table, path)
    stats = ReadStats()
    got = list(read_events(path, stats=stats))
    assert got == [Event("1", "a", T0, "view"), Event("3", "c", T0 + 60, "cart")]
    assert stats.errors == ['events.parquet:2: field "ts": expected epoch seconds or ISO-8601, got null']
    pq.write_table(pa.table({"user_id": ["u"], "ts": [1]}), tmp_path / "e2.parquet")
    with pytest.raises(ReadError, match=r'^e2\.parquet: field "item_id": column missing'):
        list(read_events(tmp_path / "e2.parquet"))


@pytest.mark.parametrize("text,expected", [
    ("2014-01-01T00:00:00Z", T0),
    ("2014-01-01T01:30:00+01:30", T0),
    ("2013-12-31T19:00:00-05:00", T0),
    ("2014-01-01T00:00:00", T0),          # no zone: UTC
    ("2014-01-01 00:00:30.75", T0 + 30),  # fractions floored
    ("2014-01-01", T0),
    (" 1388534400 ", T0),
    (T0, T0),
    (T0 + 0.9, T0),
])
def test_parse_ts(text, expected):
    assert parse_ts(text) == expected


@pytest.mark.parametrize("bad", ["yesterday", "", None, True, [T0], float("nan"), "2014-13-01"])
def test_parse_ts_refuses(bad):
    with pytest.raises((ValueError, TypeError)):
        parse_ts(bad)


def test_corrupt_gzip_is_a_read_error(tmp_path):
    path = tmp_path / "events.jsonl.gz"
    good = gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in EVENT_ROWS * 200))
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ReadError, match=r"^events\.jsonl\.gz: cannot read the file after \d+ rows"):
        list(read_events(path))


def test_missing_file_raises_at_the_call(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_items(tmp_path / "items.jsonl")


def test_negative_ts_is_refused(tmp_path):
    _write_jsonl(tmp_path / "events.jsonl", [{"user_id": "u", "item_id": "a", "ts": -1},
                                             {"user_id": "u", "item_id": "a", "ts": "1969-12-31T00:00:00Z"},
                                             {"user_id": "u", "item_id": "a", "ts": 0}])
    stats = ReadStats()
    assert list(read_events(tmp_path / "events.jsonl", stats=stats)) == [Event("u", "a", 0)]
    assert stats.errors[0] == ('events.jsonl:1: field "ts": expected a time in 1970 or later (epoch seconds >= 0), '
                               'got -1')
    assert stats.skipped == {"ts": 2}


@pytest.mark.parametrize("name", ["items.csv", "items.csv.gz"])
def test_a_latin1_csv_names_the_file_line_and_field_and_reads_the_rest(tmp_path, name):
    rows = ["item_id,title,brand"] + [f"i{k},Soap {k},Acme" for k in range(3000)]
    rows[2500] = "i2499,Soap,Caf\xe9 Cr\xe8me"  # line 2501 of the file, Latin-1 bytes in "brand"
    data = ("\n".join(rows) + "\n").encode("latin-1")
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    stats = ReadStats()
    items = list(read_items(tmp_path / name, stats=stats))
    assert len(items) == 2999 and items[-1].item_id == "i2999"  # the rest of the file is read
    assert stats.skipped == {"encoding": 1}
    assert stats.errors[0].startswith(f'{name}:2501: field "brand": byte 0xe9 in "Caf')
    assert "is not UTF-8" in stats.errors[0] and "iconv" in stats.errors[0]
    with pytest.raises(ReadError, match=rf'^{name}:2501: field "brand"'):
        list(read_items(tmp_path / name, strict=True))
    header = b"item_id,t\xeftle\ni1,Soap\n"
    (tmp_path / name).write_bytes(gzip.compress(header) if name.endswith(".gz") else header)
    with pytest.raises(ReadError, match=rf"^{name}:1: the header has byte 0xef"):
        list(read_items(tmp_path / name))
