"""The Redis Stream that a fleet of ``tandem serve --event-bus redis://...`` replicas shares as its
log of record: the entry format (the contract between the servers that write it and ``tandem
build --events-bus``, which reads it), positions, and reading it without importing the server.

One stream entry is one acknowledged batch (a RecordEvents call or a StreamEvents stream)::

    XADD <stream> * v 1 kind events origin <replica id> at <epoch seconds> n <count> data <JSON>

``data`` is a JSON array with one record per event, ``[user_id, item_id, ts, event, value,
event_id]`` (``value`` and ``event_id`` may be null). ``kind`` names the record type, so that
other changes (a live catalog's, later) can travel on the same stream; a reader skips kinds it
does not know. ``origin`` is the writing replica's id (random per process start) and ``at`` its
clock when it appended: with the entry id they fingerprint the entry a bundle includes.

Positions: a stream entry id ``MS-SEQ`` is also a 64-bit integer, ``MS << 20 | SEQ``
(:func:`position_of`), so that the event-log position of the SQLite log and of the stream are one
type (RecordEvents' ``last_sequence``, GetStatus' ``event_log_sequence``, a manifest's
``event_log.seq``). Entries are written with ``*`` ids (one per batch), so ``SEQ`` stays far below
2**20 within one millisecond.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

from tandem.retrieval.data import EVENT_TYPES, Event

__all__ = ["CATALOG_KIND", "DEFAULT_STREAM", "ENTRY_VERSION", "EVENTS_KIND", "SEQ_BITS", "decode_catalog",
           "decode_events", "encode_catalog", "encode_event", "read_stream_catalog",
           "position_of", "read_stream", "redact_url", "stream_id_of", "stream_mark"]

DEFAULT_STREAM = "tandem:events"
ENTRY_VERSION = "1"
EVENTS_KIND = "events"
#: an entry of live catalog changes (UpsertItems / DeleteItems): records [event, item_id, payload],
#: ``event`` "catalog.upsert" (``payload`` the item row as JSON) or "catalog.delete" (``payload`` "")
CATALOG_KIND = "catalog"
SEQ_BITS = 20
_SEQ_MASK = (1 << SEQ_BITS) - 1


def position_of(stream_id: str | bytes) -> int:
    """The integer position of a stream entry id ``MS-SEQ`` (``0-0`` is 0)."""
    text = stream_id.decode("ascii") if isinstance(stream_id, bytes) else str(stream_id)
    ms, _, seq = text.partition("-")
    if not ms.isdigit() or not (seq or "0").isdigit():
        raise ValueError(f"{text!r} is not a Redis stream entry id (MS-SEQ)")
    ms_i, seq_i = int(ms), int(seq or 0)
    if seq_i > _SEQ_MASK:
        raise ValueError(f"stream entry id {text}: sequence {seq_i} within one millisecond is past 2**{SEQ_BITS}; "
                         "Tandem writes entries with '*' ids, one per batch: was this stream written by another tool?")
    return (ms_i << SEQ_BITS) | seq_i


def stream_id_of(position: int) -> str:
    """The stream entry id ``MS-SEQ`` of an integer position (inverse of :func:`position_of`)."""
    if position < 0:
        raise ValueError(f"a stream position is >= 0, got {position}")
    return f"{position >> SEQ_BITS}-{position & _SEQ_MASK}"


def encode_event(e: Event, event_id: str | None) -> str:
    """One record of an ``events`` entry's ``data`` array, as JSON text."""
    return json.dumps([e.user_id, e.item_id, int(e.ts), e.event, e.value, event_id or None],
                      ensure_ascii=False, separators=(",", ":"))


def decode_events(data: str | bytes) -> list[Event]:
    """The events of an ``events`` entry's ``data`` field; ValueError names what is wrong."""
    records = json.loads(data)
    if not isinstance(records, list):
        raise ValueError("data is not a JSON array")
    out = []
    for n, r in enumerate(records):
        if not (isinstance(r, list) and len(r) == 6 and isinstance(r[0], str) and isinstance(r[1], str)
                and isinstance(r[2], int) and r[3] in EVENT_TYPES and (r[4] is None or isinstance(r[4], (int, float)))):
            raise ValueError(f"data[{n}] is not [user_id, item_id, ts, event, value, event_id]: {str(r)[:120]}")
        out.append(Event(r[0], r[1], r[2], r[3], None if r[4] is None else float(r[4])))
    return out


def encode_catalog(event: str, item_id: str, payload: str) -> str:
    """One record of a ``catalog`` entry's ``data`` array, as JSON text."""
    return json.dumps([event, item_id, payload], ensure_ascii=False, separators=(",", ":"))


def decode_catalog(data: str | bytes) -> list[tuple[str, str, str]]:
    """The ``(event, item_id, payload)`` records of a ``catalog`` entry's ``data`` field; ValueError
    names what is wrong."""
    records = json.loads(data)
    if not isinstance(records, list):
        raise ValueError("data is not a JSON array")
    out = []
    for n, r in enumerate(records):
        if not (isinstance(r, list) and len(r) == 3 and r[0] in ("catalog.upsert", "catalog.delete")
                and isinstance(r[1], str) and isinstance(r[2], str)):
            raise ValueError(f"data[{n}] is not [event, item_id, payload]: {str(r)[:120]}")
        out.append((r[0], r[1], r[2]))
    return out


def redact_url(url: str) -> str:
    """``url`` without its password (for logs, status and manifests)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username + ':' if parts.username else ':'}***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _client(url: str):
    import redis

    return redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=5)


def _failed(url: str, exc: Exception) -> ValueError:
    return ValueError(f"--events-bus {redact_url(url)}: reading the stream failed ({type(exc).__name__}: {exc})")


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def stream_mark(url: str, stream: str = DEFAULT_STREAM) -> dict:
    """What a bundle built from the stream now includes (the manifest's ``event_log``):
    ``{"seq": position, "stream_id": "MS-SEQ", "stream": ..., "bus": url without password,
    "last_event": {"origin": ..., "at": ...}}`` of the newest entry (``seq`` 0 and ``last_event``
    None for an empty or missing stream). Read the events with ``read_stream(..., upto_seq=seq)``."""
    import redis

    client = _client(url)
    try:
        newest = client.xrevrange(stream, "+", "-", count=1)
    except redis.exceptions.RedisError as exc:
        raise _failed(url, exc) from None
    finally:
        client.close()
    mark = {"seq": 0, "stream_id": "0-0", "stream": stream, "bus": redact_url(url), "last_event": None}
    if newest:
        entry_id, fields = newest[0]
        fields = {_text(k): _text(v) for k, v in fields.items()}
        mark.update(seq=position_of(entry_id), stream_id=_text(entry_id),
                    last_event={"origin": fields.get("origin", ""), "at": fields.get("at", "")})
    return mark


def read_stream(url: str, stream: str = DEFAULT_STREAM, upto_seq: int | None = None,
                batch: int = 1000) -> Iterator[Event]:
    """The events of the stream's ``events`` entries in stream order, up to position ``upto_seq``
    (None: the end). Entries of other kinds are skipped; an entry that does not decode raises
    ValueError naming its id."""
    for _kind, records in _read_entries(url, stream, upto_seq, batch, (EVENTS_KIND,)):
        yield from records


def read_stream_catalog(url: str, stream: str = DEFAULT_STREAM, upto_seq: int | None = None,
                        batch: int = 1000) -> list[tuple[str, str, str]]:
    """The live catalog changes of the stream's ``catalog`` entries up to ``upto_seq``, in stream
    order, as ``(event, item_id, payload)`` records (what the build applies to the catalog rows)."""
    return [r for _, records in _read_entries(url, stream, upto_seq, batch, (CATALOG_KIND,)) for r in records]


def _read_entries(url: str, stream: str, upto_seq: int | None, batch: int, kinds: tuple[str, ...]):
    import redis

    client = _client(url)
    upto = "+" if upto_seq is None else stream_id_of(upto_seq)
    after = "0-0"
    try:
        while True:
            try:
                entries = client.xrange(stream, f"({after}", upto, count=batch)
            except redis.exceptions.RedisError as exc:
                raise _failed(url, exc) from None
            for entry_id, fields in entries:
                fields = {_text(k): v for k, v in fields.items()}
                kind = _text(fields.get("kind", b""))
                if kind not in kinds:
                    continue
                try:
                    data = fields.get("data", b"")
                    yield kind, (decode_events(data) if kind == EVENTS_KIND else decode_catalog(data))
                except ValueError as exc:
                    raise ValueError(f"stream {stream} entry {_text(entry_id)}: {exc}") from None
            if len(entries) < batch:
                return
            after = _text(entries[-1][0])
    finally:
        client.close()

