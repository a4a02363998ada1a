"""Incremental item-CF through the real server (tiny bundle): a new co-purchase pair is in
SimilarItems and in Recommend's item-CF candidates on the next call, the matrix equals a batch fit
over the bundle's and the live events, and a restart replays the event log into the same matrix."""

import grpc
import numpy as np
import pytest

from tandem.ranking.api import RecommendRequest
from tandem.retrieval.data import Interactions
from tandem.retrieval.item_cf import ItemCF
from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.service import ServerConfig, TandemServer
from tests.retrieval.test_item_cf_live import assert_same_rows


@pytest.fixture
def serve(tiny_bundles, tmp_path):
    started = []

    def start(**config):
        from tandem.ranking.loader import load_engine

        server = TandemServer(ServerConfig(bundles=tiny_bundles, port=0, event_log=tmp_path / "events.sqlite3",
                                           grace_s=1, workers=4, user_memos=100, **config), load_engine)
        port = server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return server, pb_grpc.TandemStub(channel)

    yield start
    for server, channel in started:
        channel.close()
        server.stop(0)


def _new_pairs(engine, n, seed=0):
    """``n`` (a, b) catalog indices where b is not among a's item-CF neighbours."""
    cf = engine.sources["item_cf"]
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        a, b = (int(x) for x in rng.choice(engine.n_items, 2, replace=False))
        if b not in cf.neighbours(a)[0] and a not in {x for p in out for x in p} | {b}:
            out.append((a, b))
    return out


def _events(engine, pairs, users=3):
    ids, t0 = engine.catalog.item_ids, engine.built_at + 100
    return [pb.Event(user_id=f"live-{p}-{u}", item_id=ids[x], ts=t0 + 10 * p + j)
            for p, (a, b) in enumerate(pairs) for u in range(users) for j, x in enumerate((a, b))]


def _bundle_plus(engine, events):
    """The bundle's interactions (its base histories) followed by ``events``."""
    user_index, indptr, items, ts = engine.histories.base_arrays()
    users = list(user_index)
    index = dict(user_index)
    live_users = [index.setdefault(e.user_id, len(index)) for e in events]
    users = list(index)
    n = items.size + len(events)
    return Interactions(users, np.concatenate([np.repeat(np.arange(indptr.size - 1), np.diff(indptr)), live_users]),
                        np.concatenate([items, [engine.catalog.index[e.item_id] for e in events]]),
                        np.concatenate([ts, [e.ts for e in events]]), np.full(n, 3), np.full(n, np.nan))


def test_a_new_pair_shows_up_at_once_equals_batch_and_survives_a_restart(serve):
    server, t = serve()
    engine = server.manager.engine
    before = engine.sources["item_cf"].similarity
    pairs = _new_pairs(engine, 4)
    events = _events(engine, pairs)
    ack = t.RecordEvents(pb.RecordEventsRequest(events=events))
    assert ack.accepted == len(events) and ack.applied == len(events)
    ids = engine.catalog.item_ids
    for a, b in pairs:  # the very next call
        similar = t.SimilarItems(pb.SimilarItemsRequest(item_id=ids[a], k=60))
        assert ids[b] in [it.item_id for it in similar.items]
        assert engine.sources["item_cf"].neighbours(a)[0][0] == b
        # Recommend: a user who just bought a gets b among the item-CF candidates
        req, _ = engine.user_request(None, context=[_ev("ctx", ids[a], engine)])
        candidates, _ = engine.retrieve(req, "recommend")
        cf = next(c for c in candidates if c.source == "item_cf")
        assert b in cf.items.tolist()
    live_matrix = engine.sources["item_cf"].similarity
    assert live_matrix is not before
    batch = ItemCF(engine.sources["item_cf"].config).fit(engine.catalog, _bundle_plus(engine, events))
    assert_same_rows(live_matrix, batch.similarity)
    stats = engine.live_item_cf_stats()
    assert stats["live_users"] == 12 and stats["rows_recomputed"] > 0 and stats["evicted_users"] == 0
    assert engine.describe()["item_cf_live"] == stats
    copy = engine.with_config(similar_sources=("item_cf",))  # shares the one updater: no event applied twice
    assert copy.live_item_cf() is engine.live_item_cf() and copy.item_cf_live_entries == engine.item_cf_live_entries
    server.stop(0)

    restarted, t2 = serve()  # same bundle, same log: the events are replayed through the same path
    again = restarted.manager.engine
    assert restarted.manager.replayed == len(events) and again is not engine
    assert_same_rows(again.sources["item_cf"].similarity, live_matrix)
    a, b = pairs[0]
    similar = t2.SimilarItems(pb.SimilarItemsRequest(item_id=ids[a], k=60))
    assert ids[b] in [it.item_id for it in similar.items]


def _ev(user, item_id, engine):
    from tandem.retrieval.data import Event

    return Event(user, item_id, engine.built_at + 50)


def test_cap_zero_keeps_the_bundle_matrix_and_a_small_cap_evicts(serve):
    server, t = serve(item_cf_live_entries=0)
    engine = server.manager.engine
    before = engine.sources["item_cf"].similarity
    pairs = _new_pairs(engine, 2, seed=1)
    t.RecordEvents(pb.RecordEventsRequest(events=_events(engine, pairs)))
    assert engine.sources["item_cf"].similarity is before and engine.live_item_cf_stats() is None
    assert engine.recommend(RecommendRequest(user_id="live-0-0", k=5)).items  # histories still live
    server.stop(0)

    small, t2 = serve(item_cf_live_entries=4)  # the replay alone goes past the bound
    stats = small.manager.engine.live_item_cf_stats()
    assert stats["live_entries"] <= 4 and stats["evicted_users"] == 4 and stats["max_entries"] == 4
    from prometheus_client import generate_latest

    text = generate_latest(small.metrics.registry).decode()
    assert "tandem_item_cf_live_evicted_users_total 4.0" in text
    assert "tandem_item_cf_live_entries 4.0" in text


def test_a_bundle_swap_replays_the_live_events_into_the_new_item_cf(tiny_bundles, tmp_path):
    """Hot swap to another bundle (the same files under a new version, built without the log):
    the new engine's item-CF gets every logged event through the same path, so it equals the
    one the old engine had built up live."""
    import shutil

    from tandem.retrieval.bundle import current_bundle, write_bundle

    root = tmp_path / "bundles"
    first = current_bundle(tiny_bundles)
    shutil.copytree(first, root / first.name)
    (root / "CURRENT").write_text(first.name)
    from tandem.ranking.loader import load_engine

    server = TandemServer(ServerConfig(bundles=root, port=0, grace_s=1, workers=4, user_memos=100,
                                       watch_interval_s=30), load_engine)
    port = server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            t = pb_grpc.TandemStub(channel)
            engine = server.manager.engine
            events = _events(engine, _new_pairs(engine, 3, seed=2))
            t.RecordEvents(pb.RecordEventsRequest(events=events))
            live_matrix = engine.sources["item_cf"].similarity
            write_bundle(root, lambda staging: _copy_bundle(first, staging), version="v2", make_current=False)
            swapped, error = server.manager.reload("v2")
            assert swapped, error
            new = server.manager.engine
            assert new.version == "v2" and new is not engine and server.manager.replayed == len(events)
            assert_same_rows(new.sources["item_cf"].similarity, live_matrix)
            assert new.live_item_cf_stats()["live_users"] == 9
    finally:
        server.stop(0)


def _copy_bundle(source, staging):
    """Fill a new bundle with ``source``'s files; its manifest's content (a new version is sealed)."""
    import json
    import shutil

    manifest = json.loads((source / "manifest.json").read_text())
    for path in source.rglob("*"):
        rel = path.relative_to(source)
        if path.is_file() and rel.name not in ("manifest.json", "manifest.sha256"):
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, staging / rel)
    return {k: v for k, v in manifest.items() if k not in ("format_version", "version", "created_at", "files")}
