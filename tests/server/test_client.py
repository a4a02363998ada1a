"""tandem.server.client against a real in-process server (the fake engine): every RPC, sync and async,
error mapping with the field, token, deadlines and retries."""

import asyncio
import dataclasses
import logging
import random
import threading
import time

import pytest

from tandem.server.client import (
    AsyncTandemClient,
    Event,
    Filters,
    Item,
    Recorded,
    Reloaded,
    Results,
    RetryPolicy,
    Status,
    TandemClient,
    TandemError,
    parse_field,
)
from tandem.server.service import ServerConfig, TandemServer
from tests.conftest import free_port
from tests.server.fake_engine import load_fake_engine, write_fake_bundle


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    write_fake_bundle(root)
    srv = TandemServer(ServerConfig(bundles=root, port=0, token="tok", workers=8), load_fake_engine)
    srv.start()
    yield srv
    srv.stop(0)


@pytest.fixture(scope="module")
def addr(server):
    return f"127.0.0.1:{server.port}"


@pytest.fixture()
def client(addr):
    with TandemClient(addr, token="tok", timeout=5) as c:
        yield c


def test_every_rpc_returns_typed_frozen_results(client, server):
    client.wait_until_serving(timeout=5)
    assert client.health() == "SERVING" and client.health("tandem.v1.Tandem") == "SERVING"
    hits = client.search("red", k=2, explain=True, request_id="req-1")
    assert isinstance(hits, Results) and hits.item_ids == ["i00", "i04"] and hits.request_id == "req-1"
    assert hits.bundle_version == server.manager.engine.version and not hits.cold_start
    e = hits.items[0].explanation
    assert e.sources[0].source == "fake" and e.ranker_score == 2.0 and e.top_features[0].name == "closeness"
    with pytest.raises(dataclasses.FrozenInstanceError):
        hits.items[0].score = 0.0
    assert client.search("red", k=5, filters=Filters(brands=("globex",))).item_ids == ["i04", "i16"]
    assert hits.unknown_candidates == 0
    mine = client.search("item red", k=5, candidate_item_ids=("i03", "i04", "gone", "i12"), explain=True)
    assert mine.item_ids == ["i04", "i12", "i03"] and mine.unknown_candidates == 1  # the red ones first
    assert mine.items[0].explanation is not None
    assert client.search("red", k=1, candidate_item_ids=iter(["i05", "i08"])).item_ids == ["i08"]

    rec = client.recommend("alice", k=2)
    assert rec.item_ids == ["i04", "i05"] and rec.items[0].score == 0.95 and rec.items[0].explanation is None
    assert client.recommend("nobody", k=1).cold_start
    assert client.recommend("nobody", k=1, context=[Event("nobody", "i07", event="view")]).item_ids == ["i08"]
    assert client.similar_items("i05", k=1).item_ids == ["i04"]

    done = client.record(Event("carol", "i12", event="click"))
    assert isinstance(done, Recorded) and (done.accepted, done.applied) == (1, 1)
    assert client.recommend("carol", k=1).item_ids == ["i13"]
    streamed = client.stream_events(Event("dave", f"i{n:02d}", ts=1_700_000_000 + n) for n in range(3))
    assert (streamed.accepted, streamed.applied) == (3, 3) and streamed.last_sequence == done.last_sequence + 3

    item = client.get_item("i03")
    assert isinstance(item, Item) and item == Item("i03", "item 3 black", "", "Home > Kitchen", "acme", 8.0, (), True)
    assert client.ping(b"\x00abc") == b"\x00abc"
    status = client.status()
    assert isinstance(status, Status) and status.items == 20 and status.event_log_sequence == streamed.last_sequence
    reloaded = client.reload_bundle()
    assert reloaded == Reloaded(server.manager.engine.version, False, "")


def test_async_client_every_rpc(addr, server):
    async def go():
        async with AsyncTandemClient(addr, token="tok", timeout=5) as c:
            await c.wait_until_serving(timeout=5)
            assert await c.health() == "SERVING"
            assert (await c.search("blue", k=2)).item_ids == ["i02", "i06"]
            mine = await c.search("item blue", k=5, candidate_item_ids=["i01", "zz", "i06"])
            assert mine.item_ids == ["i06", "i01"] and mine.unknown_candidates == 1
            with pytest.raises(TandemError) as exc:
                await c.search("blue", candidate_item_ids=["i01", "i01"])
            assert (exc.value.code, exc.value.field) == ("INVALID_ARGUMENT", "candidate_item_ids[1]")
            assert (await c.recommend("alice", k=1)).item_ids == ["i04"]
            assert (await c.similar_items("i05", k=1)).item_ids == ["i04"]
            assert (await c.record([Event("erin", "i01"), Event("erin", "i02")])).accepted == 2

            async def events():
                for n in range(2):
                    yield Event("frank", f"i0{n}")
            assert (await c.stream_events(events())).accepted == 2
            assert (await c.stream_events([Event("frank", "i05")])).accepted == 1
            assert (await c.get_item("i01")).title == "item 1 green"
            assert await c.ping(b"p") == b"p"
            assert (await c.status()).items == 20
            assert (await c.reload_bundle()).swapped is False
            with pytest.raises(TandemError) as exc:
                await c.similar_items("nope")
            assert (exc.value.code, exc.value.field, exc.value.rpc) == ("NOT_FOUND", "item_id", "SimilarItems")

    asyncio.run(go())


@pytest.mark.parametrize(("call", "code", "field", "message"), [
    (lambda c: c.recommend("u", k=0), "INVALID_ARGUMENT", "k", "k must be between 1 and 1000, got 0"),
    (lambda c: c.search("   "), "INVALID_ARGUMENT", "query", "query must be between"),
    (lambda c: c.search("x", filters=Filters(price_min=3, price_max=1)), "INVALID_ARGUMENT", "filters.price_min",
     "filters.price_min (3.0) must not exceed"),
    (lambda c: c.record([Event("u", "i01"), Event("u", "i02", event="like")]), "INVALID_ARGUMENT",
     "events[1].event", "events[1].event must be one of"),
    (lambda c: c.recommend("u", context=[Event("u", "")]), "INVALID_ARGUMENT", "context[0].item_id",
     "context[0].item_id must not be empty"),
    (lambda c: c.similar_items("nope"), "NOT_FOUND", "item_id", "unknown item_id 'nope'"),
    (lambda c: c.get_item(""), "INVALID_ARGUMENT", "item_id", "item_id must not be empty"),
    (lambda c: c.reload_bundle("../x"), "INVALID_ARGUMENT", "version", "version must be a bundle folder name"),
    (lambda c: c.reload_bundle("v-missing"), "INVALID_ARGUMENT", "version",
     "version 'v-missing' is not a bundle folder under"),
    # refused by the client before sending: still one exception type, naming the field
    (lambda c: c.search("x", k=-1), "INVALID_ARGUMENT", "k", "k must be a positive integer, got -1"),
    (lambda c: c.record([Event("u", "i01"), ("u", "i02")]), "INVALID_ARGUMENT", "events[1]",
     "events[1] must be an Event, got tuple"),
    (lambda c: c.stream_events([Event("u", "i01"), "i02"]), "INVALID_ARGUMENT", "events[1]",
     "events[1] must be an Event, got str; nothing of this stream was recorded"),
    (lambda c: c.record(Event("u", "i01", ts="yesterday")), "INVALID_ARGUMENT", "events[0]", "events[0] must be"),
    (lambda c: c.search("x", candidate_item_ids=["i01", "i02", "i01"]), "INVALID_ARGUMENT", "candidate_item_ids[2]",
     "candidate_item_ids[2] must not repeat candidate_item_ids[0] ('i01')"),
    (lambda c: c.search("x", candidate_item_ids=["i01", ""]), "INVALID_ARGUMENT", "candidate_item_ids[1]",
     "candidate_item_ids[1] must not be empty"),
    (lambda c: c.search("x", candidate_item_ids=(f"i{n}" for n in range(1001))), "INVALID_ARGUMENT",
     "candidate_item_ids", "candidate_item_ids must have at most 1000 ids, got 1001"),
    (lambda c: c.search("x", candidate_item_ids="i01,i02"), "INVALID_ARGUMENT", "candidate_item_ids",
     "candidate_item_ids must be a list of item ids, got a str ('i01,i02')"),
    (lambda c: c.search("x", candidate_item_ids=["i01", 2]), "INVALID_ARGUMENT", "candidate_item_ids[1]",
     "candidate_item_ids[1] must be a string item id, got int"),
])
def test_errors_carry_code_field_and_message(client, call, code, field, message):
    with pytest.raises(TandemError) as exc:
        call(client)
    err = exc.value
    assert (err.code, err.field) == (code, field) and err.message.startswith(message), err.message
    assert str(err) == f"{code}: {err.message}"


def _good_then(bad, n=300):
    """``n`` valid events (enough to reach the server before the bad element), then ``bad``."""
    for k in range(n):
        yield Event("hana", f"i{k % 20:02d}", event="view")
    yield bad


class _Boom(Exception):
    pass


def _good_then_raise(n=300):
    yield from (Event("hana", "i01", event="view") for _ in range(n))
    raise _Boom("the caller's iterator failed")


def test_a_refused_stream_element_records_nothing(client, server, caplog):
    """All or nothing, like the server: a bad element ends the stream with a message the server
    refuses, so the events already sent are not committed. Repeated: cancelling the call instead
    committed the 300 good events about one time in four."""
    start = server.event_log.position()
    with pytest.raises(TandemError) as exc:
        client.stream_events(_good_then(Event("hana", "i01", ts="soon")))
    err = exc.value
    assert (err.code, err.field, err.rpc) == ("INVALID_ARGUMENT", "events[300]", "StreamEvents")
    assert "nothing of this stream was recorded" in err.message, err.message
    with pytest.raises(TandemError) as exc:
        client.stream_events(_good_then(("hana", "i01")))
    assert exc.value.field == "events[300]" and "got tuple" in exc.value.message
    with pytest.raises(_Boom):  # the caller's own exception, unchanged; nothing recorded either
        client.stream_events(_good_then_raise())
    time.sleep(0.3)  # a commit the server were to make late would show by now
    assert server.event_log.position() == start and client.status().event_log_sequence == start
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "a refused stream is not a server error"
    assert server.metrics.registry.get_sample_value("tandem_rpc_responses_total",
                                                    {"rpc": "StreamEvents", "code": "INVALID_ARGUMENT"}) >= 3
    done = client.stream_events(_good_then(Event("hana", "i02"), n=2))  # the channel still works
    assert done.accepted == 3 and done.last_sequence == start + 3


def test_async_refused_stream_element_records_nothing(addr, server):
    start = server.event_log.position()

    async def agood_then(bad, n=300):
        for e in _good_then(bad, n):
            yield e
            if n > 1:
                await asyncio.sleep(0)

    async def go():
        async with AsyncTandemClient(addr, token="tok", timeout=5) as c:
            for source in (agood_then(Event("hana", "i01", value="x")), _good_then(42)):
                with pytest.raises(TandemError) as exc:
                    await c.stream_events(source)
                err = exc.value
                assert (err.code, err.field, err.rpc) == ("INVALID_ARGUMENT", "events[300]", "StreamEvents")
                assert "nothing of this stream was recorded" in err.message, err.message
            with pytest.raises(_Boom):
                await c.stream_events(_good_then_raise())
            await asyncio.sleep(0.3)
            assert server.event_log.position() == start and (await c.status()).event_log_sequence == start
            done = await c.stream_events(agood_then(Event("hana", "i02"), n=1))
            assert done.accepted == 2 and done.last_sequence == start + 2

    asyncio.run(go())


def test_event_id_and_duplicates(client, addr):
    batch = [Event("ivan", f"i0{n}", event="view", event_id=f"ivan-{n}") for n in range(3)]
    first = client.record(batch)
    assert (first.accepted, first.applied, first.duplicates) == (3, 3, 0)
    again = client.record([*batch, Event("ivan", "i09", event_id="ivan-3")])
    assert (again.accepted, again.applied, again.duplicates) == (4, 1, 3)
    assert again.last_sequence == first.last_sequence + 1
    streamed = client.stream_events(iter(batch))
    assert (streamed.accepted, streamed.duplicates, streamed.last_sequence) == (3, 3, again.last_sequence)

    async def go():
        async with AsyncTandemClient(addr, token="tok", timeout=5) as c:
            return await c.record(batch[0])
    assert asyncio.run(go()).duplicates == 1
    with pytest.raises(TandemError) as exc:
        client.record([batch[0], Event("ivan", "i01", event_id="x" * 257)])
    assert exc.value.field == "events[1].event_id" and "nothing of this batch was recorded" in exc.value.message


def test_parse_field_of_server_messages():
    assert parse_field("k must be between 1 and 1000, got 0") == "k"
    assert parse_field("filters.exclude_item_ids must have at most 1000 values") == "filters.exclude_item_ids"
    assert parse_field("events[12].ts must be epoch seconds >= 0, got -1") == "events[12].ts"
    assert parse_field("unknown item_id 'x y' (not in bundle v1)") == "item_id"
    assert parse_field("no bundle is loaded yet; retry shortly") is None
    assert parse_field("missing or wrong bearer token: send metadata 'authorization: Bearer <token>'") is None


def test_token(addr):
    with TandemClient(addr, timeout=5) as anonymous, TandemClient(addr, token="wrong", timeout=5) as wrong:
        assert anonymous.search("red", k=1).item_ids == ["i00"]  # reads stay open
        for c in (anonymous, wrong):
            for call in (lambda c=c: c.record(Event("u", "i01")), c.status, c.reload_bundle,
                         lambda c=c: c.stream_events([Event("u", "i01")])):
                with pytest.raises(TandemError) as exc:
                    call()
                assert exc.value.code == "UNAUTHENTICATED" and exc.value.field is None
    with pytest.raises(ValueError, match="token must not be empty"):
        TandemClient(addr, token=" ")


def test_deadline_per_call_and_per_client(client, addr):
    t0 = time.monotonic()
    with pytest.raises(TandemError) as exc:
        client.search("sleep 1.5 red", timeout=0.3)
    assert exc.value.code == "DEADLINE_EXCEEDED" and time.monotonic() - t0 < 1.2
    with TandemClient(addr, timeout=0.3) as quick:
        with pytest.raises(TandemError) as exc:
            quick.search("sleep 1.5 red")
        assert exc.value.code == "DEADLINE_EXCEEDED"
        assert quick.search("sleep 0.01 red", timeout=5).item_ids[0] == "i00"


def test_attempt_timeout_is_retried_within_the_call_deadline(addr):
    policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01, attempt_timeout_s=0.3)
    with TandemClient(addr, timeout=10, retry=policy) as c:
        t0 = time.monotonic()
        with pytest.raises(TandemError) as exc:
            c.search("sleep 0.6 red")
        # three attempts of 0.3 s each, each cut short by its own deadline
        assert exc.value.code == "DEADLINE_EXCEEDED" and 0.9 <= time.monotonic() - t0 < 5
        t0 = time.monotonic()
        with pytest.raises(TandemError):  # not idempotent: one attempt only
            c.record(Event("u", "i01"), timeout=0.3)  # no token: refused at once
        assert time.monotonic() - t0 < 0.3


def test_retries_until_a_late_server_starts(tmp_path):
    write_fake_bundle(tmp_path)
    port = free_port()
    srv = TandemServer(ServerConfig(bundles=tmp_path, port=port, token="tok", workers=2), load_fake_engine)
    with TandemClient(f"127.0.0.1:{port}", token="tok", timeout=10) as c:
        with pytest.raises(TandemError) as exc:  # a write without event ids is never retried: fails at once
            c.record(Event("u", "i01"))
        assert exc.value.code == "UNAVAILABLE"
        with pytest.raises(TandemError) as exc:
            c.wait_until_serving(timeout=0.3)
        assert exc.value.code == "DEADLINE_EXCEEDED" and "SERVING within 0.3s" in exc.value.message

        starter = threading.Timer(0.8, srv.start)
        starter.start()
        try:
            t0 = time.monotonic()
            assert c.search("red", k=1).item_ids == ["i00"]  # UNAVAILABLE, retried until the server is up
            assert 0.7 < time.monotonic() - t0 < 8
            c.wait_until_serving(timeout=5)
        finally:
            starter.join()
            srv.stop(0)
        with pytest.raises(TandemError) as exc:  # the server has gone: retried, then given up at the deadline
            c.ping(timeout=0.5)
        assert exc.value.code == "UNAVAILABLE"


def test_record_with_event_ids_is_retried_until_a_late_server_starts(tmp_path):
    """A batch whose every event has an event_id is idempotent, so it is retried like a read;
    one event without an id makes the whole batch a one-attempt call."""
    write_fake_bundle(tmp_path)
    port = free_port()
    srv = TandemServer(ServerConfig(bundles=tmp_path, port=port, token="tok", workers=2), load_fake_engine)
    batch = [Event("jo", "i01", event_id="jo-1"), Event("jo", "i02", event_id="jo-2")]
    with TandemClient(f"127.0.0.1:{port}", token="tok", timeout=10) as c:
        for events in ([*batch, Event("jo", "i03")], [Event("jo", "i03", event_id="")]):
            t0 = time.monotonic()
            with pytest.raises(TandemError) as exc:
                c.record(events)
            assert exc.value.code == "UNAVAILABLE" and time.monotonic() - t0 < 1

        async def late_async():
            async with AsyncTandemClient(f"127.0.0.1:{port}", token="tok", timeout=10) as ac:
                return await ac.record(Event("jo", "i04", event_id="jo-4"))

        starter = threading.Timer(0.8, srv.start)
        starter.start()
        try:
            t0 = time.monotonic()
            done = c.record(batch)  # UNAVAILABLE, retried until the server is up
            assert 0.7 < time.monotonic() - t0 < 8
            assert (done.accepted, done.duplicates) == (2, 0)
            assert asyncio.run(late_async()).accepted == 1
            again = c.record(batch)  # e.g. a retry whose first answer was lost: acknowledged, not logged
            assert (again.accepted, again.duplicates, again.last_sequence) == (2, 2, done.last_sequence + 1)
            logged = [(e.user_id, e.item_id) for e in srv.event_log.iter_events()]
            assert logged == [("jo", "i01"), ("jo", "i02"), ("jo", "i04")]
        finally:
            starter.join()
            srv.stop(0)


def test_retry_policy():
    p = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2)
    rng = random.Random(0)
    for attempt, base in [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.5), (9, 0.5)]:
        waits = [p.backoff(attempt, rng) for _ in range(200)]
        assert base / 2 <= min(waits) and max(waits) <= base and max(waits) - min(waits) > base / 4
    for kwargs, field in [({"max_attempts": 0}, "max_attempts"), ({"initial_backoff_s": 0}, "initial_backoff_s"),
                          ({"multiplier": 0.5}, "multiplier"), ({"attempt_timeout_s": 0}, "attempt_timeout_s")]:
        with pytest.raises(ValueError, match=field):
            RetryPolicy(**kwargs)


def test_client_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="tls_ca"):
        TandemClient("127.0.0.1:1", tls_ca=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="timeout"):
        TandemClient("127.0.0.1:1", timeout=0)
    with pytest.raises(ValueError, match="addr"):
        TandemClient("")


def test_parse_field_of_messages_that_quote_the_value():
    assert parse_field("version 'CURRENT' is not a bundle folder under /b; bundles there: v1") == "version"
    assert parse_field("events[1].ts 4102444800 is more than 86400 s past the server's clock") == "events[1].ts"
    assert parse_field("events[2] is not a valid tandem.v1.Event message (bad UTF-8)") == "events[2]"
    assert parse_field("no bundle is loaded yet; retry shortly") is None
