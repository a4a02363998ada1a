"""Live catalog updates on a real server over the tiny shop's bundle (issue #14.1): an upserted item
is found by the next Search, SimilarItems and Recommend; a deleted one is never returned again;
price and stock changes reach the filters; a bad row refuses the batch naming its index and
field; the token is required; changes are replayed on restart and on a bundle swap."""

import asyncio
import shutil
import threading

import grpc
import pytest

from tandem.ranking.loader import load_engine
from tandem.retrieval.bundle import current_bundle, read_manifest, set_current, write_bundle
from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.service import ServerConfig, TandemServer

TOKEN = "live-s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)

NEW = pb.Item(item_id="live-new-1", title="Quasarine glowberry lip elixir", description="a shimmering lip oil",
              category="Beauty > Lips", brand="Quasarine", price=17.5, tags=["lip", "glow"], in_stock=True)
TWIN = pb.Item(item_id="live-new-2", title="Quasarine glowberry lip elixir deluxe", description="a shimmering lip oil",
               category="Beauty > Lips", brand="Quasarine", price=19.0, tags=["lip", "glow"], in_stock=True)

pytestmark = pytest.mark.slow  # builds the tiny bundle (tests/conftest.py)


class Live:
    """One in-process server with a token; ``restart()`` starts a new one on the same files."""

    def __init__(self, root):
        self.root = root
        self.server = self.channel = None
        self.start()

    def start(self):
        self.server = TandemServer(ServerConfig(bundles=self.root, port=0, token=TOKEN, workers=8, grace_s=1,
                                                watch_interval_s=0.2, user_memos=100), load_engine)
        port = self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.t = pb_grpc.TandemStub(self.channel)
        self.admin = pb_grpc.TandemAdminStub(self.channel)

    def stop(self):
        self.channel.close()
        self.server.stop(0)

    def restart(self):
        self.stop()
        self.start()

    def upsert(self, *items):
        return self.admin.UpsertItems(pb.UpsertItemsRequest(items=list(items)), metadata=AUTH, timeout=60)

    def delete(self, *ids):
        return self.admin.DeleteItems(pb.DeleteItemsRequest(item_ids=list(ids)), metadata=AUTH, timeout=60)

    def search(self, query, k=10, **filters):
        return [it.item_id for it in self.t.Search(pb.SearchRequest(query=query, k=k, filters=pb.Filters(**filters)),
                                                   timeout=30).items]

    def similar(self, item_id, k=10, **filters):
        return [it.item_id for it in self.t.SimilarItems(
            pb.SimilarItemsRequest(item_id=item_id, k=k, filters=pb.Filters(**filters)), timeout=30).items]

    def recommend(self, user_id=None, k=10, context=(), **filters):
        return [it.item_id for it in self.t.Recommend(pb.RecommendRequest(
            user_id=user_id or "", k=k, context=[pb.Event(user_id="ctx", item_id=i) for i in context],
            filters=pb.Filters(**filters)), timeout=30).items]


@pytest.fixture(scope="module")
def live(tiny_bundles, tmp_path_factory):
    root = tmp_path_factory.mktemp("live_bundles")
    first = current_bundle(tiny_bundles)
    shutil.copytree(first, root / first.name)  # a root of its own: its own event log
    set_current(root, first.name)
    server = Live(root)
    yield server
    server.stop()


def _code(call):
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_token_is_required(live):
    for call in (lambda: live.admin.UpsertItems(pb.UpsertItemsRequest(items=[NEW]), timeout=10),
                 lambda: live.admin.DeleteItems(pb.DeleteItemsRequest(item_ids=["x"]), timeout=10),
                 lambda: live.admin.StreamUpsertItems(iter([NEW]), timeout=10)):
        assert _code(call)[0] == grpc.StatusCode.UNAUTHENTICATED
    assert _code(lambda: live.t.GetItem(pb.GetItemRequest(item_id=NEW.item_id)))[0] == grpc.StatusCode.NOT_FOUND


def test_a_bad_row_refuses_the_batch_naming_index_and_field(live):
    good = pb.Item(item_id="live-refused-ok", title="Refused batch good row", in_stock=True)
    bad = pb.Item(item_id="live-refused-bad", title="Negative price", price=-3.0, in_stock=True)
    code, details = _code(lambda: live.upsert(good, bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "items[1].price" in details
    code, details = _code(lambda: live.upsert(good, pb.Item(item_id="", title="no id")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "items[1].item_id" in details
    code, details = _code(lambda: live.upsert(pb.Item(item_id="live-empty", in_stock=True)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "items[0].title" in details
    code, details = _code(lambda: live.delete("ok", ""))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "item_ids[1]" in details
    # nothing of a refused batch was applied or logged
    assert _code(lambda: live.t.GetItem(pb.GetItemRequest(item_id="live-refused-ok")))[0] == grpc.StatusCode.NOT_FOUND
    assert "live-refused-ok" not in live.search("Refused batch good row")


def test_a_new_item_is_found_by_the_next_call(live):
    before = live.admin.GetStatus(pb.GetStatusRequest(), metadata=AUTH).event_log_sequence
    r = live.upsert(NEW, TWIN)
    assert (r.upserted, r.added) == (2, 2) and r.last_sequence == before + 2
    # no waiting: the very next calls see both items
    assert live.search(NEW.title, k=3)[0] == NEW.item_id
    similar = live.similar(NEW.item_id, k=5)
    assert similar[0] == TWIN.item_id  # near-identical text and attributes
    got = live.t.GetItem(pb.GetItemRequest(item_id=TWIN.item_id))
    assert (got.title, got.brand, got.price, list(got.tags)) == (TWIN.title, "Quasarine", 19.0, ["lip", "glow"])
    # recommendable: a session that viewed the one gets its twin from the content sources (the
    # ranker places an item without any behaviour low, so the list is long); a filter only they pass
    r = live.t.Recommend(pb.RecommendRequest(k=100, context=[pb.Event(user_id="ctx", item_id=NEW.item_id)],
                                             explain=True), timeout=30)
    found = {it.item_id: {h.source for h in it.explanation.sources} for it in r.items}
    assert {"text", "two_tower"} <= found[TWIN.item_id]
    assert set(live.recommend(k=5, brands=["Quasarine"])) == {NEW.item_id, TWIN.item_id}
    # an event on the new item is applied (it is in the catalog the events are checked against)
    rec = live.t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="live-user", item_id=NEW.item_id)]),
                              metadata=AUTH)
    assert rec.applied == 1
    assert not live.t.Recommend(pb.RecommendRequest(user_id="live-user", k=5)).cold_start


def test_the_stream_variant_upserts_all_rows_at_its_end(live):
    rows = [pb.Item(item_id=f"live-stream-{n}", title=f"Streamed zephyrine {colour} candle", in_stock=True)
            for n, colour in enumerate(("amber", "cobalt", "saffron"))]
    r = live.admin.StreamUpsertItems(iter(rows), metadata=AUTH, timeout=60)
    assert (r.upserted, r.added) == (3, 3)
    assert live.search("Streamed zephyrine saffron candle", k=3)[0] == "live-stream-2"
    code, details = _code(lambda: live.admin.StreamUpsertItems(
        iter([rows[0], pb.Item(item_id="live-stream-bad", title="x", price=float("inf"))]), metadata=AUTH, timeout=60))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "items[1].price" in details


def test_price_and_stock_changes_reach_the_filters_at_once(live):
    live.upsert(NEW)
    assert NEW.item_id in live.search(NEW.title, k=5, price_max=20.0)
    changed = pb.Item()
    changed.CopyFrom(NEW)
    changed.price = 250.0
    r = live.upsert(changed)
    assert (r.upserted, r.added) == (1, 0)
    assert NEW.item_id not in live.search(NEW.title, k=20, price_max=20.0)
    assert NEW.item_id in live.search(NEW.title, k=5, price_min=200.0)
    changed.in_stock = False
    live.upsert(changed)
    assert NEW.item_id not in live.search(NEW.title, k=20, in_stock_only=True)
    assert NEW.item_id in live.search(NEW.title, k=5)
    assert live.t.GetItem(pb.GetItemRequest(item_id=NEW.item_id)).price == 250.0
    live.upsert(NEW)  # back as it was for the other tests
    assert NEW.item_id in live.search(NEW.title, k=5, price_max=20.0, in_stock_only=True)


def _everything(live, item_id, title, user):
    """Every answer that could return ``item_id``: Search by its title (with and without filters
    that force a popularity backfill), Recommend (cold, a user, a session), SimilarItems of items
    around it."""
    out = set(live.search(title, k=50)) | set(live.search(title, k=50, in_stock_only=True, price_min=0.0))
    out |= set(live.recommend(k=100)) | set(live.recommend(user, k=100)) | set(live.recommend(k=100, price_min=0.0))
    for neighbour in live.similar(NEW.item_id, k=20)[:3]:
        out |= set(live.recommend(context=[neighbour], k=50)) | set(live.similar(neighbour, k=50))
    return out


def test_a_deleted_item_is_never_returned_again(live):
    popular = live.recommend(k=10)
    user = "live-memo-user"
    live.t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=popular[1])]), metadata=AUTH)
    mine = live.recommend(user, k=10)[0]  # the user's top item: the user's memo holds it now
    victims = {popular[0], mine}  # and the most popular item: every source and the backfill know it
    titles = {v: live.t.GetItem(pb.GetItemRequest(item_id=v)).title for v in victims}
    for v, title in titles.items():
        assert v in live.search(title, k=10)
    r = live.delete(*victims, "live-never-existed")
    assert (r.deleted, r.unknown) == (len(victims), 1)
    for v, title in titles.items():
        assert not victims & _everything(live, v, title, user)
        assert _code(lambda v=v: live.t.GetItem(pb.GetItemRequest(item_id=v)))[0] == grpc.StatusCode.NOT_FOUND
        assert _code(lambda v=v: live.similar(v))[0] == grpc.StatusCode.NOT_FOUND
        cand = live.t.Search(pb.SearchRequest(query=title, k=5, candidate_item_ids=[v, popular[2]]))
        assert cand.unknown_candidates == 1 and v not in [it.item_id for it in cand.items]
    assert live.t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id=user, item_id=mine)]),
                               metadata=AUTH).applied == 0
    assert live.delete(mine).unknown == 1  # deleting twice: nothing to do
    # a new item deleted too
    live.upsert(TWIN)
    live.delete(TWIN.item_id)
    assert TWIN.item_id not in _everything(live, TWIN.item_id, TWIN.title, user)
    live.victim = popular[0]


def test_readers_never_fail_while_the_catalog_changes(live):
    failures, answered = [], [0]
    stop = threading.Event()

    def reader(n):
        while not stop.is_set():
            try:
                if n % 3 == 0:
                    live.search("lip elixir glowberry", k=10)
                elif n % 3 == 1:
                    live.similar(NEW.item_id, k=10)
                else:
                    live.recommend("live-user", k=10)
                answered[0] += 1
            except grpc.RpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(6)]
    for th in threads:
        th.start()
    try:
        for n in range(6):
            word = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot")[n]
            item = pb.Item(item_id=f"live-busy-{n}", title=f"Busy nebulite {word} hand cream", in_stock=True)
            live.upsert(item)
            assert live.search(item.title, k=3)[0] == item.item_id
            if n % 2:
                live.delete(f"live-busy-{n - 1}")
    finally:
        stop.set()
        for th in threads:
            th.join(30)
    assert failures == [] and answered[0] > 0


def _copy_bundle(folder, root, version):
    """The bundle ``folder`` again under another version name (built without the event log)."""
    manifest = read_manifest(folder)

    def fill(staging):
        for path in folder.rglob("*"):
            rel = path.relative_to(folder)
            if path.is_file() and str(rel) not in ("manifest.json", "manifest.sha256"):
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, staging / rel)
        return {k: v for k, v in manifest.items() if k not in ("files", "version", "created_at")}

    return write_bundle(root, fill, version=version, make_current=False)


def test_changes_are_replayed_on_restart_and_on_a_swap(live):
    victim = getattr(live, "victim", None)
    assert victim is not None, "runs after test_a_deleted_item_is_never_returned_again"
    live.restart()
    assert live.search(NEW.title, k=3)[0] == NEW.item_id
    assert TWIN.item_id not in live.similar(NEW.item_id, k=50)  # deleted after it was upserted: order kept
    assert _code(lambda: live.t.GetItem(pb.GetItemRequest(item_id=victim)))[0] == grpc.StatusCode.NOT_FOUND
    assert victim not in live.recommend(k=100)
    assert live.t.GetItem(pb.GetItemRequest(item_id="live-stream-1")).title == "Streamed zephyrine cobalt candle"
    assert not live.t.Recommend(pb.RecommendRequest(user_id="live-user", k=5)).cold_start  # event on a new item
    # a swap to another bundle (one built without the log) replays the changes into it too
    _copy_bundle(current_bundle(live.root), live.root, "v-swap")
    r = live.admin.ReloadBundle(pb.ReloadBundleRequest(version="v-swap"), metadata=AUTH, timeout=120)
    assert r.swapped and r.error == "", r.error
    assert live.t.Search(pb.SearchRequest(query=NEW.title, k=3)).bundle_version == "v-swap"
    assert live.search(NEW.title, k=3)[0] == NEW.item_id
    assert _code(lambda: live.t.GetItem(pb.GetItemRequest(item_id=victim)))[0] == grpc.StatusCode.NOT_FOUND
    assert live.t.GetItem(pb.GetItemRequest(item_id=NEW.item_id)).price == 17.5
    # and a change after the swap lands on the new engine
    live.delete(NEW.item_id)
    assert NEW.item_id not in live.search(NEW.title, k=50)
    live.upsert(NEW)
    assert live.search(NEW.title, k=3)[0] == NEW.item_id


def test_a_bundle_that_cannot_take_changes_says_so(tmp_path):
    from tests.server.fake_engine import load_fake_engine, write_fake_bundle

    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v1")
    server = TandemServer(ServerConfig(bundles=root, port=0, token=TOKEN, grace_s=0), load_fake_engine)
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            admin = pb_grpc.TandemAdminStub(ch)
            code, details = _code(lambda: admin.UpsertItems(pb.UpsertItemsRequest(items=[NEW]), metadata=AUTH))
            assert code == grpc.StatusCode.FAILED_PRECONDITION and "cannot take live catalog changes" in details
            assert admin.GetStatus(pb.GetStatusRequest(), metadata=AUTH).event_log_sequence == 0  # nothing logged
    finally:
        server.stop(0)


def test_the_python_client_and_the_cli(live, tmp_path, capsys):
    from tandem.server.cli import main
    from tandem.server.client import TandemClient, TandemError

    addr = f"127.0.0.1:{live.server.port}"
    with TandemClient(addr, token=TOKEN, timeout=60) as client:
        r = client.upsert_items([{"item_id": "live-cli-1", "title": "Client-sent tourmaline bath salts",
                                  "category": ["Beauty", "Bath"], "tags": "bath|salt", "price": "4.5"}])
        assert (r.upserted, r.added) == (1, 1)
        got = client.get_item("live-cli-1")
        assert (got.category, got.tags, got.price, got.in_stock) == ("Beauty > Bath", ("bath", "salt"), 4.5, True)
        with pytest.raises(TandemError) as info:
            client.upsert_items([got, {"item_id": "live-cli-bad", "title": "x", "price": -1}])
        assert info.value.code == "INVALID_ARGUMENT" and info.value.field == "items[1].price"
        assert client.stream_upsert_items([got]).upserted == 1
        assert client.delete_items(["live-cli-1"]).deleted == 1
    async def with_async_client():
        from tandem.server.client import AsyncTandemClient

        async with AsyncTandemClient(addr, token=TOKEN, timeout=60) as client:
            added = await client.upsert_items([{"item_id": "live-async-1", "title": "Async-sent beryl soap"}])
            deleted = await client.delete_items(["live-async-1"])
            return added.added, deleted.deleted

    assert asyncio.run(with_async_client()) == (1, 1)
    with TandemClient(addr, timeout=10) as anonymous, pytest.raises(TandemError) as info:
        anonymous.delete_items(["x"])
    assert info.value.code == "UNAUTHENTICATED"

    rows = tmp_path / "items.jsonl"
    rows.write_text('{"item_id": "live-cli-2", "title": "Jsonl-loaded garnet foot balm", "in_stock": false}\n\n'
                    '{"item_id": "live-cli-3", "title": "Jsonl-loaded jasper foot file"}\n')
    assert main(["upsert-items", "--addr", addr, "--token", TOKEN, "--file", str(rows), "--batch", "1"]) == 0
    assert "upserted 2 item(s), 2 new" in capsys.readouterr().out
    assert live.search("Jsonl-loaded jasper foot file", k=1) == ["live-cli-3"]
    assert not live.t.GetItem(pb.GetItemRequest(item_id="live-cli-2")).in_stock
    assert main(["delete-items", "--addr", addr, "--token", TOKEN, "--items", "live-cli-2,live-cli-3,nope",
                 "--json"]) == 0
    assert '"deleted": 2, "unknown": 1' in capsys.readouterr().out
    assert "live-cli-3" not in live.search("Jsonl-loaded jasper foot file", k=20)
    rows.write_text('{"item_id": "live-cli-4", "title": "ok"}\nnot json\n')
    assert main(["upsert-items", "--addr", addr, "--token", TOKEN, "--file", str(rows)]) != 0
    assert "line 2: not JSON" in capsys.readouterr().err
    assert _code(lambda: live.t.GetItem(pb.GetItemRequest(item_id="live-cli-4")))[0] == grpc.StatusCode.NOT_FOUND


def test_live_item_cf_follows_a_catalog_change_and_covers_new_items(live):
    """Item-CF kept current from live events (issue #14.2) keeps working after a catalog change
    replaced the item-CF source (a grown copy): pairs with an item added at run time, and pairs
    of known items recorded after the change, are item-CF neighbours on the next call."""
    fresh = pb.Item(item_id="live-cf-new", title="Orbitane pumice foot scrub", category="Beauty > Feet",
                    brand="Orbitane", price=8.0, in_stock=True)
    known = live.search("lip", k=1)[0]
    live.upsert(fresh)
    events = []
    for n in range(3):
        user = f"live-cf-user-{n}"
        events += [pb.Event(user_id=user, item_id=known, ts=1_790_000_000 + 10 * n, event="purchase"),
                   pb.Event(user_id=user, item_id=fresh.item_id, ts=1_790_000_001 + 10 * n, event="purchase")]
    assert live.t.RecordEvents(pb.RecordEventsRequest(events=events), metadata=AUTH).applied == 6
    r = live.t.SimilarItems(pb.SimilarItemsRequest(item_id=fresh.item_id, k=50, explain=True), timeout=30)
    got = {it.item_id: {h.source for h in it.explanation.sources} for it in r.items}
    assert "item_cf" in got.get(known, set()), got.get(known)
    stats = live.server.manager.engine.live_item_cf_stats()
    assert stats is not None and stats["ignored_events"] == 0
