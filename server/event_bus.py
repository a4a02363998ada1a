"""A shared, ordered log that several servers append to and follow: the small :class:`EventBus`
interface and its Redis Streams implementation, :class:`RedisStreamBus`.

The bus knows entries, not events: an entry has a ``kind`` and a list of JSON records, each with
an optional idempotency key, so that other changes than events (a live catalog's) can travel on
it later. The entry format is the contract in :mod:`tandem.index_builder.event_stream`.

:meth:`RedisStreamBus.append` is one Lua script, which Redis runs atomically: it reads the entries
after the caller's position (those the caller has not applied yet, so that it can apply them first
and keep stream order), checks the batch's idempotency keys against a sorted set (``<stream>:ids``,
member the key, score when it expires, ``key_retention_s`` after it was added), and, when none is
there, appends the batch as ONE stream entry and adds its keys; when some are there it writes
nothing and says which, and the caller sends the batch again without them. A batch is therefore
all or nothing, and with ``appendonly yes`` + ``appendfsync always`` Redis has fsynced it before it
answers (the script's writes reach the AOF as one MULTI/EXEC). Requires Redis 7.0 or newer (script
flags, ``ZMSCORE``, ``XINFO STREAM``'s ``max-deleted-entry-id``).

Every failure to reach Redis or to have it write raises :class:`BusUnavailable`. The write
connection never retries on its own: after a lost answer the append may have happened, and only
the caller (with an idempotency key) can safely try again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from tandem.index_builder.event_stream import (
    DEFAULT_STREAM,
    ENTRY_VERSION,
    position_of,
    redact_url,
    stream_id_of,
)

__all__ = ["Appended", "BusEntry", "BusUnavailable", "EventBus", "RedisStreamBus", "check_bus_url"]

_SCHEMES = ("redis", "rediss", "unix")
_MIN_VERSION = (7, 0)


class BusUnavailable(RuntimeError):
    """The bus could not be reached or refused to write; the message says what happened."""


@dataclass(frozen=True)
class BusEntry:
    """One entry of the bus: ``data`` is the JSON array of its records."""

    position: int
    kind: str
    origin: str
    at: float
    data: bytes


@dataclass(frozen=True)
class Appended:
    """What :meth:`EventBus.append` did: ``position`` of the new entry (0 when every record was a
    duplicate and nothing was appended), ``fresh`` the indices of the records appended, and
    ``before`` the entries after the caller's position that precede the new one, in order (at most
    the limit asked for; read the rest with :meth:`EventBus.read`)."""

    position: int
    fresh: list[int]
    before: list[BusEntry]


class EventBus(Protocol):
    """A shared append-only log of entries with integer positions that only grow."""

    name: str

    def check(self) -> str:
        """Connect and check the server; returns its version. Raises :class:`BusUnavailable`."""

    def append(self, kind: str, records: Sequence[str], keys: Sequence[str | None], after: int,
               before_limit: int = 1000) -> Appended:
        """Append the records whose key (None: no key) is new, as one entry, atomically."""

    def read(self, after: int, upto: int | None = None, count: int = 1000) -> list[BusEntry]:
        """The entries with ``after < position <= upto`` (None: to the end), at most ``count``."""

    def wait(self, after: int, timeout_s: float, count: int = 1000) -> list[BusEntry]:
        """Like :meth:`read` to the end, but waits up to ``timeout_s`` for an entry to come."""

    def last_position(self) -> int:
        """The newest position ever appended (0 when none)."""

    def trimmed_through(self) -> int:
        """A position up to which entries may have been deleted or trimmed away (0 when none was)."""

    def entry(self, position: int) -> BusEntry | None:
        """The entry at ``position``, or None."""

    def close(self) -> None: ...


def check_bus_url(url: str) -> str:
    """``url`` when it is a redis://, rediss:// or unix:// URL; else ValueError naming ``--event-bus``."""
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in _SCHEMES:
        raise ValueError(f"--event-bus must be a redis://HOST:PORT/DB URL (or rediss://, unix://), got {url[:80]!r}")
    return url


# KEYS[1] the stream, KEYS[2] the sorted set of idempotency keys (member: the key, score: when it
# expires, epoch seconds). ARGV[1] the caller's position (stream id, exclusive), ARGV[2] how many
# entries after it to return at most, ARGV[3] now, ARGV[4] now + retention, ARGV[5..8] kind, origin,
# at, format version, ARGV[9] the number of records, ARGV[10] their JSON array, ARGV[11..] their keys
# (distinct). When a key is already there, nothing is written: the script returns the indices of
# those keys (0-based among ARGV[11..]) and the caller sends the batch again without them.
_APPEND = """#!lua
local stream, ids = KEYS[1], KEYS[2]
local before = redis.call('XRANGE', stream, '(' .. ARGV[1], '+', 'COUNT', ARGV[2])
if ARGV[9] == '0' then
  return {'', {}, before}
end
redis.call('ZREMRANGEBYSCORE', ids, '-inf', '(' .. ARGV[3])
local seen = {}
for first = 11, #ARGV, 4000 do
  local scores = redis.call('ZMSCORE', ids, unpack(ARGV, first, math.min(first + 3999, #ARGV)))
  for i = 1, #scores do
    if scores[i] then
      seen[#seen + 1] = first + i - 12
    end
  end
end
if #seen > 0 then
  return {'', seen, before}
end
local id = redis.call('XADD', stream, '*', 'v', ARGV[8], 'kind', ARGV[5], 'origin', ARGV[6], 'at', ARGV[7],
                      'n', ARGV[9], 'data', ARGV[10])
for first = 11, #ARGV, 2000 do
  local args = {}
  for i = first, math.min(first + 1999, #ARGV) do
    args[#args + 1] = ARGV[4]
    args[#args + 1] = ARGV[i]
  end
  redis.call('ZADD', ids, unpack(args))
end
return {id, {}, before}
"""


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _entry(entry_id, fields) -> BusEntry:
    if not isinstance(fields, dict):  # a raw script reply: [field, value, field, value, ...]
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    f = {_text(k): v for k, v in fields.items()}
    try:
        at = float(_text(f.get("at", b"0")))
    except ValueError:
        at = 0.0
    data = f.get("data", b"[]")
    return BusEntry(position_of(entry_id), _text(f.get("kind", b"")), _text(f.get("origin", b"")), at,
                    data if isinstance(data, bytes) else str(data).encode("utf-8"))


class RedisStreamBus:
    """:class:`EventBus` on one Redis Stream (``url``: redis://HOST:PORT/DB)."""

    def __init__(self, url: str, stream: str = DEFAULT_STREAM, *, origin: str, key_retention_s: float = 7 * 86400,
                 timeout_s: float = 5.0) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = check_bus_url(url)
        self.stream = stream
        self.origin = origin
        self.name = f"{redact_url(url)} stream {stream}"
        self.key_retention_s = max(1, int(key_retention_s))
        self._errors = (redis.exceptions.RedisError, OSError)

        def client(socket_timeout: float):
            return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=min(1.0, timeout_s),
                                        retry=Retry(NoBackoff(), 0), health_check_interval=0)

        self._client = client(timeout_s)
        self._waiter = None  # the blocking reads' own connection (made on first use)
        self._make_waiter = client
        self._timeout_s = timeout_s
        self._script = self._client.register_script(_APPEND)

    def _fail(self, what: str, exc: Exception) -> BusUnavailable:
        return BusUnavailable(f"event bus {self.name}: {what} failed ({type(exc).__name__}: {exc})")

    def check(self) -> str:
        """Connect and check the server version; returns it. Raises :class:`BusUnavailable`."""
        try:
            version = _text(self._client.info("server").get("redis_version", "0"))
        except self._errors as exc:
            raise self._fail("connecting", exc) from None
        parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        if parts < _MIN_VERSION:
            raise BusUnavailable(f"event bus {self.name}: Redis {version} is too old; Tandem needs Redis 7.0 or newer")
        return version

    @property
    def ids_key(self) -> str:
        """The sorted set of the idempotency keys the fleet has seen (score: when each expires)."""
        return f"{self.stream}:ids"

    def append(self, kind: str, records: Sequence[str], keys: Sequence[str | None], after: int,
               before_limit: int = 1000) -> Appended:
        if len(keys) != len(records):
            raise ValueError(f"keys has {len(keys)} entries for {len(records)} records")
        first: dict[str, int] = {}
        live = [i for i, key in enumerate(keys) if not key or first.setdefault(key, i) == i]  # repeats in the batch
        while True:  # each round writes, or drops the records whose key the set holds (at least one)
            now = time.time()
            sent_keys = [keys[i] for i in live if keys[i]]
            argv = [stream_id_of(after), int(before_limit), repr(now), repr(now + self.key_retention_s), kind,
                    self.origin, repr(now), ENTRY_VERSION, len(live), "[" + ",".join(records[i] for i in live) + "]",
                    *sent_keys]
            try:
                new_id, seen, before = self._script(keys=[self.stream, self.ids_key], args=argv)
            except self._errors as exc:
                raise self._fail("append", exc) from None
            if new_id or not live:
                entries = [_entry(i, f) for i, f in before]
                return Appended(position_of(new_id) if new_id else 0, live if new_id else [], entries)
            known = {sent_keys[int(k)] for k in seen}
            live = [i for i in live if keys[i] not in known]

    def read(self, after: int, upto: int | None = None, count: int = 1000) -> list[BusEntry]:
        try:
            found = self._client.xrange(self.stream, f"({stream_id_of(after)}",
                                        "+" if upto is None else stream_id_of(upto), count=count)
        except self._errors as exc:
            raise self._fail("read", exc) from None
        return [_entry(i, f) for i, f in found]

    def wait(self, after: int, timeout_s: float, count: int = 1000) -> list[BusEntry]:
        try:
            if self._waiter is None:
                self._waiter = self._make_waiter(timeout_s + self._timeout_s)
            found = self._waiter.xread({self.stream: stream_id_of(after)}, count=count,
                                       block=max(1, int(timeout_s * 1000)))
        except self._errors as exc:
            raise self._fail("follow", exc) from None
        return [_entry(i, f) for _, entries in found or () for i, f in entries]

    def _info(self) -> dict:
        try:
            return self._client.xinfo_stream(self.stream)
        except self._errors as exc:
            if "no such key" in str(exc):
                return {}
            raise self._fail("XINFO STREAM", exc) from None

    def last_position(self) -> int:
        return position_of(self._info().get("last-generated-id", b"0-0"))

    def trimmed_through(self) -> int:
        # XDEL moves max-deleted-entry-id; XTRIM does not, but leaves fewer entries than were added,
        # all of them from the head: everything before the first entry left may be gone
        info = self._info()
        gone = position_of(info.get("max-deleted-entry-id", b"0-0"))
        if int(info.get("entries-added", 0)) > int(info.get("length", 0)):
            first = info.get("first-entry")
            head = position_of(first[0]) - 1 if first else position_of(info.get("last-generated-id", b"0-0"))
            gone = max(gone, head)
        return gone

    def entry(self, position: int) -> BusEntry | None:
        sid = stream_id_of(position)
        try:
            found = self._client.xrange(self.stream, sid, sid, count=1)
        except self._errors as exc:
            raise self._fail("read", exc) from None
        return _entry(*found[0]) if found else None

    def close(self) -> None:
        for c in (self._client, self._waiter):
            if c is not None:
                try:
                    c.close()
                except self._errors:
                    pass
