"""A search-only shop (items and graded queries, no events): `tandem build` skips the sources that
learn from events and says so, `tandem serve` answers Search, GetItem and SimilarItems from the
catalog's text, and Recommend refuses a user without history (FAILED_PRECONDITION) but answers
one with a recorded or sent history (docs/operations.md, "Search-only shops")."""

import gzip
import json
import logging
import shutil

import grpc
import pytest

from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.cli import main
from tandem.server.client import parse_field
from tests.conftest import TINY_CONFIG, Server

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

#: the sources that learn from events, of those a default build fits
BEHAVIOURAL = {"popularity", "item_cf", "two_tower"}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def _search_only_copy(shop, folder, events: bytes | None = None):
    """``shop``'s items and queries in ``folder``; an events file with ``events`` when given."""
    folder.mkdir()
    for name in ("items.jsonl.gz", "queries.jsonl.gz"):
        shutil.copy(shop / name, folder / name)
    if events is not None:
        (folder / "events.jsonl.gz").write_bytes(gzip.compress(events))
    return folder


def _build(data, bundles, tmp):
    from tandem.index_builder.config import load_config
    from tandem.index_builder.tune import to_toml

    cfg = tmp / "tiny.toml"
    cfg.write_text(to_toml(load_config(overrides=TINY_CONFIG, environ={})))
    records, root_logger = _Records(), logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(records)
    root_logger.setLevel(logging.INFO)
    try:
        assert main(["build", "--data", str(data), "--out", str(bundles), "--config", str(cfg)]) == 0
    finally:
        root_logger.removeHandler(records)
        root_logger.setLevel(level)
    return records.lines


@pytest.fixture(scope="module")
def search_only(tiny_shop, tmp_path_factory):
    """(bundle root, build log lines) of the tiny shop without its events file."""
    tmp = tmp_path_factory.mktemp("search_only")
    data = _search_only_copy(tiny_shop, tmp / "shop")
    lines = _build(data, tmp / "bundles", tmp)
    return tmp / "bundles", lines


def _check_search_only_manifest(bundles):
    from tandem.retrieval.bundle import current_bundle, verify_bundle

    m = verify_bundle(current_bundle(bundles))
    assert m["sources"] == ["lexical", "text"]
    assert set(m["skipped_sources"]) == BEHAVIOURAL
    assert all("learns from events" in why for why in m["skipped_sources"].values())
    assert "recommend" not in m["rankers"] and "events" in m["skipped_rankers"]["recommend"]
    assert m["data"]["events"] == 0 and m["data"]["items"] >= 290
    assert m["metrics"] == {}  # no events, nothing to evaluate recommendations on
    assert {"lexical", "dense", "hybrid"} <= set(m["search_metrics"])  # search is still evaluated
    assert m["models"]["search"]["ranker"]["trained"]  # the search ranker still learns from graded queries
    return m


def test_build_skips_the_sources_that_need_events_with_one_line_each(search_only):
    bundles, lines = search_only
    _check_search_only_manifest(bundles)
    for name in BEHAVIOURAL:
        said = [line for line in lines if f"source {name} skipped:" in line]
        assert len(said) == 1 and "learns from events and the data has none" in said[0], (name, said)
    assert sum("recommend ranker skipped" in line for line in lines) == 1
    assert any("has no events file: a search-only shop" in line for line in lines)
    assert not any(line.startswith("ERROR") for line in lines)


def test_an_empty_events_file_builds_a_search_only_bundle(tiny_shop, tmp_path):
    data = _search_only_copy(tiny_shop, tmp_path / "shop", events=b"")
    _build(data, tmp_path / "bundles", tmp_path)
    _check_search_only_manifest(tmp_path / "bundles")


@pytest.fixture(scope="module")
def server(search_only):
    s = Server(search_only[0])
    s.wait_ready()
    yield s
    s.stop()


def _item_ids(shop, n):
    with gzip.open(shop / "items.jsonl.gz", "rt") as f:
        return [json.loads(line)["item_id"] for line, _ in zip(f, range(n), strict=False)]


def test_serve_answers_search_get_item_and_similar_items(server, tiny_shop):
    t = pb_grpc.TandemStub(grpc.insecure_channel(server.addr))
    r = t.Search(pb.SearchRequest(query="wireless earbuds", k=5, explain=True))
    assert len(r.items) == 5
    used = {hit.source for item in r.items for hit in item.explanation.sources}
    assert used <= {"lexical", "text"} and "text" in used
    item = _item_ids(tiny_shop, 1)[0]
    assert t.GetItem(pb.GetItemRequest(item_id=item)).title
    sim = t.SimilarItems(pb.SimilarItemsRequest(item_id=item, k=4, explain=True))
    assert len(sim.items) == 4 and item not in [i.item_id for i in sim.items]
    assert {hit.source for i in sim.items for hit in i.explanation.sources} == {"text"}
    # the warm-up before SERVING found an item through Search (a search-only bundle has no cold Recommend)
    log = server.log.name
    server.log.flush()
    text = open(log).read()
    warmed = [line for line in text.splitlines() if "Search, Recommend and SimilarItems warmed" in line]
    assert warmed and "(item None)" not in warmed[-1]
    assert "is search-only (built without events; skipped " in text  # the operator is told at load


def test_recommend_refuses_a_user_without_history_and_answers_one_with_history(server, tiny_shop):
    t = pb_grpc.TandemStub(grpc.insecure_channel(server.addr))
    with pytest.raises(grpc.RpcError) as exc:
        t.Recommend(pb.RecommendRequest(user_id="shopper-1", k=5))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "search-only" in exc.value.details() and "without history" in exc.value.details()
    assert parse_field(exc.value.details()) is None  # the client's TandemError names no request field
    with pytest.raises(grpc.RpcError) as exc:  # no user at all
        t.Recommend(pb.RecommendRequest(k=5))
    assert exc.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    seen = _item_ids(tiny_shop, 3)
    # events are accepted and stored (the next build may learn from them) and make a history
    ack = t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="shopper-1", item_id=seen[0],
                                                                 event="view")]))
    assert ack.accepted == 1 and ack.applied == 1
    rec = t.Recommend(pb.RecommendRequest(user_id="shopper-1", k=5))
    assert len(rec.items) == 5 and not rec.cold_start and seen[0] not in [i.item_id for i in rec.items]
    # a history sent with the request works too
    ctx = t.Recommend(pb.RecommendRequest(user_id="shopper-2", k=5,
                                          context=[pb.Event(user_id="shopper-2", item_id=seen[1], event="view")]))
    assert len(ctx.items) == 5


def test_eval_reports_search_only_and_says_why(search_only, tmp_path, capsys):
    bundles = search_only[0]
    data = bundles.parent / "shop"
    report = tmp_path / "eval.json"
    assert main(["eval", "--bundle", str(bundles), "--data", str(data), "--json", str(report)]) == 0
    out = json.loads(report.read_text())
    assert set(out["metrics"]) == {"search"}  # no recommendation stage, every search stage
    assert set(out["metrics"]["search"]) == {"lexical", "dense", "hybrid", "final"}
    assert "no recommendation metrics: a search-only bundle" in capsys.readouterr().out
    assert main(["eval", "--data", str(data)]) == 2  # the popularity baseline needs events
    assert "has no events (a search-only shop)" in capsys.readouterr().err


def test_a_young_shop_without_three_item_users_builds_without_the_recommend_ranker(tiny_shop, tmp_path):
    """Events, but no user with the 3 distinct items a held-out target needs: the build used to stop
    ("nothing to train the ranker on"); now it skips the recommend ranker with one warning, and
    Recommend answers from the behavioural sources in the fused order."""
    from tandem.ranking.api import RecommendRequest
    from tandem.ranking.loader import load_engine
    from tandem.retrieval.bundle import current_bundle

    rows, per_user = [], {}
    with gzip.open(tiny_shop / "events.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            items = per_user.setdefault(row["user_id"], set())
            if row["item_id"] in items or len(items) < 2:
                items.add(row["item_id"])
                rows.append(line)
    assert max(len(s) for s in per_user.values()) == 2
    data = _search_only_copy(tiny_shop, tmp_path / "young", "".join(rows).encode())
    lines = _build(data, tmp_path / "bundles", tmp_path)
    skipped = [line for line in lines if "recommend ranker skipped" in line]
    assert len(skipped) == 1 and skipped[0].startswith("WARNING") and "3 or more distinct items" in skipped[0]
    folder = current_bundle(tmp_path / "bundles")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "recommend" in manifest["skipped_rankers"] and "recommend" not in manifest["rankers"]
    assert BEHAVIOURAL <= set(manifest["sources"])
    engine = load_engine(folder)
    user = next(u for u, items in per_user.items() if len(items) == 2)
    answer = engine.recommend(RecommendRequest(user_id=user, k=5, explain=True))
    assert len(answer.items) == 5 and not set(i.item_id for i in answer.items) & per_user[user]


def test_search_dump_of_a_search_only_bundle_and_without_queries(search_only, tmp_path, capsys):
    from tandem.index_builder.search_eval import in_eval_half

    bundles = search_only[0]
    data = bundles.parent / "shop"
    dump = tmp_path / "search.jsonl"
    assert main(["eval", "--bundle", str(bundles), "--data", str(data), "--search-dump", str(dump)]) == 0
    rows = [json.loads(x) for x in dump.read_text().splitlines()]
    texts = {q["query"] for q in map(json.loads, gzip.open(data / "queries.jsonl.gz", "rt"))}
    assert sorted(r["query"] for r in rows) == sorted(t for t in texts if in_eval_half(t))
    # no popularity to backfill with: at most the fused candidates, never more than 100
    assert all(0 < len(r["items"]) <= min(100, TINY_CONFIG["pipeline"]["fused_k"]) for r in rows)
    capsys.readouterr()
    no_queries = tmp_path / "items_only"
    no_queries.mkdir()
    shutil.copy(data / "items.jsonl.gz", no_queries / "items.jsonl.gz")
    assert main(["eval", "--bundle", str(bundles), "--data", str(no_queries), "--search-dump",
                 str(tmp_path / "none.jsonl")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and "no graded queries" in err[0] and "--search-dump" in err[0]
    assert not (tmp_path / "none.jsonl").exists()
