import gzip
import json
from pathlib import Path

import pytest

from index_builder.importers.amazon_reviews import import_amazon_reviews, parse_meta_line, parse_price
from index_builder.importers.seqrec import import_seqrec
from server.cli import main

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _rows(path):
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_seqrec_small(tmp_path):
    (tmp_path / "seq.txt").write_text("u1 1 2 3\nu2 3 1\n")
    (tmp_path / "items.tsv").write_text("item_id\tasin\ttitle_prefix_text\n1\tA\tred shoe\n2\tB\t\n3\tC\that\n")
    (tmp_path / "attrs.json").write_text('{"1": [5, 7]}')
    s = import_seqrec(tmp_path / "seq.txt", tmp_path / "items.tsv", tmp_path / "out", tmp_path / "attrs.json")
    assert (s.items, s.users, s.events, s.items_without_title) == (3, 2, 5, 1)
    assert _rows(tmp_path / "out/items.jsonl.gz")[0] == {"item_id": "1", "title": "red shoe",
                                                           "tags": ["attr:5", "attr:7"]}
    ev = _rows(tmp_path / "out/events.jsonl.gz")
    assert [(e["user_id"], e["item_id"], e["ts"]) for e in ev] == [
        ("u1", "1", 1388534400), ("u1", "2", 1388620800), ("u1", "3", 1388707200),
        ("u2", "3", 1388534400), ("u2", "1", 1388620800)]
    assert "synthetic" in json.loads((tmp_path / "out/source.json").read_text())["timestamps"]


def test_seqrec_bad_header(tmp_path):
    (tmp_path / "seq.txt").write_text("u1 1\n")
    (tmp_path / "items.tsv").write_text("id\tname\n1\tx\n")
    with pytest.raises(ValueError, match=r"items.tsv:1: header has no item_id column"):
        import_seqrec(tmp_path / "seq.txt", tmp_path / "items.tsv", tmp_path / "out")


@pytest.mark.slow
def test_seqrec_reproduces_shared_beauty(tmp_path):
    src = SHARED / "amazon_seqrec_5core" / "beauty"
    if not src.is_dir() or not (SHARED / "beauty").is_dir():
        pytest.skip("../shared/data is not beside the checkout")
    rc = main(["import", "seqrec", str(src / "Beauty.txt.gz"), str(src / "items.tsv.gz"),
               "--attributes", str(src / "Beauty_item2attributes.json.gz"), "--out", str(tmp_path)])
    assert rc == 0
    ours, theirs = _rows(tmp_path / "events.jsonl.gz"), _rows(SHARED / "beauty" / "events.jsonl.gz")
    assert len(ours) == len(theirs) == 198_502
    assert ours == theirs
    assert _rows(tmp_path / "items.jsonl.gz") == _rows(SHARED / "beauty" / "items.jsonl.gz")


def _write(path: Path, lines, gz=False):
    text = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def test_amazon_2014_literal_meta_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    _write(tmp_path / "reviews.json.gz", [
        json.dumps({"reviewerID": "U1", "asin": "A1", "unixReviewTime": 1400000000, "overall": 5.0}),
        json.dumps({"reviewerID": "U1", "asin": "A2", "unixReviewTime": 1400000100, "overall": 2.0}),
        json.dumps({"reviewerID": "U2", "asin": "A1", "unixReviewTime": "yesterday", "overall": 4.0}),
        "{not json",
    ], gz=True)
    evil = f"__import__('os').system('touch {marker}')"
    _write(tmp_path / "meta.json.gz", [
        str({"asin": "A1", "title": "Lip balm", "categories": [["Beauty", "Lips", "Balm"]], "brand": "Acme",
             "price": 3.5, "description": "Soothing."}),
        str({"asin": "A2", "description": "A gentle face wash for daily use with green tea", "price": 9.0}),
        evil,
        str({"asin": "A3", "title": "never reviewed"}),
    ], gz=True)
    s = import_amazon_reviews(tmp_path / "reviews.json.gz", tmp_path / "meta.json.gz", tmp_path / "out")
    assert not marker.exists()
    assert (s.users, s.items, s.events) == (1, 2, 2)
    assert s.skipped == {"bad_review": 2, "bad_meta": 1}
    assert any("reviews.json.gz:3: field \"unixReviewTime\"" in e for e in s.errors)
    items = _rows(tmp_path / "out/items.jsonl.gz")
    assert items[0] == {"item_id": "A1", "title": "Lip balm", "description": "Soothing.",
                        "category": "Beauty > Lips > Balm", "brand": "Acme", "price": 3.5}
    assert items[1]["title"] == "A gentle face wash for daily use with green tea"
    ev = _rows(tmp_path / "out/events.jsonl.gz")
    assert ev[0] == {"user_id": "U1", "item_id": "A1", "ts": 1400000000, "event": "rate", "value": 5.0}


def test_amazon_2018_json_prices_and_strict(tmp_path):
    _write(tmp_path / "r.json", [
        json.dumps({"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1500000000, "overall": 4.0}),
        json.dumps({"reviewerID": "U2", "asin": "B2", "unixReviewTime": 1500000001, "overall": 1.0}),
    ])
    _write(tmp_path / "m.json", [
        json.dumps({"asin": "B1", "title": "Serum", "category": ["Beauty", "Skin"], "price": "$12.99",
                    "description": ["Line one.", "Line two."]}),
        json.dumps({"asin": "B2", "title": "Kit", "price": "$5.00 - $9.00"}),
    ])
    s = import_amazon_reviews(tmp_path / "r.json", tmp_path / "m.json", tmp_path / "out", min_rating=2)
    assert (s.events, s.items, s.skipped["below_min_rating"]) == (1, 1, 1)
    assert _rows(tmp_path / "out/items.jsonl.gz")[0]["price"] == 12.99
    assert parse_price("$5.00 - $9.00") == 5.0 and parse_price("$1,299.00") == 1299.0
    assert parse_price("") is None and parse_price(-3) is None
    _write(tmp_path / "bad.json", ["oops"])
    with pytest.raises(ValueError, match=r"bad.json:1: "):
        import_amazon_reviews(tmp_path / "bad.json", tmp_path / "m.json", tmp_path / "o2", strict=True)


def test_parse_meta_line_rejects_non_literals():
    assert parse_meta_line("{'asin': 'X', 'price': 1.0}") == {"asin": "X", "price": 1.0}
    with pytest.raises(ValueError):
        parse_meta_line("__import__('os').getcwd()")
    with pytest.raises(ValueError, match="expected an object"):
        parse_meta_line("[1, 2]")


def test_cli_import_missing_file_exits_2(tmp_path, capsys):
    rc = main(["import", "seqrec", str(tmp_path / "nope.txt"), str(tmp_path / "x.tsv"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "nope.txt does not exist" in capsys.readouterr().err
