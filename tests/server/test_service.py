"""Every RPC of an in-process server over the FakeEngine: answers, bad input with exact codes and
field names, NOT_FOUND, INTERNAL with an error id, auth, health, reflection, metrics, logs, drain."""

import json
import logging
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tandem.retrieval.data import Event
from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.logs import JsonFormatter
from tandem.server.service import ServerConfig, TandemServer
from tests.server.fake_engine import load_fake_engine, write_fake_bundle

TOKEN = "s3cret"
NOW = int(time.time())
AUTH = [("authorization", f"Bearer {TOKEN}")]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    folder = write_fake_bundle(root)
    server = TandemServer(ServerConfig(bundles=root, port=0, metrics_port=0, token=TOKEN, workers=4,
                                       watch_interval_s=0.2, grace_s=2), load_fake_engine)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield server, channel, folder
    channel.close()
    server.stop(0)


@pytest.fixture
def stubs(served):
    _, channel, _ = served
    return pb_grpc.TandemStub(channel), pb_grpc.TandemAdminStub(channel)


def ids(resp):
    return [it.item_id for it in resp.items]


def test_search_with_explanation_and_request_id(stubs, served):
    t, _ = stubs
    r = t.Search(pb.SearchRequest(query="red", k=3, explain=True, request_id="req-1"))
    assert ids(r) == ["i00", "i04", "i08"] and r.request_id == "req-1"
    assert r.bundle_version == served[2].name and [it.title for it in r.items][0] == "item 0 red"
    e = r.items[1].explanation
    assert [(h.source, h.rank) for h in e.sources] == [("fake", 2)] and e.fused_score == 1.0
    assert e.HasField("ranker_score") and e.ranker_score == 2.0 and e.top_features[0].name == "closeness"
    plain = t.Search(pb.SearchRequest(query="red", k=3))
    assert not plain.items[0].HasField("explanation")


def test_search_reranks_the_callers_candidates(stubs):
    t, _ = stubs
    given = ["i02", "i00", "ghost", "i09", "i08", "i04", "nobody"]
    r = t.Search(pb.SearchRequest(query="item red", k=10, explain=True, candidate_item_ids=given,
                                  filters=pb.Filters(in_stock_only=True)))
    # both words first (the red ones), then the caller's order; i04 and i09 are out of stock; two unknown
    assert ids(r) == ["i00", "i08", "i02"] and r.unknown_candidates == 2
    assert [it.score for it in r.items] == [1.0, 1.0, 0.5] and r.items[0].explanation.sources
    top = t.Search(pb.SearchRequest(query="item red", k=2, candidate_item_ids=given))
    assert ids(top) == ["i00", "i08"] and top.unknown_candidates == 2
    assert t.Search(pb.SearchRequest(query="red", k=3)).unknown_candidates == 0
    assert t.Search(pb.SearchRequest(query="red", k=3, candidate_item_ids=[f"x{n}" for n in range(1000)])) \
        == pb.ItemsResponse(bundle_version=r.bundle_version, unknown_candidates=1000)


def test_recommend_filters_and_cold_start(stubs):
    t, _ = stubs
    assert ids(t.Recommend(pb.RecommendRequest(user_id="alice", k=3))) == ["i04", "i05", "i06"]
    f = pb.Filters(brands=["acme"], in_stock_only=True, exclude_item_ids=["i06"])
    got = ids(t.Recommend(pb.RecommendRequest(user_id="alice", k=4, filters=f)))
    assert got == ["i12", "i15", "i18", "i00"]  # acme = n % 3 == 0; i09 is out of stock; i06 excluded
    ctx = t.Recommend(pb.RecommendRequest(user_id="alice", k=2, context=[pb.Event(user_id="alice", item_id="i15")]))
    assert ids(ctx) == ["i16", "i17"]  # the session context counts as the latest history
    cold = t.Recommend(pb.RecommendRequest(user_id="nobody", k=2))
    assert cold.cold_start and ids(cold) == ["i00", "i01"]
    assert not t.Recommend(pb.RecommendRequest(user_id="alice", k=2)).cold_start


def test_recorded_event_changes_the_next_answer(stubs, served):
    t, admin = stubs
    before = t.Recommend(pb.RecommendRequest(user_id="carol", k=3))
    assert before.cold_start
    ack = t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="carol", item_id="i07", event="cart"),
                                                        pb.Event(user_id="carol", item_id="unknown-item")]),
                         metadata=AUTH)
    assert ack.accepted == 2 and ack.applied == 1 and ack.last_sequence >= 2
    after = t.Recommend(pb.RecommendRequest(user_id="carol", k=3))
    assert not after.cold_start and ids(after) == ["i08", "i09", "i10"]
    logged = [(e.user_id, e.item_id, e.event) for e in served[0].event_log.iter_events()]
    assert ("carol", "i07", "cart") in logged and ("carol", "unknown-item", "purchase") in logged
    streamed = t.StreamEvents(iter([pb.Event(user_id="dave", item_id=f"i{n:02d}", ts=NOW - 100 + n)
                                    for n in range(1, 13)]), metadata=AUTH)
    assert streamed.accepted == 12 and streamed.applied == 12 and streamed.last_sequence == ack.last_sequence + 12
    assert ids(t.Recommend(pb.RecommendRequest(user_id="dave", k=1))) == ["i13"]
    status = admin.GetStatus(pb.GetStatusRequest(), metadata=AUTH)
    assert status.event_log_sequence == streamed.last_sequence


def test_stream_of_many_events_and_a_bad_one_midway_records_nothing(stubs, served):
    t, _ = stubs
    events = [pb.Event(user_id="erin", item_id="i01", event="view")] * 2300
    start = served[0].event_log.position()
    r = t.StreamEvents(iter(events), metadata=AUTH)
    assert r.accepted == 2300 and r.last_sequence == start + 2300
    with pytest.raises(grpc.RpcError) as err:
        t.StreamEvents(iter([*events[:1200], pb.Event(user_id="erin", item_id="i01", event="like")]), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("events[1200].event must be one of view, click, cart, purchase, rate")
    assert "nothing of this batch was recorded" in err.value.details()
    assert served[0].event_log.position() == start + 2300  # all or nothing


def _responses(server, rpc, code):
    return server.metrics.registry.get_sample_value("tandem_rpc_responses_total", {"rpc": rpc, "code": code}) or 0


def test_stream_with_a_message_that_does_not_parse_is_invalid_argument_and_records_nothing(served):
    server, channel, _ = served
    call = channel.stream_unary("/tandem.v1.Tandem/StreamEvents", request_serializer=lambda b: b,
                                response_deserializer=pb.RecordEventsResponse.FromString)
    good = pb.Event(user_id="frank", item_id="i01", event="view").SerializeToString()
    start, ok_before = server.event_log.position(), _responses(server, "StreamEvents", "OK")
    with pytest.raises(grpc.RpcError) as err:
        call(iter([good] * 1001 + [b"\x0a\x02\xff\xfe"]), metadata=AUTH)  # user_id that is not UTF-8
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("events[1001] is not a valid tandem.v1.Event message")
    assert server.event_log.position() == start
    assert _responses(server, "StreamEvents", "OK") == ok_before  # logged with the status the client saw
    assert server.metrics.registry.get_sample_value("tandem_events_refused_total", {"reason": "malformed"}) >= 1


def test_event_id_makes_a_retry_idempotent(stubs, served):
    t, _ = stubs
    server = served[0]
    batch = [pb.Event(user_id="gina", item_id="i03", event="view", event_id=f"gina-{n}") for n in range(3)]
    first = t.RecordEvents(pb.RecordEventsRequest(events=batch), metadata=AUTH)
    assert first.accepted == 3 and first.duplicates == 0
    again = t.RecordEvents(pb.RecordEventsRequest(events=[*batch, pb.Event(user_id="gina", item_id="i04",
                                                                           event_id="gina-3")]), metadata=AUTH)
    assert again.accepted == 4 and again.duplicates == 3 and again.applied == 1
    assert again.last_sequence == first.last_sequence + 1
    streamed = t.StreamEvents(iter([*batch, batch[0], pb.Event(user_id="gina", item_id="i05")]), metadata=AUTH)
    assert streamed.duplicates == 4 and streamed.accepted == 5 and streamed.last_sequence == again.last_sequence + 1
    logged = [e.item_id for e in server.event_log.iter_events() if e.user_id == "gina"]
    assert logged == ["i03", "i03", "i03", "i04", "i05"]
    assert server.metrics.registry.get_sample_value("tandem_events_duplicate_total") >= 7


def test_similar_get_item_ping_status_reload(stubs, served):
    t, admin = stubs
    assert ids(t.SimilarItems(pb.SimilarItemsRequest(item_id="i05", k=3))) == ["i04", "i06", "i03"]
    item = t.GetItem(pb.GetItemRequest(item_id="i05"))
    assert (item.title, item.brand, item.category, item.price, item.in_stock) == (
        "item 5 green", "initech", "Beauty > Skin", 10.0, True)
    assert t.Ping(pb.PingRequest(payload=b"\x00abc")).payload == b"\x00abc"
    st = admin.GetStatus(pb.GetStatusRequest(), metadata=AUTH)
    assert st.bundle_version == served[2].name and st.items == 20 and st.users >= 2
    assert st.bundle_built_at == 1_700_000_000 and st.uptime_seconds > 0 and st.last_reload_error == ""
    again = admin.ReloadBundle(pb.ReloadBundleRequest(), metadata=AUTH)
    assert not again.swapped and again.version == served[2].name and again.error == ""


BAD = [
    ("k0", lambda t: t.Recommend(pb.RecommendRequest(user_id="u", k=0)), "k must be between 1 and 1000, got 0"),
    ("k1001", lambda t: t.Search(pb.SearchRequest(query="red", k=1001)), "k must be between 1 and 1000, got 1001"),
    ("k-similar", lambda t: t.SimilarItems(pb.SimilarItemsRequest(item_id="i01")), "k must be between 1 and 1000"),
    ("empty query", lambda t: t.Search(pb.SearchRequest(query=" ", k=5)),
     "query must be between 1 and 1000 characters, got 0"),
    ("long query", lambda t: t.Search(pb.SearchRequest(query="x" * 1001, k=5)),
     "query must be between 1 and 1000 characters, got 1001"),
    ("long user", lambda t: t.Recommend(pb.RecommendRequest(user_id="u" * 257, k=5)),
     "user_id must be at most 256 characters, got 257"),
    ("long item", lambda t: t.SimilarItems(pb.SimilarItemsRequest(item_id="i" * 257, k=5)),
     "item_id must be at most 256 characters"),
    ("empty item", lambda t: t.GetItem(pb.GetItemRequest()), "item_id must not be empty"),
    ("long request id", lambda t: t.Search(pb.SearchRequest(query="red", k=1, request_id="r" * 300)),
     "request_id must be at most 256 characters"),
    ("long filter", lambda t: t.Search(pb.SearchRequest(query="red", k=1, filters=pb.Filters(brands=["b" * 257]))),
     "filters.brands must be at most 256 characters"),
    ("price range", lambda t: t.Search(pb.SearchRequest(query="red", k=1, filters=pb.Filters(price_min=9,
                                                                                             price_max=1))),
     "filters.price_min (9.0) must not exceed filters.price_max (1.0)"),
    ("context event", lambda t: t.Recommend(pb.RecommendRequest(user_id="u", k=1, context=[pb.Event(item_id="i1")])),
     "context[0].user_id must not be empty"),
    ("too many", lambda t: t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="u", item_id="i")] * 10001),
                                          metadata=AUTH), "events must have at most 10000 events per batch, got 10001"),
    ("event type", lambda t: t.RecordEvents(pb.RecordEventsRequest(
        events=[pb.Event(user_id="u", item_id="i"), pb.Event(user_id="u", item_id="i", event="like")]), metadata=AUTH),
     "events[1].event must be one of view, click, cart, purchase, rate, got 'like'"),
    ("negative ts", lambda t: t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="u", item_id="i",
                                                                                      ts=-5)]), metadata=AUTH),
     "events[0].ts must be epoch seconds >= 0, got -5"),
    ("NaN price", lambda t: t.Search(pb.SearchRequest(query="x", k=1, filters=pb.Filters(price_min=float("nan")))),
     "filters.price_min must be a finite number, got nan"),
    ("ts in 2100", lambda t: t.RecordEvents(pb.RecordEventsRequest(events=[
        pb.Event(user_id="u", item_id="i"), pb.Event(user_id="u", item_id="i", ts=4_102_444_800)]), metadata=AUTH),
     "events[1].ts 4102444800 is more than 86400 s past the server's clock"),
    ("ts in milliseconds", lambda t: t.RecordEvents(pb.RecordEventsRequest(events=[
        pb.Event(user_id="u", item_id="i", ts=NOW * 1000)] * 3), metadata=AUTH),
     f"events[0].ts {NOW * 1000} is more than 86400 s past the server's clock"),
    ("infinite value", lambda t: t.RecordEvents(pb.RecordEventsRequest(events=[
        pb.Event(user_id="u", item_id="i", event="rate", value=float("inf"))]), metadata=AUTH),
     "events[0].value must be a finite number, got inf"),
    ("stream ts in 5138", lambda t: t.StreamEvents(iter([pb.Event(user_id="u", item_id="i"),
                                                         pb.Event(user_id="u", item_id="i", ts=99_999_999_999)]),
                                                   metadata=AUTH),
     "events[1].ts 99999999999 is more than 86400 s past"),
    ("long event_id", lambda t: t.RecordEvents(pb.RecordEventsRequest(events=[
        pb.Event(user_id="u", item_id="i", event_id="e" * 257)]), metadata=AUTH),
     "events[0].event_id must be at most 256 characters"),
    ("long event id", lambda t: t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="u", item_id="i" * 257)]),
                                               metadata=AUTH), "events[0].item_id must be at most 256 characters"),
    ("1001 candidates", lambda t: t.Search(pb.SearchRequest(query="red", k=5,
                                                             candidate_item_ids=[f"c{n}" for n in range(1001)])),
     "candidate_item_ids must have at most 1000 ids, got 1001"),
    ("repeated candidate", lambda t: t.Search(pb.SearchRequest(query="red", k=5,
                                                                candidate_item_ids=["i00", "i04", "i00"])),
     "candidate_item_ids[2] must not repeat candidate_item_ids[0] ('i00')"),
    ("empty candidate", lambda t: t.Search(pb.SearchRequest(query="red", k=5, candidate_item_ids=["i00", ""])),
     "candidate_item_ids[1] must not be empty"),
    ("long candidate", lambda t: t.Search(pb.SearchRequest(query="red", k=5, candidate_item_ids=["i" * 257])),
     "candidate_item_ids[0] must be at most 256 characters, got 257"),
]


@pytest.mark.parametrize(("name", "call", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_invalid_argument_naming_the_field(stubs, served, name, call, message):
    t, _ = stubs
    position = served[0].event_log.position()
    with pytest.raises(grpc.RpcError) as err:
        call(t)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
    assert err.value.details().startswith(message), err.value.details()
    assert served[0].event_log.position() == position  # nothing of a refused batch is logged
    assert t.Ping(pb.PingRequest(payload=b"ok")).payload == b"ok"


def test_refused_events_are_counted_by_reason(stubs, served):
    t, _ = stubs
    reg = served[0].metrics.registry

    def refused(reason):
        return reg.get_sample_value("tandem_events_refused_total", {"reason": reason}) or 0

    before = {r: refused(r) for r in ("ts_future", "ts_negative", "value_not_finite")}
    with pytest.raises(grpc.RpcError) as err:
        t.RecordEvents(pb.RecordEventsRequest(events=[
            pb.Event(user_id="u", item_id="i", ts=4_102_444_800), pb.Event(user_id="u", item_id="i", ts=-1),
            pb.Event(user_id="u", item_id="i", ts=4_102_444_801), pb.Event(user_id="u", item_id="i", value=float("nan")),
            pb.Event(user_id="u", item_id="i")]), metadata=AUTH)
    assert "(and 3 more refused events)" in err.value.details()
    assert refused("ts_future") == before["ts_future"] + 2
    assert refused("ts_negative") == before["ts_negative"] + 1
    assert refused("value_not_finite") == before["value_not_finite"] + 1


def test_reload_bad_version_name_is_invalid_argument(stubs):
    _, admin = stubs
    with pytest.raises(grpc.RpcError) as err:
        admin.ReloadBundle(pb.ReloadBundleRequest(version="../elsewhere"), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("version must be")


@pytest.mark.parametrize("version", ["CURRENT", "events.sqlite3", "no-such-version"])
def test_reload_of_what_is_no_bundle_folder_is_invalid_argument(stubs, served, version):
    """It answered OK with an error string (and counted a refused bundle)."""
    _, admin = stubs
    with pytest.raises(grpc.RpcError) as err:
        admin.ReloadBundle(pb.ReloadBundleRequest(version=version), metadata=AUTH)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (f"version {version!r} is not a bundle folder under {served[0].config.bundles}; "
                                   f"bundles there: {served[2].name}")
    assert admin.GetStatus(pb.GetStatusRequest(), metadata=AUTH).last_reload_error == ""


@pytest.mark.parametrize("call", [
    lambda t: t.SimilarItems(pb.SimilarItemsRequest(item_id="nope", k=3)),
    lambda t: t.GetItem(pb.GetItemRequest(item_id="nope")),
])
def test_unknown_item_is_not_found(stubs, served, call):
    t, _ = stubs
    with pytest.raises(grpc.RpcError) as err:
        call(t)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert err.value.details() == f"unknown item_id 'nope' (not in bundle {served[2].name})"


def test_engine_failure_is_internal_with_a_logged_error_id(stubs, caplog):
    t, _ = stubs
    with caplog.at_level(logging.INFO, logger="tandem.server"), pytest.raises(grpc.RpcError) as err:
        t.Search(pb.SearchRequest(query="boom", k=3, request_id="rq-boom"))
    assert err.value.code() == grpc.StatusCode.INTERNAL
    error_id = err.value.details().split("error id ")[1].split(")")[0]
    assert len(error_id) == 12
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and errors[0].fields["error_id"] == error_id and errors[0].fields["request_id"] == "rq-boom"
    line = json.loads(JsonFormatter().format(errors[0]))
    assert line["error_id"] == error_id and "the fake engine was asked to fail" in line["exc"]
    assert ids(t.Search(pb.SearchRequest(query="red", k=1))) == ["i00"]  # keeps serving


def test_rpc_logs_are_json_with_the_documented_fields(stubs, caplog):
    t, _ = stubs
    with caplog.at_level(logging.INFO, logger="tandem.server.rpc"):
        t.Search(pb.SearchRequest(query="red", k=1, request_id="log-me"))
    record = next(r for r in caplog.records if getattr(r, "fields", {}).get("request_id") == "log-me")
    line = json.loads(JsonFormatter().format(record))
    assert {"ts", "level", "msg", "rpc", "request_id", "status", "latency_ms"} <= set(line)
    assert (line["rpc"], line["status"], line["level"]) == ("Search", "OK", "INFO") and line["latency_ms"] >= 0


def test_client_deadline_is_honoured(stubs):
    t, _ = stubs
    t0 = time.monotonic()
    with pytest.raises(grpc.RpcError) as err:
        t.Search(pb.SearchRequest(query="sleep 0.6 red", k=1), timeout=0.1)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 0.5


def responses(server, rpc, code) -> float:
    value = server.metrics.registry.get_sample_value("tandem_rpc_responses_total", {"rpc": rpc, "code": code})
    return value or 0.0


def wait_for(predicate, timeout=15.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_expired_and_cancelled_requests_are_counted_and_logged_as_such(stubs, served, caplog):
    """The engine finishes after the client gave up: the server must not call that OK."""
    t, _ = stubs
    server = served[0]
    before = {(rpc, code): responses(server, rpc, code) for rpc in ("Search", "StreamEvents")
              for code in ("OK", "DEADLINE_EXCEEDED", "CANCELLED", "INTERNAL")}

    def statuses():
        return {r.fields["request_id"]: r.fields["status"] for r in caplog.records
                if getattr(r, "fields", {}).get("request_id") in ("late", "gone")}

    def stalled_stream():
        yield pb.Event(user_id="s", item_id="i01")
        time.sleep(3)  # the client cancels meanwhile

    with caplog.at_level(logging.INFO, logger="tandem.server"):
        with pytest.raises(grpc.RpcError) as err:
            t.Search(pb.SearchRequest(query="sleep 0.5 red", k=1, request_id="late"), timeout=0.1)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        future = t.Search.future(pb.SearchRequest(query="sleep 0.5 red", k=1, request_id="gone"), timeout=10)
        time.sleep(0.2)
        future.cancel()
        stream = t.StreamEvents.future(stalled_stream(), metadata=AUTH, timeout=10)
        time.sleep(0.3)
        stream.cancel()
        wait_for(lambda: len(statuses()) == 2
                 and responses(server, "StreamEvents", "CANCELLED") > before["StreamEvents", "CANCELLED"])
    assert statuses() == {"late": "DEADLINE_EXCEEDED", "gone": "CANCELLED"}
    after = {key: responses(server, *key) for key in before}
    # (>=: an earlier test's abandoned Search may still be finishing; the log lines above are exact)
    assert after["Search", "DEADLINE_EXCEEDED"] >= before["Search", "DEADLINE_EXCEEDED"] + 1
    assert after["Search", "CANCELLED"] == before["Search", "CANCELLED"] + 1
    assert after["StreamEvents", "CANCELLED"] == before["StreamEvents", "CANCELLED"] + 1
    assert after["StreamEvents", "INTERNAL"] == before["StreamEvents", "INTERNAL"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # a client going away is no error


class _Gate:
    """The bundle manager's ingestion lock, held by the test: whoever enters it next waits until
    the test releases it, and ``waiting`` says that someone does (here a StreamEvents handler
    between its last read of the stream and the log's commit). In production a swap's catch-up
    or another batch holds the same lock for a while."""

    def __init__(self, lock) -> None:
        self.lock, self.waiting = lock, threading.Event()

    def __enter__(self):
        self.waiting.set()
        self.lock.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


@pytest.mark.parametrize("rpc", ["StreamEvents", "RecordEvents"])
def test_a_call_cancelled_while_its_commit_waits_records_nothing(tmp_path, rpc, caplog):
    """The race: a StreamEvents handler checked that its client still waited, then waited for
    the ingestion lock, and committed after the client had cancelled (the client saw CANCELLED,
    the events were logged and applied; RecordEvents did not check at all). The check now runs
    inside the write transaction, right before COMMIT."""
    root = tmp_path / "bundles"
    write_fake_bundle(root)
    server = TandemServer(ServerConfig(bundles=root, port=0, workers=4, grace_s=2), load_fake_engine)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.start()}")
    t = pb_grpc.TandemStub(channel)
    manager = server.manager
    caplog.set_level(logging.INFO)
    try:
        for cancel in (True, False):
            user, start = f"stream-{cancel}", server.event_log.position()
            cancelled = responses(server, rpc, "CANCELLED")
            events = [pb.Event(user_id=user, item_id=f"i0{n}") for n in range(3)]
            gate = manager._ingest_lock = _Gate(manager._ingest_lock)
            gate.lock.acquire()
            try:
                if rpc == "StreamEvents":
                    call = t.StreamEvents.future(iter(events), timeout=30)
                else:
                    call = t.RecordEvents.future(pb.RecordEventsRequest(events=events), timeout=30)
                assert gate.waiting.wait(10)  # the events were read and checked; their commit waits
                if cancel:
                    call.cancel()
                    time.sleep(1.0)  # for the cancellation to reach the server (loopback: far less)
            finally:
                gate.lock.release()
                manager._ingest_lock = gate.lock
            if cancel:
                wait_for(lambda n=cancelled + 1: responses(server, rpc, "CANCELLED") == n)
                assert server.event_log.position() == start, f"a cancelled {rpc} was committed"
                assert user not in manager.engine.histories
            else:  # the same wait without a cancel commits: the gate itself changes nothing
                assert call.result(10).accepted == 3 and server.event_log.position() == start + 3
                assert manager.engine.histories[user] == ["i00", "i01", "i02"]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]  # a client going away is no error
    finally:
        channel.close()
        server.stop(0)


def test_a_stream_cancelled_before_its_end_is_never_committed(tmp_path, caplog):
    """gRPC may hand a stream's handler the client's cancel as a normal end of the stream and
    mark the call cancelled a moment later; the handler must not take that end for the client's.
    Each round sends 3 events, cancels before the client ends the stream, then ends it. On the
    old code about 1 round in 12 was committed (8 of 100 in one run)."""
    root = tmp_path / "bundles"
    write_fake_bundle(root)
    server = TandemServer(ServerConfig(bundles=root, port=0, workers=4, grace_s=2), load_fake_engine)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.start()}")
    t = pb_grpc.TandemStub(channel)
    caplog.set_level(logging.INFO)
    committed = []
    try:
        for n in range(100):
            sent, cancelled = threading.Event(), threading.Event()

            def stream(n=n, sent=sent, cancelled=cancelled):
                yield from (pb.Event(user_id=f"round-{n}", item_id=f"i0{k}") for k in range(3))
                sent.set()
                cancelled.wait(5)  # the client's stream ends only after its cancel

            start, before = server.event_log.position(), responses(server, "StreamEvents", "CANCELLED")
            call = t.StreamEvents.future(stream(), timeout=10)
            assert sent.wait(5)
            call.cancel()
            cancelled.set()
            wait_for(lambda before=before: responses(server, "StreamEvents", "CANCELLED") == before + 1)
            if server.event_log.position() != start:
                committed.append(n)
        assert committed == [], f"{len(committed)} of 100 cancelled streams were committed"
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        channel.close()
        server.stop(0)


def test_a_cancel_after_the_commit_cannot_undo_it_and_is_logged(tmp_path, caplog):
    """The window no server can close: the client cancels after the commit (here while the
    engine applies the events). The events stay logged and applied, the call counts as
    CANCELLED, and the log line says it was committed."""
    root = tmp_path / "bundles"
    write_fake_bundle(root)
    server = TandemServer(ServerConfig(bundles=root, port=0, workers=4, grace_s=2), load_fake_engine)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.start()}")
    engine, start = server.manager.engine, server.event_log.position()
    try:
        with caplog.at_level(logging.INFO, logger="tandem.server"):
            with engine._lock:  # the engine's apply waits: the commit is done by then
                call = pb_grpc.TandemStub(channel).StreamEvents.future(
                    iter([pb.Event(user_id="late", item_id="i01"), pb.Event(user_id="late", item_id="i02")]),
                    timeout=30)
                wait_for(lambda: server.event_log.position() == start + 2)
                call.cancel()
                time.sleep(1.0)  # for the cancellation to reach the server
            wait_for(lambda: responses(server, "StreamEvents", "CANCELLED") == 1)
        assert engine.histories["late"] == ["i01", "i02"] and server.event_log.position() == start + 2
        lines = [r.fields for r in caplog.records if r.getMessage() == "stream committed, then cancelled"]
        assert lines == [{"events": 2, "last_sequence": start + 2}]
    finally:
        channel.close()
        server.stop(0)


MALFORMED = [
    ("Search", b"\x0a\x02\xc3\x28\x18\x05", "tandem.v1.SearchRequest message (String field had bad UTF-8)"),
    ("Search", b"\x0a\x05abc", "tandem.v1.SearchRequest message (Wire format was corrupt)"),
    ("Recommend", b"\xff\xff\xff\xff", "tandem.v1.RecommendRequest message (Wire format was corrupt)"),
    ("GetItem", b"\x0a\x01\xff", "tandem.v1.GetItemRequest message (String field had bad UTF-8)"),
]


@pytest.mark.parametrize(("rpc", "raw", "message"), MALFORMED, ids=["bad utf-8", "truncated", "garbage", "item"])
def test_malformed_request_bytes_are_invalid_argument_counted_and_logged_once(served, caplog, rpc, raw, message):
    """Bytes that are no valid message (sent raw through a generic call) got INTERNAL "Exception
    deserializing request!", a traceback in the log and no metric."""
    server, channel, _ = served
    call = channel.unary_unary(f"/tandem.v1.Tandem/{rpc}")  # no serializers: the bytes go as they are
    before = responses(server, rpc, "INVALID_ARGUMENT")
    with caplog.at_level(logging.INFO), pytest.raises(grpc.RpcError) as err:
        call(raw, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"the request is not a valid {message}"
    assert responses(server, rpc, "INVALID_ARGUMENT") == before + 1
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("rpc") == rpc]
    assert len(lines) == 1 and lines[0].fields["status"] == "INVALID_ARGUMENT"
    assert message in lines[0].fields["error"]
    assert pb_grpc.TandemStub(channel).Search(pb.SearchRequest(query="red", k=1)).items  # serving on


def test_malformed_event_in_a_stream_names_it_and_records_nothing(served, caplog):
    server, channel, _ = served
    call = channel.stream_unary("/tandem.v1.Tandem/StreamEvents")
    position = server.event_log.position()
    good = pb.Event(user_id="raw", item_id="i01").SerializeToString()
    with caplog.at_level(logging.INFO), pytest.raises(grpc.RpcError) as err:
        call(iter([good, good, b"\x0a\x01\xff"]), metadata=AUTH, timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == ("events[2] is not a valid tandem.v1.Event message (String field had bad UTF-8); "
                                   "nothing of this batch was recorded")
    assert server.event_log.position() == position  # all or nothing
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.parametrize("metadata", [None, [("authorization", "Bearer wrong")], [("authorization", TOKEN)]])
def test_token_required_for_events_and_admin(stubs, served, metadata):
    t, admin = stubs
    position = served[0].event_log.position()
    calls = [
        lambda: t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="x", item_id="i01")]),
                               metadata=metadata),
        lambda: t.StreamEvents(iter([pb.Event(user_id="x", item_id="i01")]), metadata=metadata),
        lambda: admin.GetStatus(pb.GetStatusRequest(), metadata=metadata),
        lambda: admin.ReloadBundle(pb.ReloadBundleRequest(), metadata=metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in err.value.details()
    assert served[0].event_log.position() == position
    # reads need no token; the right token is accepted
    assert t.Search(pb.SearchRequest(query="red", k=1), metadata=metadata).items
    assert admin.GetStatus(pb.GetStatusRequest(), metadata=AUTH).items == 20


@pytest.mark.parametrize("metadata", [AUTH * 2, [*AUTH, ("authorization", "Bearer wrong")],
                                      [("authorization", "Bearer wrong"), *AUTH]])
def test_several_authorization_headers_are_refused(stubs, served, metadata):
    """Only the first header was read, so a right token followed by a wrong one passed."""
    t, admin = stubs
    position = served[0].event_log.position()
    denied = responses(served[0], "RecordEvents", "UNAUTHENTICATED")
    with pytest.raises(grpc.RpcError) as err:
        t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="x", item_id="i01")]), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details().startswith("2 authorization headers: send exactly one")
    assert served[0].event_log.position() == position
    assert responses(served[0], "RecordEvents", "UNAUTHENTICATED") == denied + 1
    with pytest.raises(grpc.RpcError) as err:
        admin.GetStatus(pb.GetStatusRequest(), metadata=metadata)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_serving_and_reflection_lists_services(served):
    _, channel, _ = served
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "tandem.v1.Tandem", "tandem.v1.TandemAdmin"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    resp = next(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in resp.list_services_response.service}
    assert {"tandem.v1.Tandem", "tandem.v1.TandemAdmin", "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection"} <= names


def test_metrics_endpoint(stubs, served):
    t, _ = stubs
    server = served[0]
    t.Search(pb.SearchRequest(query="green", k=2))
    t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="m", item_id="i02")]), metadata=AUTH)
    with pytest.raises(grpc.RpcError):
        t.Search(pb.SearchRequest(query="", k=2))
    with pytest.raises(grpc.RpcError):
        t.RecordEvents(pb.RecordEventsRequest())
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'tandem_rpc_latency_seconds_bucket{le="0.001",rpc="Search"}' in text
    assert 'tandem_rpc_latency_seconds_count{rpc="Search"}' in text
    assert 'tandem_rpc_responses_total{code="INVALID_ARGUMENT",rpc="Search"}' in text
    assert 'tandem_rpc_responses_total{code="UNAUTHENTICATED",rpc="RecordEvents"}' in text
    assert 'tandem_retrieval_candidates_count{source="fake"}' in text
    assert 'tandem_stage_seconds_count{stage="fake"}' in text
    assert f'tandem_bundle_info{{built_at="1700000000",version="{served[2].name}"}} 1.0' in text
    assert "tandem_bundle_items 20.0" in text
    ingested = float(text.split("\ntandem_events_ingested_total ")[1].split()[0])
    assert ingested >= 1 and "tandem_event_visible_lag_seconds_count" in text


def test_config_is_validated():
    with pytest.raises(ValueError, match="--tls-cert and --tls-key go together"):
        ServerConfig(bundles="b", tls_cert="c.pem")
    with pytest.raises(ValueError, match="--port must be 0..65535"):
        ServerConfig(bundles="b", port=70000)
    with pytest.raises(ValueError, match="--workers must be >= 1"):
        ServerConfig(bundles="b", workers=0)
    with pytest.raises(ValueError, match="--compute-slots must be >= 1"):
        ServerConfig(bundles="b", compute_slots=0)
    with pytest.raises(ValueError, match="--user-memos must be >= 0"):
        ServerConfig(bundles="b", user_memos=-1)
    with pytest.raises(ValueError, match="--token must not be empty"):
        ServerConfig(bundles="b", token=" ")


def _self_signed(folder, name):
    cert, key = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a test certificate")
def test_a_bad_tls_file_is_named_at_start(tmp_path):
    """Each of these said 'could not bind ...; is another server on that port?'."""
    write_fake_bundle(tmp_path / "bundles")
    cert, key = _self_signed(tmp_path, "a")
    other_cert, other_key = _self_signed(tmp_path, "b")
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    cases = [
        (junk, key, f"--tls-cert {junk} holds no PEM certificate"),
        (key, key, f"--tls-cert {key} holds no PEM certificate"),
        (cert, junk, f"--tls-key {junk} is not the PEM private key of --tls-cert {cert}"),
        (cert, other_key, f"--tls-key {other_key} is not the PEM private key of --tls-cert {cert}"),
    ]
    for tls_cert, tls_key, message in cases:
        server = TandemServer(ServerConfig(bundles=tmp_path / "bundles", port=0, tls_cert=tls_cert, tls_key=tls_key),
                              load_fake_engine)
        with pytest.raises(RuntimeError) as err:
            server.start()
        assert str(err.value).startswith(message) and "another server" not in str(err.value)
        server.stop(0)
    server = TandemServer(ServerConfig(bundles=tmp_path / "bundles", port=0, tls_cert=other_cert, tls_key=other_key),
                          load_fake_engine)
    assert server.start() > 0  # the matching pair serves
    server.stop(0)


def _closed_after(port, preface: bytes, limit: float = 10.0) -> float | None:
    """Seconds until the server closes a socket that sent ``preface`` and then nothing (None: held)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(0.2)
        sock.sendall(preface)
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            try:
                if sock.recv(4096) == b"":
                    return time.monotonic() - t0
            except TimeoutError:
                continue
            except ConnectionResetError:
                return time.monotonic() - t0
    return None


def test_idle_connections_are_closed_and_clients_reconnect(tmp_path):
    """A socket that never says anything was held for ever (gRPC's own handshake limit is 120 s),
    and so was an HTTP/2 connection that never sends a call."""
    write_fake_bundle(tmp_path)
    server = TandemServer(ServerConfig(bundles=tmp_path, port=0, handshake_timeout_s=0.5, idle_timeout_s=0.5),
                          load_fake_engine)
    port = server.start()
    try:
        silent = _closed_after(port, b"")
        http2_idle = _closed_after(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(3) + b"\x04" + bytes(5))
        assert silent is not None and silent < 3 and http2_idle is not None and http2_idle < 3
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            t = pb_grpc.TandemStub(channel)
            assert t.Ping(pb.PingRequest(payload=b"1"), timeout=5).payload == b"1"
            time.sleep(1.2)  # the server closed the idle connection meanwhile
            assert t.Ping(pb.PingRequest(payload=b"2"), timeout=5).payload == b"2"
    finally:
        server.stop(0)


def test_connection_limits_have_sane_defaults_and_are_validated():
    cfg = ServerConfig(bundles="b")
    assert (cfg.handshake_timeout_s, cfg.idle_timeout_s, cfg.keepalive_time_s, cfg.keepalive_timeout_s,
            cfg.min_ping_interval_s) == (10.0, 300.0, 60.0, 20.0, 10.0)
    for name in ("handshake_timeout_s", "idle_timeout_s", "keepalive_time_s", "keepalive_timeout_s",
                 "min_ping_interval_s"):
        flag = "--" + name.removesuffix("_s").replace("_", "-")
        with pytest.raises(ValueError, match=f"{flag} must be > 0 seconds, got 0"):
            ServerConfig(bundles="b", **{name: 0})


def test_no_bundle_refuses_to_start(tmp_path):
    server = TandemServer(ServerConfig(bundles=tmp_path, port=0), load_fake_engine)
    with pytest.raises(RuntimeError, match="no usable bundle.*tandem build"):
        server.start()


def test_stop_drains_in_flight_requests(tmp_path):
    write_fake_bundle(tmp_path)
    server = TandemServer(ServerConfig(bundles=tmp_path, port=0, grace_s=5), load_fake_engine)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    t = pb_grpc.TandemStub(channel)
    result = {}

    def slow():
        try:
            result["items"] = ids(t.Search(pb.SearchRequest(query="sleep 0.8 red", k=2), timeout=10))
        except grpc.RpcError as exc:
            result["error"] = exc.code()

    th = threading.Thread(target=slow)
    th.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    server.stop()
    th.join(10)
    assert result == {"items": ["i00", "i04"]} and time.monotonic() - t0 >= 0.3
    with pytest.raises(grpc.RpcError) as err:
        t.Ping(pb.PingRequest(), timeout=2)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(RuntimeError, match="is closed"):
        server.event_log.append([Event("u", "i", 1)])
    channel.close()


def test_compute_slots_queue_engine_calls_but_never_events(tmp_path):
    """One compute slot: a second Search waits for the first; RecordEvents and Ping do not wait,
    and a Search whose deadline passes while it waits gets DEADLINE_EXCEEDED."""
    write_fake_bundle(tmp_path)
    server = TandemServer(ServerConfig(bundles=tmp_path, port=0, workers=6, compute_slots=1), load_fake_engine)
    port = server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    t = pb_grpc.TandemStub(channel)
    done = {}

    def search(name, query, timeout=10):
        try:
            t.Search(pb.SearchRequest(query=query, k=1), timeout=timeout)
            done[name] = time.monotonic()
        except grpc.RpcError as exc:
            done[name] = exc.code()

    try:
        t0 = time.monotonic()
        first = threading.Thread(target=search, args=("first", "sleep 0.6 red"))
        first.start()
        time.sleep(0.15)
        second = threading.Thread(target=search, args=("second", "red"))
        late = threading.Thread(target=search, args=("late", "red", 0.2))
        second.start()
        late.start()
        t.Ping(pb.PingRequest(), timeout=0.3)  # not queued behind the busy slot
        t.RecordEvents(pb.RecordEventsRequest(events=[pb.Event(user_id="u", item_id="i00", event="view")]),
                       timeout=0.3)
        for th in (first, second, late):
            th.join(10)
        assert done["late"] == grpc.StatusCode.DEADLINE_EXCEEDED
        # the second could only compute once the first released the slot, after its 0.6 s sleep
        assert isinstance(done["first"], float) and done["second"] - t0 >= 0.6
        # every wait is measured, the one that ran out of deadline too: ~0 + ~0.45 s + 0.2 s
        registry = server.metrics.registry
        assert registry.get_sample_value("tandem_compute_slot_wait_seconds_count") == 3
        assert 0.5 <= registry.get_sample_value("tandem_compute_slot_wait_seconds_sum") < 2.0
        assert registry.get_sample_value("tandem_compute_slot_wait_seconds_bucket", {"le": "0.1"}) == 1
    finally:
        channel.close()
        server.stop(0)
