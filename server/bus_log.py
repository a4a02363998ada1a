"""The event log of a replica in a fleet (``tandem serve --event-bus redis://...``): the interface of
:class:`tandem.server.event_log.EventLog` that the bundle manager and the servicers use, over an
:class:`~tandem.server.event_bus.EventBus` that every replica shares as the log of record.

Stream order, exactly once. :meth:`BusEventLog.position` is this replica's cursor: every entry up
to it is applied to the serving engine, none after it. Entries are applied in stream order only,
under the bundle manager's ingestion lock, by two paths that both move the cursor:

- a write (:meth:`BusEventLog.append_unique`, under the lock): the append script also returns the
  entries between the cursor and the new entry (other replicas'), which are applied first; then
  the manager applies the batch itself (read your writes) and the cursor is the new entry; a batch
  of duplicates only (sent again after an UNAVAILABLE whose append had happened) appends nothing:
  the entries up to the end of the stream, its originals among them, are applied before its ack;
- the follower thread (:meth:`BusEventLog.follow`): ``XREAD BLOCK`` after the cursor, then, under
  the lock, applies the entries still after the cursor (a write may have applied some meanwhile).

A bundle swap replays the stream up to the cursor (``BundleManager._catch_up``), so the new engine
holds the same entries as the old one. A replica that starts (or restarts: engines live in memory,
so there is nothing else to resume from) sets its cursor to the end of the stream, replays the
stream from the position its bundle includes (the manifest's ``event_log.seq``) to the cursor, then
applies what came meanwhile (:meth:`BusEventLog.catch_up`) before it reports SERVING.

Bus down: an append raises :class:`~tandem.server.event_bus.BusUnavailable` (RPC ``UNAVAILABLE``;
nothing is acknowledged that was not appended), reads keep serving, the follower retries with
backoff (0.1 s doubling to 5 s); ``tandem_event_bus_up`` and one log line per change of state say so.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tandem.index_builder.event_stream import (
    CATALOG_KIND,
    EVENTS_KIND,
    decode_catalog,
    decode_events,
    encode_catalog,
    encode_event,
    stream_id_of,
)
from tandem.retrieval.data import Event
from tandem.server.event_bus import BusEntry, BusUnavailable, EventBus
from tandem.server.event_log import CatalogRow, EventLogDamaged
from tandem.server.logs import log_fields

__all__ = ["BusEventLog", "BusMetrics"]

log = logging.getLogger("tandem.server.bus")

_READ = 1000  # entries per read
_BACKOFF = (0.1, 5.0)  # the follower's first and longest wait between attempts


class BusMetrics:
    """The event bus' metrics, on the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.up = Gauge("tandem_event_bus_up", "1 while the event bus answers; 0 from a failed call until one succeeds",
                        registry=r)
        self.errors = Counter("tandem_event_bus_errors_total", "failed event bus calls, by operation (append, read, "
                              "follow)", ["op"], registry=r)
        self.entries = Counter("tandem_event_bus_entries_applied_total",
                               "bus entries appended by other replicas (or lost answers) and applied here", registry=r)
        self.events = Counter("tandem_event_bus_events_applied_total", "events of those entries", registry=r)
        self.skipped = Counter("tandem_event_bus_entries_skipped_total",
                               "bus entries not applied, by reason (unknown kind, undecodable)", ["reason"],
                               registry=r)
        self.visibility = Histogram("tandem_event_bus_visibility_seconds",
                                    "from an entry's append (the writer's clock) to its events applied here",
                                    registry=r, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                                         2.5, 5.0, 10.0, 60.0))


class BusEventLog:
    """A replica's view of the shared log; call :meth:`bind`, then :meth:`open` before the first
    bundle loads, :meth:`catch_up` and :meth:`follow` after it."""

    def __init__(self, bus: EventBus, metrics: BusMetrics | None = None) -> None:
        self.bus = bus
        self.path = bus.name  # what messages name (EventLog's path)
        self.metrics = metrics
        self._cursor = 0
        self._lock: threading.Lock | None = None
        self._apply: Callable[[Sequence[Event | CatalogRow]], int] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._down_since: float | None = None

    def bind(self, lock: threading.Lock, apply: Callable[[Sequence[Event | CatalogRow]], int]) -> None:
        """``apply`` puts events and live catalog changes, in stream order, on the serving (and
        pinned) engines; it is called holding ``lock``, the lock every write holds while it calls
        :meth:`append_unique` or :meth:`append_catalog`."""
        self._lock, self._apply = lock, apply

    def open(self) -> int:
        """Connect, check the server, and set the cursor to the end of the stream; returns it."""
        try:
            self.bus.check()
            self._cursor = self.bus.last_position()
        except BusUnavailable as exc:
            self._down("open", exc)
            raise
        self._up()
        log_fields(log, logging.INFO, "event bus open", bus=self.path, position=stream_id_of(self._cursor))
        return self._cursor

    def position(self) -> int:
        """The newest position applied here (every one before it is applied too)."""
        return self._cursor

    # -- writing ---------------------------------------------------------------------------------
    def append_unique(self, events: Sequence[Event], event_ids: Sequence[str | None] | None = None,
                      before_commit: Callable[[], None] | None = None) -> tuple[int, list[int]]:
        """:meth:`EventLog.append_unique` on the bus (call holding the bound lock): append the events
        whose ``event_id`` the fleet has not seen (within the key retention) as one entry, after
        applying the entries of others that precede it. Returns ``(position, indices appended)``.
        Raises :class:`BusUnavailable` when the append did not happen, or when it did but the
        entries before it could not be read (the follower applies it once the bus answers)."""
        ids = [None] * len(events) if event_ids is None else [i or None for i in event_ids]
        if len(ids) != len(events):
            raise ValueError(f"event_ids has {len(ids)} entries for {len(events)} events")
        if before_commit is not None:
            before_commit()
        if not events:
            return self._cursor, []
        records = [encode_event(e, i) for e, i in zip(events, ids, strict=True)]
        return self._append(EVENTS_KIND, records, ids)

    def append_catalog(self, rows: Sequence[CatalogRow], before_commit: Callable[[], None] | None = None) -> int:
        """:meth:`EventLog.append_catalog` on the bus (call holding the bound lock): the live catalog
        changes as one ``catalog`` entry, after applying the entries of others that precede it;
        returns its position. Raises :class:`BusUnavailable` as :meth:`append_unique` does."""
        if before_commit is not None:
            before_commit()
        if not rows:
            return self._cursor
        records = [encode_catalog(r.kind, r.item_id, r.payload) for r in rows]
        return self._append(CATALOG_KIND, records, [None] * len(records))[0]

    def _append(self, kind: str, records: list[str], ids: list[str | None]) -> tuple[int, list[int]]:
        try:
            done = self.bus.append(kind, records, ids, self._cursor, _READ)
        except BusUnavailable as exc:
            self._down("append", exc)
            if "connecting to" in str(exc):  # no connection: the script never ran
                raise BusUnavailable(f"{exc}; nothing of this batch was recorded") from None
            raise BusUnavailable(f"{exc}; the batch is not acknowledged, and if Redis ran the append before it failed "
                                 "the replicas apply it once it answers: send it again with the same event_ids") from None
        self._up()
        before = last = done.before
        # the entries up to the new one; when every record was a duplicate (a batch sent again after
        # an UNAVAILABLE whose append had happened), the originals are somewhere after the cursor:
        # read to the end, so that they are applied here before the duplicates are acknowledged
        upto = done.position or None
        try:
            while len(last) >= _READ and (upto is None or last[-1].position < upto):
                last = [e for e in self.bus.read(last[-1].position, upto, _READ) if upto is None or e.position < upto]
                before = before + last
        except BusUnavailable as exc:
            self._apply_entries(before, follower=False)
            self._down("read", exc)
            raise BusUnavailable(f"{exc}: the batch was recorded at {stream_id_of(done.position)} but the entries "
                                 "before it could not be read; this replica applies it once the bus answers") from None
        self._apply_entries(before, follower=False)
        if done.position:
            self._cursor = done.position
        return self._cursor, done.fresh

    def _apply_entries(self, entries: Sequence[BusEntry], follower: bool = True) -> int:
        """Apply the entries after the cursor, in order, and move the cursor (hold the bound lock)."""
        items: list[Event | CatalogRow] = []
        n_events = 0
        now = time.time()
        fresh = [e for e in entries if e.position > self._cursor]
        for entry in fresh:
            got = self._decode(entry)
            if got is None:
                continue
            items += got
            n = sum(1 for g in got if isinstance(g, Event))
            n_events += n
            if self.metrics is not None:
                self.metrics.entries.inc()
                self.metrics.events.inc(n)
                if follower:
                    self.metrics.visibility.observe(max(0.0, now - entry.at))
        if not fresh:
            return 0
        try:
            if items and self._apply is not None:
                self._apply(items)
        except Exception:  # noqa: BLE001 - they are logged; the engine's failure must not stop the stream
            log.exception("applying %d entries of the event bus failed", len(items))
        self._cursor = max(self._cursor, fresh[-1].position)
        return n_events

    def _decode(self, entry: BusEntry) -> list[Event | CatalogRow] | None:
        """An entry's events or live catalog changes; None (counted and logged) when it is of an
        unknown kind or does not decode."""
        try:
            if entry.kind == EVENTS_KIND:
                return list(decode_events(entry.data))
            if entry.kind == CATALOG_KIND:
                return [CatalogRow(*r) for r in decode_catalog(entry.data)]
        except ValueError as exc:
            self._skip(entry, "undecodable", str(exc))
            return None
        self._skip(entry, "unknown kind", f"kind {entry.kind!r} is not one this server applies")
        return None

    def _skip(self, entry: BusEntry, reason: str, detail: str) -> None:
        if self.metrics is not None:
            self.metrics.skipped.labels(reason).inc()
        log_fields(log, logging.ERROR, "event bus entry skipped", bus=self.path, entry=stream_id_of(entry.position),
                   reason=reason, detail=detail[:300])

    # -- following -------------------------------------------------------------------------------
    def catch_up(self) -> int:
        """Apply every entry after the cursor now (before SERVING); returns the events applied."""
        assert self._lock is not None, "bind() first"
        applied = 0
        while True:
            entries = self.bus.read(self._cursor, None, _READ)
            if not entries:
                return applied
            with self._lock:
                applied += self._apply_entries(entries, follower=False)

    def apply_through(self, position: int) -> None:
        """Apply the entries after the cursor up to ``position`` (hold the bound lock): a bundle that
        includes them is about to be loaded, and this replica's follower has not got there yet."""
        while self._cursor < position:
            entries = self.bus.read(self._cursor, position, _READ)
            if not entries:
                self._cursor = position  # nothing there (deleted): the bundle is the judge
                return
            self._apply_entries(entries, follower=False)

    def follow(self, wait_s: float = 1.0) -> None:
        """Start the follower thread (``XREAD BLOCK`` after the cursor, ``wait_s`` at a time)."""
        assert self._lock is not None, "bind() first"

        def loop() -> None:
            backoff = _BACKOFF[0]
            while not self._stop.is_set():
                try:
                    entries = self.bus.wait(self._cursor, wait_s, _READ)
                except BusUnavailable as exc:
                    self._down("follow", exc, retry_s=backoff)
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, _BACKOFF[1])
                    continue
                except Exception:  # noqa: BLE001 - the follower must outlive anything
                    log.exception("event bus follower: unexpected error")
                    self._stop.wait(backoff)
                    continue
                backoff = _BACKOFF[0]
                self._up()
                if entries and not self._stop.is_set():
                    with self._lock:
                        self._apply_entries(entries)

        self._thread = threading.Thread(target=loop, name="event-bus-follower", daemon=True)
        self._thread.start()

    def _down(self, op: str, exc: Exception, retry_s: float | None = None) -> None:
        if self.metrics is not None:
            self.metrics.up.set(0)
            self.metrics.errors.labels(op).inc()
        if self._down_since is None:
            self._down_since = time.monotonic()
            log_fields(log, logging.WARNING, "event bus unreachable", bus=self.path, op=op, error=str(exc)[:300],
                       **({"retry_in_s": retry_s} if retry_s is not None else {}))
        else:
            log.debug("event bus still unreachable (%s): %s", op, exc)

    def _up(self) -> None:
        if self.metrics is not None:
            self.metrics.up.set(1)
        if self._down_since is not None:
            down = time.monotonic() - self._down_since
            self._down_since = None
            log_fields(log, logging.INFO, "event bus reachable again", bus=self.path, down_s=round(down, 3),
                       position=stream_id_of(self._cursor))

    # -- replay (BundleManager) ------------------------------------------------------------------
    def check_range(self, after_seq: int, upto_seq: int) -> None:
        """Nothing to check here: a stream has no holes. Its trimmed start is checked by
        :meth:`iter_events`, where the replay's first position is known."""

    def holds(self, seq: int, row: Mapping[str, object] | None) -> bool:
        """Whether the entry at ``seq`` is the one a bundle's manifest describes (``origin`` and
        ``at``, as ``tandem build --events-bus`` records them)."""
        if seq <= 0 or not isinstance(row, Mapping) or "origin" not in row or "at" not in row:
            return False
        entry = self.bus.entry(seq)
        try:
            return entry is not None and entry.origin == row["origin"] and entry.at == float(row["at"])
        except (TypeError, ValueError):
            return False

    def iter_events(self, since_ts: int | None = None, received_since: float | None = None, *,
                    after_seq: int = 0, upto_seq: int | None = None, batch: int = _READ) -> Iterator[Event]:
        """:meth:`EventLog.iter_events` on the stream: the events of entries ``after_seq < position
        <= upto_seq``. Raises :class:`EventLogDamaged` when entries after ``after_seq`` were trimmed
        away (a replay would miss them)."""
        for entry in self.iter_entries(since_ts, received_since, after_seq=after_seq, upto_seq=upto_seq, batch=batch):
            if isinstance(entry, Event):
                yield entry

    def iter_entries(self, since_ts: int | None = None, received_since: float | None = None, *,
                     after_seq: int = 0, upto_seq: int | None = None,
                     batch: int = _READ) -> Iterator[Event | CatalogRow]:
        """What :meth:`iter_events` reads (same selection) and the live catalog changes of the range
        (whatever their time), in stream order: what a replay applies."""
        trimmed = self.bus.trimmed_through()
        if trimmed > after_seq:
            raise EventLogDamaged(
                f"event bus {self.path}: the entries after {stream_id_of(after_seq)} are needed but the stream was "
                f"trimmed (or had entries deleted) up to {stream_id_of(trimmed)}; serve a bundle built from the "
                "stream since (tandem build --events-bus URL), which includes them")
        everything = since_ts is None and received_since is None
        after = after_seq
        while True:
            entries = self.bus.read(after, upto_seq, batch)
            for entry in entries:
                if entry.kind not in (EVENTS_KIND, CATALOG_KIND):
                    continue  # the follower logs and counts those
                recent = everything or (received_since is not None and entry.at >= received_since)
                for item in self._decode(entry) or ():  # an entry that does not decode is skipped, as by every replica
                    if recent or isinstance(item, CatalogRow) or (since_ts is not None and item.ts >= since_ts):
                        yield item
            if len(entries) < batch:
                return
            after = entries[-1].position

    def close(self) -> None:
        """Stop the follower and close the connections; later calls do nothing."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.bus.close()
