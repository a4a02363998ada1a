"""The event bus on a real redis-server: positions, one entry per batch, idempotency keys shared by
every writer, the entries a writer has not applied yet, trimming refused on replay, the build's
reader, and UNAVAILABLE-style errors when Redis is gone."""

import threading
import time

import pytest

from tandem.index_builder.event_stream import (
    decode_events,
    encode_event,
    position_of,
    read_stream,
    redact_url,
    stream_id_of,
    stream_mark,
)
from tandem.retrieval.data import Event
from tandem.server.bus_log import BusEventLog
from tandem.server.event_bus import BusUnavailable, RedisStreamBus, check_bus_url
from tandem.server.event_log import EventLogDamaged
from tests.redis_server import redis_server  # noqa: F401 - the fixture

STREAM = "test:events"


def bus(url, origin="a", **kw):
    return RedisStreamBus(url, STREAM, origin=origin, **kw)


def records(*events):
    return [encode_event(e, None) for e in events]


def test_positions_round_trip_and_keep_stream_order():
    ids = ["0-0", "0-1", "1700000000000-0", "1700000000000-7", "1700000000001-0", "2000000000000-1048575"]
    positions = [position_of(i) for i in ids]
    assert positions == sorted(positions) and len(set(positions)) == len(ids)
    assert [stream_id_of(p) for p in positions] == ids and position_of(b"5-3") == (5 << 20) + 3
    assert max(positions) < 2**63  # fits RecordEventsResponse.last_sequence (int64)
    for bad in ("x-1", "1-1048576", "", "1-2-3"):
        with pytest.raises(ValueError):
            position_of(bad)


def test_records_round_trip_and_bad_ones_are_named():
    events = [Event("u1", "i1", 5, "rate", 4.5), Event("ü", "i2", 6, "view")]
    data = "[" + ",".join(encode_event(e, i) for e, i in zip(events, ["k1", None], strict=True)) + "]"
    assert decode_events(data) == events
    with pytest.raises(ValueError, match=r"data\[0\]"):
        decode_events('[["u", "i", 1, "teleport", null, null]]')
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0" and redact_url("redis://h/0") == "redis://h/0"
    with pytest.raises(ValueError, match="--event-bus"):
        check_bus_url("http://h:6379")


def test_a_batch_is_one_entry_and_keys_are_shared_by_every_writer(redis_server):  # noqa: F811
    a, b = bus(redis_server.url, "a"), bus(redis_server.url, "b", key_retention_s=3600)
    e = [Event(f"u{n}", "i1", n) for n in range(3)]
    done = a.append("events", records(*e), ["k0", None, "k2"], after=0)
    assert done.position > 0 and done.fresh == [0, 1, 2] and done.before == []
    r = redis_server.client()
    now = time.time()
    assert r.xlen(STREAM) == 1 and now + 7 * 86400 - 60 < r.zscore(f"{STREAM}:ids", "k0") <= now + 7 * 86400
    # another writer: k0 and k2 are duplicates, the key-less event and k3 are new; k3 twice in one batch
    again = b.append("events", records(e[0], e[1], e[2], e[0], e[0]), ["k0", None, "k2", "k3", "k3"],
                     after=done.position)
    assert again.fresh == [1, 3] and again.position > done.position and again.before == []
    assert decode_events(b.entry(again.position).data) == [e[1], e[0]] and b.entry(again.position).origin == "b"
    assert now + 3500 < r.zscore(f"{STREAM}:ids", "k3") <= time.time() + 3600 and r.zcard(f"{STREAM}:ids") == 3
    nothing = a.append("events", records(e[0]), ["k2"], after=0)  # all duplicates: nothing appended
    assert nothing.position == 0 and nothing.fresh == [] and r.xlen(STREAM) == 2
    # ... but the entries after the caller's position come back, in order, for it to apply first
    assert [x.position for x in nothing.before] == [done.position, again.position]
    assert [x.position for x in a.read(0)] == [done.position, again.position] and a.read(again.position) == []
    assert a.last_position() == again.position and a.trimmed_through() == 0
    # an expired key is forgotten: its event is new again
    r.zadd(f"{STREAM}:ids", {"k0": now - 1})
    assert a.append("events", records(e[0]), ["k0"], after=0).fresh == [0] and r.xlen(STREAM) == 3
    a.close()
    b.close()


def test_concurrent_writers_with_one_key_append_it_once(redis_server):  # noqa: F811
    buses = [bus(redis_server.url, f"w{n}") for n in range(4)]
    results = []

    def write(b):
        for n in range(50):
            results.append(b.append("events", records(Event("u", "i1", n)), [f"key-{n}"], after=0).fresh)

    threads = [threading.Thread(target=write, args=(b,)) for b in buses]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(len(f) for f in results) == 50 and redis_server.client().xlen(STREAM) == 50


def test_bus_log_applies_others_first_and_moves_its_cursor(redis_server):  # noqa: F811
    applied = []
    lock = threading.Lock()
    log_a = BusEventLog(bus(redis_server.url, "a"))
    log_a.bind(lock, lambda events: applied.extend(events) or len(events))
    assert log_a.open() == 0
    other = bus(redis_server.url, "b")
    theirs = other.append("events", records(Event("x", "i1", 1)), [None], after=0)
    with lock:
        pos, fresh = log_a.append_unique([Event("y", "i2", 2)], ["id-y"])
    # the other writer's event was applied before this batch, which the caller (the manager) applies itself
    assert applied == [Event("x", "i1", 1)] and fresh == [0] and pos > theirs.position == log_a.bus.read(0)[0].position
    assert log_a.position() == pos
    with lock:  # a duplicate is acknowledged, nothing appended, the cursor stays
        assert log_a.append_unique([Event("y", "i2", 2)], ["id-y"]) == (pos, [])
    assert list(log_a.iter_events(after_seq=0)) == [Event("x", "i1", 1), Event("y", "i2", 2)]
    assert list(log_a.iter_events(after_seq=theirs.position)) == [Event("y", "i2", 2)]
    assert list(log_a.iter_events(received_since=2**40)) == []
    log_a.close()
    other.close()


def test_a_batch_sent_again_is_applied_here_before_its_ack_however_far_behind(redis_server):  # noqa: F811
    # a client sends again a batch that got UNAVAILABLE although Redis had appended it (its answer
    # was lost); its original lies more than one read (1000 entries) after this replica's cursor
    applied = []
    lock = threading.Lock()
    log_a = BusEventLog(bus(redis_server.url, "a"))
    log_a.bind(lock, lambda events: applied.extend(events) or len(events))
    log_a.open()
    other = bus(redis_server.url, "b")
    pos = 0
    for n in range(1100):
        pos = other.append("events", records(Event(f"u{n}", "i1", n)), [None], after=pos).position
    original = other.append("events", records(Event("me", "i9", 7)), ["evt-9"], after=pos).position
    with lock:  # a duplicate: acknowledged, nothing appended, and the original applied here first
        assert log_a.append_unique([Event("me", "i9", 7)], ["evt-9"]) == (original, [])
    assert len(applied) == 1101 and applied[-1] == Event("me", "i9", 7) and log_a.position() == original
    with lock:  # a batch with a duplicate and a new event: the original is applied once, before the new entry
        pos, fresh = log_a.append_unique([Event("me", "i9", 7), Event("me", "i3", 8)], ["evt-9", "evt-10"])
    assert fresh == [1] and pos > original and len(applied) == 1101
    log_a.close()
    other.close()


def test_replay_refuses_a_stream_trimmed_past_its_start(redis_server):  # noqa: F811
    b = bus(redis_server.url)
    first = b.append("events", records(Event("u", "i1", 1)), [None], after=0).position
    second = b.append("events", records(Event("u", "i2", 2)), [None], after=first).position
    log_b = BusEventLog(b)
    third = b.append("events", records(Event("u", "i3", 3)), [None], after=second).position
    assert list(log_b.iter_events(after_seq=0)) == [Event("u", "i1", 1), Event("u", "i2", 2), Event("u", "i3", 3)]
    # trimmed the documented way: keep the entry a bundle includes last (MINID = its stream id)
    assert redis_server.client().xtrim(STREAM, minid=stream_id_of(second), approximate=False) == 1
    assert list(log_b.iter_events(after_seq=second)) == [Event("u", "i3", 3)]  # nothing it needs is gone
    # a replay from the start needs the trimmed first entry (from ``first`` on it needs none; whether
    # that is refused too depends on whether the two appends fell in one millisecond: the bound is
    # the position just before the first entry left)
    with pytest.raises(EventLogDamaged, match="trimmed"):
        list(log_b.iter_events(after_seq=0))
    redis_server.client().xdel(STREAM, stream_id_of(third))  # a deleted entry in the middle counts too
    with pytest.raises(EventLogDamaged, match="trimmed"):
        list(log_b.iter_events(after_seq=second))
    b.close()


def test_the_build_reads_what_the_fleet_wrote_and_marks_it(redis_server):  # noqa: F811
    assert stream_mark(redis_server.url, STREAM)["seq"] == 0 and list(read_stream(redis_server.url, STREAM)) == []
    b = bus(redis_server.url, "writer-1")
    first = b.append("events", records(Event("u", "i1", 1), Event("v", "i2", 2)), [None, None], after=0).position
    mark = stream_mark(redis_server.url, STREAM)
    later = b.append("events", records(Event("w", "i3", 3)), [None], after=first).position
    b.append("catalog", ['{"item_id": "i9"}'], [None], after=later)  # another kind: skipped by this reader
    assert mark["seq"] == first and mark["stream_id"] == stream_id_of(first)
    assert mark["last_event"]["origin"] == "writer-1" and mark["stream"] == STREAM
    assert list(read_stream(redis_server.url, STREAM, upto_seq=mark["seq"])) == [Event("u", "i1", 1),
                                                                                  Event("v", "i2", 2)]
    assert [e.user_id for e in read_stream(redis_server.url, STREAM, batch=1)] == ["u", "v", "w"]
    log_b = BusEventLog(b)
    assert log_b.holds(mark["seq"], mark["last_event"])
    assert not log_b.holds(later, mark["last_event"])  # another entry
    assert not log_b.holds(mark["seq"], {"user_id": "u", "item_id": "i1", "ts": 1})  # a SQLite log's fingerprint
    b.close()


def test_a_dead_redis_is_unavailable_never_silent(redis_server):  # noqa: F811
    b = bus(redis_server.url, timeout_s=0.5)
    b.append("events", records(Event("u", "i1", 1)), [None], after=0)
    redis_server.kill9()
    for call in (lambda: b.append("events", records(Event("u", "i1", 2)), [None], after=0),
                 lambda: b.read(0), lambda: b.wait(0, 0.1), b.last_position, b.check):
        with pytest.raises(BusUnavailable, match="event bus redis://127.0.0.1"):
            call()
    redis_server.start()  # AOF with fsync always: the acknowledged entry is back, and the bus reconnects
    assert [decode_events(e.data) for e in b.read(0)] == [[Event("u", "i1", 1)]]
    with pytest.raises(ValueError, match="--events-bus"):
        stream_mark("redis://127.0.0.1:1/0", STREAM)
    b.close()
