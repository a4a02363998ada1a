import gzip
import json

from tandem.index_builder.writers import write_events, write_items, write_queries
from tandem.retrieval.data import Event, Item, Query


def test_items_jsonl_gz_deterministic(tmp_path):
    items = [Item("a", "Red shoe", price=12.5, tags=("red",)), Item("b", "Blue hat", in_stock=False)]
    n = write_items(tmp_path / "items.jsonl.gz", items)
    first = (tmp_path / "items.jsonl.gz").read_bytes()
    write_items(tmp_path / "items.jsonl.gz", items)
    assert n == 2 and (tmp_path / "items.jsonl.gz").read_bytes() == first
    rows = [json.loads(line) for line in gzip.open(tmp_path / "items.jsonl.gz", "rt")]
    assert rows == [
        {"item_id": "a", "title": "Red shoe", "price": 12.5, "tags": ["red"]},
        {"item_id": "b", "title": "Blue hat", "in_stock": False},
    ]


def test_events_and_queries_plain(tmp_path):
    write_events(tmp_path / "e.jsonl", [Event("u", "a", 5, "view"), Event("u", "b", 6, "rate", 4.0)])
    write_queries(tmp_path / "q.jsonl", [Query("q1", "red shoe", "a", 3, user_id="u")])
    ev = [json.loads(x) for x in (tmp_path / "e.jsonl").read_text().splitlines()]
    assert ev == [{"user_id": "u", "item_id": "a", "ts": 5, "event": "view"},
                  {"user_id": "u", "item_id": "b", "ts": 6, "event": "rate", "value": 4.0}]
    q = json.loads((tmp_path / "q.jsonl").read_text())
    assert q == {"query_id": "q1", "query": "red shoe", "item_id": "a", "grade": 3, "user_id": "u"}
