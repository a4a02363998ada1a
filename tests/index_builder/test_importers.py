import gzip
import json
import logging
from pathlib import Path

import pytest

from tandem.index_builder.importers.amazon_reviews import (
    import_amazon_reviews,
    meta_layout,
    parse_price,
    parse_record,
    review_layout,
)
from tandem.index_builder.importers.seqrec import SYNTHETIC_TS_BASE, import_seqrec
from tandem.index_builder.readers import ReadError
from tandem.server.cli import main

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DAY = 86400


def _rows(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _write(path: Path, lines, gz=False):
    text = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --- seqrec -------------------------------------------------------------------------------------


def test_seqrec_records_synthetic_ts_and_source_json(tmp_path, caplog):
    _write(tmp_path / "seq.txt.gz", ["u1 1 2 3", "", "u2 3 9 1", "u3 2", "u3 1"], gz=True)  # u3 spans 2 lines
    (tmp_path / "items.tsv").write_text(
        "item_id\tasin\ttitle_prefix_text\ttitle\r\n1\tA\tred\tRed shoe \r\n2\tB\tx\t\r\n3\tC\th\tHat\r\n1\tA\tdup\tDup\r\n")
    (tmp_path / "attrs.json").write_text('{"1": [5, 7], "3": []}')
    with caplog.at_level(logging.WARNING):
        s = import_seqrec(tmp_path / "seq.txt.gz", tmp_path / "items.tsv", tmp_path / "out", tmp_path / "attrs.json")
    assert "synthetic ts" in caplog.text
    assert (s.items, s.users, s.events, s.items_without_title) == (3, 3, 7, 1)
    assert (s.duplicate_item_ids, s.events_unknown_item, s.users_split_over_lines, s.longest_sequence) == (1, 1, 1, 3)
    # the "title" column wins over title_prefix_text; CRLF and spaces are stripped; the repeat of item 1 is skipped
    assert _rows(tmp_path / "out/items.jsonl.gz") == [
        {"item_id": "1", "title": "Red shoe", "tags": ["attr:5", "attr:7"]},
        {"item_id": "2", "title": ""},
        {"item_id": "3", "title": "Hat"},
    ]
    t0 = SYNTHETIC_TS_BASE
    assert _rows(tmp_path / "out/events.jsonl.gz") == [
        {"user_id": "u1", "item_id": "1", "ts": t0, "event": "purchase"},
        {"user_id": "u1", "item_id": "2", "ts": t0 + DAY, "event": "purchase"},
        {"user_id": "u1", "item_id": "3", "ts": t0 + 2 * DAY, "event": "purchase"},
        {"user_id": "u2", "item_id": "3", "ts": t0, "event": "purchase"},
        # item 9 is not in the TSV: dropped, and item 1 keeps position 2
        {"user_id": "u2", "item_id": "1", "ts": t0 + 2 * DAY, "event": "purchase"},
        {"user_id": "u3", "item_id": "2", "ts": t0, "event": "purchase"},
        {"user_id": "u3", "item_id": "1", "ts": t0 + DAY, "event": "purchase"},
    ]
    source = json.loads((tmp_path / "out/source.json").read_text())
    assert source["synthetic_timestamps"] is True and "SYNTHETIC" in source["timestamps"]
    assert source["events"] == 7 and source["inputs"]["attributes"]["path"].endswith("attrs.json")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["events.jsonl.gz", "items.jsonl.gz",
                                                                    "source.json"]


def test_seqrec_bad_inputs_name_file_and_line(tmp_path):
    _write(tmp_path / "seq.txt", ["u1 1"])
    (tmp_path / "no_id.tsv").write_text("id\ttitle\n1\tx\n")
    with pytest.raises(ValueError, match=r"no_id.tsv:1: the header has no item_id column \(found: id, title\)"):
        import_seqrec(tmp_path / "seq.txt", tmp_path / "no_id.tsv", tmp_path / "out")
    (tmp_path / "no_title.tsv").write_text("item_id\tname\n1\tx\n")
    with pytest.raises(ValueError, match=r"no_title.tsv:1: .*title, title_prefix_text"):
        import_seqrec(tmp_path / "seq.txt", tmp_path / "no_title.tsv", tmp_path / "out")
    (tmp_path / "empty_id.tsv").write_text("item_id\ttitle\n1\tx\n\tY\n")
    with pytest.raises(ValueError, match=r'empty_id.tsv:3: field "item_id" is empty'):
        import_seqrec(tmp_path / "seq.txt", tmp_path / "empty_id.tsv", tmp_path / "out")
    (tmp_path / "attrs.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"attrs.json: expected a JSON object"):
        import_seqrec(tmp_path / "seq.txt", tmp_path / "empty_id.tsv", tmp_path / "out", tmp_path / "attrs.json")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_seqrec_reproduces_shared_beauty(tmp_path, capsys):
    src = SHARED / "amazon_seqrec_5core" / "beauty"
    if not src.is_dir() or not (SHARED / "beauty").is_dir():
        pytest.skip("shared/data is not beside the checkout")
    rc = main(["import", "seqrec", str(src / "Beauty.txt.gz"), str(src / "items.tsv.gz"),
               "--attributes", str(src / "Beauty_item2attributes.json.gz"), "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "22,363 users, 12,101 items, 198,502 events" in out and "SYNTHETIC" in out
    ours, shipped = _rows(tmp_path / "events.jsonl.gz"), _rows(SHARED / "beauty" / "events.jsonl.gz")
    assert len(ours) == len(shipped) == 198_502
    assert ours == shipped
    assert _rows(tmp_path / "items.jsonl.gz") == _rows(SHARED / "beauty" / "items.jsonl.gz")


# --- amazon reviews: parsing units -----------------------------------------------------------------


def test_parse_record_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    assert parse_record("{'asin': 'X', 'price': 1.0}") == ({"asin": "X", "price": 1.0}, True)
    assert parse_record('{"asin": "X"}') == ({"asin": "X"}, False)
    for evil in (f"__import__('os').system('touch {marker}')",
                 f"{{'asin': __import__('os').system('touch {marker}')}}",
                 "{'asin': 'X', 'title': open('/etc/passwd').read()}"):
        with pytest.raises(ValueError, match="neither JSON nor a Python literal"):
            parse_record(evil)
    assert not marker.exists()
    rec, _ = parse_record("{'asin': 'X', 'title': \"__import__('os').system('echo hi')\"}")
    assert rec["title"] == "__import__('os').system('echo hi')"  # data, not code
    with pytest.raises(ValueError, match="expected an object"):
        parse_record("[1, 2]")


def test_parse_price_and_layouts():
    assert parse_price(3.17) == 3.17 and parse_price(0) == 0.0
    assert parse_price("$12.99") == 12.99 and parse_price(" $1,299.00 ") == 1299.0
    assert parse_price("$5.99 - $9.99") == 5.99 and parse_price("$5 - $9") == 5.0
    for bad in ("", "-", "$", "Free", ".a-box-inner{background-color:#fff}", -3, float("nan"), True, None, [1]):
        assert parse_price(bad) is None, bad
    assert meta_layout({"asin": "A"}, literal=True) == "2014"
    assert meta_layout({"asin": "A", "categories": [["B"]]}, literal=False) == "2014"
    assert meta_layout({"asin": "A", "category": ["B"], "main_cat": "B"}, literal=False) == "2018"
    assert meta_layout({"asin": "A"}, literal=False) == "unknown"
    assert review_layout({"helpful": [0, 0]}) == "2014" and review_layout({"verified": True}) == "2018"


# --- amazon reviews: whole imports -----------------------------------------------------------------


def _fixture_2014(tmp_path, marker):
    reviews = _write(tmp_path / "reviews_Beauty_5.json.gz", [
        json.dumps({"reviewerID": "U1", "asin": "A1", "reviewerName": "x", "helpful": [0, 0],
                    "reviewText": "nice", "overall": 5.0, "unixReviewTime": 1400000000, "reviewTime": "05 13, 2014"}),
        json.dumps({"reviewerID": "U1", "asin": "A2", "helpful": [1, 2], "overall": 2.0,
                    "unixReviewTime": 1400086400}),
        json.dumps({"reviewerID": "U2", "asin": "A1", "helpful": [0, 0], "overall": 4.0,
                    "unixReviewTime": "yesterday"}),                                     # line 3: bad ts
        "{not json",                                                                      # line 4
        json.dumps({"reviewerID": "U3", "asin": "A4", "helpful": [0, 0], "overall": 3.0,
                    "reviewTime": "01 2, 2013"}),                                        # ts from reviewTime
        "",
        json.dumps({"reviewerID": "U2", "asin": "A3", "helpful": [0, 0], "overall": 7,
                    "unixReviewTime": 1400000000}),                                      # line 7: bad stars
        json.dumps({"reviewerID": "U4", "asin": "A5", "helpful": [0, 0], "overall": 1.0,
                    "unixReviewTime": 1300000000}),
    ], gz=True)
    evil = f"__import__('os').system('touch {marker}')"
    meta = _write(tmp_path / "meta_Beauty.json.gz", [
        str({"asin": "A1", "title": "Lip &amp; cheek balm", "price": 3.5, "brand": "Acme",
             "categories": [["Beauty", "Lips", "Balm"], ["Beauty", "Skin"]], "description": "Soothing.",
             "salesRank": {"Beauty": 12}}),
        str({"asin": "A2", "description": "A gentle face wash for daily use. Green tea extract, no soap.",
             "imUrl": "http://x/y.jpg"}),
        evil,                                                                              # line 3: code, refused
        str({"asin": "A4", "title": evil, "categories": [[]]}),                           # the same text as data
        str({"asin": "A5", "price": 4.0, "categories": [["Beauty"]]}),                    # no title, no description
        str({"asin": "A9", "title": "never reviewed"}),
        str({"asin": "A1", "title": "a second A1 line"}),
    ], gz=True)
    return reviews, meta


def test_amazon_2014_exact_records_and_malicious_meta(tmp_path):
    marker = tmp_path / "pwned"
    reviews, meta = _fixture_2014(tmp_path, marker)
    s = import_amazon_reviews(reviews, meta, tmp_path / "out")
    assert not marker.exists()
    assert _rows(tmp_path / "out/items.jsonl.gz") == [
        {"item_id": "A1", "title": "Lip & cheek balm", "description": "Soothing.", "category": "Beauty > Lips > Balm",
         "brand": "Acme", "price": 3.5},
        {"item_id": "A2", "title": "A gentle face wash for daily use",
         "description": "A gentle face wash for daily use. Green tea extract, no soap."},
        {"item_id": "A4", "title": "__import__('os').system('touch " + str(marker) + "')"},
    ]
    assert _rows(tmp_path / "out/events.jsonl.gz") == [
        {"user_id": "U1", "item_id": "A1", "ts": 1400000000, "event": "rate", "value": 5.0},
        {"user_id": "U1", "item_id": "A2", "ts": 1400086400, "event": "rate", "value": 2.0},
        {"user_id": "U3", "item_id": "A4", "ts": 1357084800, "event": "rate", "value": 3.0},  # 2013-01-02
    ]  # U4's review of A5 (no title, no description) is dropped with its item
    assert (s.users, s.items, s.events) == (2, 3, 3)
    assert s.reviews.skipped == {"unixReviewTime": 1, "line": 1, "overall": 1}
    assert s.reviews.errors == [
        'reviews_Beauty_5.json.gz:3: field "unixReviewTime": expected epoch seconds, got "yesterday"',
        "reviews_Beauty_5.json.gz:4: malformed line: neither JSON nor a Python literal",
        'reviews_Beauty_5.json.gz:7: field "overall": expected a star rating 1..5, got 7',
    ]
    assert s.meta.skipped == {"line": 1}
    assert s.meta.errors == ["meta_Beauty.json.gz:3: malformed line: neither JSON nor a Python literal"]
    assert s.dropped == {"below_min_rating": 0, "no_title": 1, "duplicate_asin": 1, "events_without_item": 1}
    assert (s.titles_from_description, s.meta_not_reviewed) == (1, 1)
    assert s.layouts == {"reviews": {"2014": 4}, "meta": {"2014": 6}}
    source = json.loads((tmp_path / "out/source.json").read_text())
    assert source["events"] == 3 and source["reviews"]["skipped"]["overall"] == 1
    assert source["timestamps"].startswith("real")


def test_amazon_2018_json_plain_prices_and_min_rating(tmp_path):
    reviews = _write(tmp_path / "Beauty.json", [
        json.dumps({"overall": 4.0, "verified": True, "reviewTime": "09 1, 2016", "reviewerID": "U1",
                    "asin": "B1", "style": {"Size:": "1 oz"}, "unixReviewTime": 1472688000}),
        json.dumps({"overall": 1.0, "verified": False, "reviewerID": "U2", "asin": "B2",
                    "unixReviewTime": 1472688001, "vote": "3"}),
        json.dumps({"overall": 5.0, "verified": True, "reviewerID": "U2", "asin": "B3",
                    "unixReviewTime": 1472688002}),
        json.dumps({"overall": 5.0, "verified": True, "reviewerID": "U3", "asin": "B4",
                    "unixReviewTime": 1472688003}),
    ])
    meta = _write(tmp_path / "meta_Beauty.json", [
        json.dumps({"category": ["All Beauty", "Skin &amp; Care", "A>B"], "description": ["<b>Line one.</b>", "Line two."],
                    "title": "Serum", "brand": "  Acme  ", "price": "$1,012.99", "asin": "B1", "main_cat": "All Beauty"}),
        json.dumps({"asin": "B2", "title": "Kit", "price": "$5.99 - $9.99", "category": []}),
        json.dumps({"asin": "B3", "title": "Mask", "price": ".a-box{display:block}", "also_buy": ["B1"]}),
        json.dumps({"asin": "B4", "title": "Bad category", "category": "Beauty"}),  # line 4: category not a list
    ])
    s = import_amazon_reviews(reviews, meta, tmp_path / "out", min_rating=4)
    assert _rows(tmp_path / "out/items.jsonl.gz") == [
        {"item_id": "B1", "title": "Serum", "description": "Line one. Line two.",
         "category": "All Beauty > Skin & Care > A/B", "brand": "Acme", "price": 1012.99},
        {"item_id": "B3", "title": "Mask"},  # B2 has only a 1-star review; B3's price is page junk
    ]
    assert _rows(tmp_path / "out/events.jsonl.gz") == [
        {"user_id": "U1", "item_id": "B1", "ts": 1472688000, "event": "rate", "value": 4.0},
        {"user_id": "U2", "item_id": "B3", "ts": 1472688002, "event": "rate", "value": 5.0},
    ]
    assert (s.users, s.items, s.events, s.prices_unreadable) == (2, 2, 2, 1)
    assert s.dropped == {"below_min_rating": 1, "no_title": 0, "duplicate_asin": 0, "events_without_item": 1}
    assert s.meta.errors == ['meta_Beauty.json:4: field "category": expected a list of category levels, got "Beauty"']
    assert s.layouts == {"reviews": {"2018": 4}, "meta": {"2018": 3}}
    # without --min-rating, B2 is kept with its range's lower bound
    import_amazon_reviews(reviews, meta, tmp_path / "all")
    assert _rows(tmp_path / "all/items.jsonl.gz")[1] == {"item_id": "B2", "title": "Kit", "price": 5.99}


def test_amazon_strict_fails_on_first_bad_line_and_leaves_out_dir_alone(tmp_path):
    marker = tmp_path / "pwned"
    reviews, meta = _fixture_2014(tmp_path, marker)
    with pytest.raises(ReadError, match=r'reviews_Beauty_5.json.gz:3: field "unixReviewTime"'):
        import_amazon_reviews(reviews, meta, tmp_path / "out", strict=True)
    assert list((tmp_path / "out").iterdir()) == []
    good = _write(tmp_path / "good.json", [json.dumps({"reviewerID": "U", "asin": "A1", "overall": 5,
                                                        "unixReviewTime": 1})])
    with pytest.raises(ReadError, match=r"meta_Beauty.json.gz:3: malformed line"):
        import_amazon_reviews(good, meta, tmp_path / "out", strict=True)
    assert list((tmp_path / "out").iterdir()) == [] and not marker.exists()


def test_amazon_truncated_gzip_is_a_clear_error(tmp_path):
    lines = [json.dumps({"reviewerID": f"U{i}", "asin": "A", "overall": 5, "unixReviewTime": i}) for i in range(3000)]
    full = _write(tmp_path / "r.json.gz", lines, gz=True).read_bytes()
    (tmp_path / "cut.json.gz").write_bytes(full[: len(full) // 2])
    meta = _write(tmp_path / "m.json", [json.dumps({"asin": "A", "title": "t"})])
    with pytest.raises(ValueError, match=r"cut.json.gz: unreadable after line \d+ .*truncated or corrupt"):
        import_amazon_reviews(tmp_path / "cut.json.gz", meta, tmp_path / "out")


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_amazon_reviews_prints_summary(tmp_path, capsys):
    reviews, meta = _fixture_2014(tmp_path, tmp_path / "pwned")
    rc = main(["import", "amazon-reviews", "--reviews", str(reviews), "--meta", str(meta), "--out", str(tmp_path / "o")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 users, 3 items, 3 events" in out
    assert "malformed skipped: line 1, overall 1, unixReviewTime 1" in out
    assert "no title or description: 1" in out and "reviews_Beauty_5.json.gz:4: malformed line" in out


def test_cli_errors_exit_2(tmp_path, capsys):
    reviews, meta = _fixture_2014(tmp_path, tmp_path / "pwned")
    rc = main(["import", "amazon-reviews", "--reviews", str(reviews), "--meta", str(meta), "--out", str(tmp_path / "o"),
               "--strict"])
    assert rc == 2 and 'reviews_Beauty_5.json.gz:3: field "unixReviewTime"' in capsys.readouterr().err
    rc = main(["import", "amazon-reviews", "--reviews", str(reviews), "--meta", str(meta), "--out", str(tmp_path / "o"),
               "--min-rating", "6"])
    assert rc == 2 and "--min-rating must be between 1 and 5" in capsys.readouterr().err
    rc = main(["import", "seqrec", str(tmp_path / "nope.txt"), str(tmp_path / "x.tsv"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "nope.txt does not exist" in capsys.readouterr().err
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "events.csv").write_text("user_id,item_id,ts\n")
    rc = main(["import", "amazon-reviews", "--reviews", str(reviews), "--meta", str(meta), "--out", str(tmp_path / "csv")])
    assert rc == 2 and "already holds events.csv" in capsys.readouterr().err
