"""Follow a shared event log: apply to this process's engines the events other processes append.

``tandem serve --processes N`` runs N processes that append to one SQLite event log
(:class:`~tandem.server.event_log.EventLog` opened with ``shared=True``). Each process's
:class:`LogTailer` keeps one number, :attr:`LogTailer.position`: every logged event with a
sequence number up to it has been applied to this process's engines, and none after it. All
changes of it happen under the bundle manager's ingestion lock, so the engines see the log in
sequence order, exactly as a replay would:

- live catalog changes (UpsertItems / DeleteItems) travel the same way: the tailer replays them in
  log order with the events, and the engine a change makes replaces the one serving;
- the tailer thread polls ``PRAGMA data_version`` (which changes when any other connection
  commits; reading it touches no table) every :data:`TAIL_INTERVAL_S`, and on a change applies
  the events after its position (:meth:`LogTailer.advance`);
- an event batch recorded through this process (:meth:`BundleManager.record`) first applies what
  other processes logged before it, then its own events, then moves the position past them
  (:meth:`LogTailer.advance` then :meth:`LogTailer.applied`): read your writes, never twice;
- a bundle swap (or a pinned engine) advances the serving engine to the log's end and catches the
  new engine up to that same position before it serves (:meth:`BundleManager._catch_up`).

The manager only calls :meth:`advance` and :meth:`applied`: another way of sharing events
between processes (a broker's stream) can take this module's place behind the same two calls.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tandem.retrieval.data import Event
from tandem.server.event_log import ENTRY_COLUMNS, EventLog, entry_of, sqlite_uri

if TYPE_CHECKING:
    from tandem.server.bundle_manager import BundleManager

__all__ = ["LogTailer", "TAIL_INTERVAL_S"]

log = logging.getLogger("tandem.server.tailer")

#: how often the tailer asks SQLite whether another connection committed (seconds); a poll is one
#: ``PRAGMA data_version``, a few microseconds
TAIL_INTERVAL_S = 0.005


class LogTailer:
    """Applies the events other processes append to ``event_log`` to ``manager``'s engines."""

    def __init__(self, event_log: EventLog, manager: BundleManager, interval_s: float = TAIL_INTERVAL_S,
                 on_tailed: Callable[[int], None] | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.event_log = event_log
        self.manager = manager
        self.interval_s = interval_s
        #: called with the number of other processes' events each time some are applied (a metric)
        self.on_tailed = on_tailed
        #: every logged event up to this sequence number is applied (change only under the ingestion lock)
        self.position = 0
        #: events of other processes applied so far (a metric and a test hook)
        self.tailed = 0
        self._conn = sqlite3.connect(sqlite_uri(event_log.path, "ro"), uri=True, check_same_thread=False,
                                     isolation_level=None)
        # the thread's own connection for the change signal (the other one is used under the lock)
        self._signal = sqlite3.connect(sqlite_uri(event_log.path, "ro"), uri=True, check_same_thread=False)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- called by the bundle manager under its ingestion lock -------------------------------
    def advance(self, upto: int | None = None) -> int:
        """Apply the logged events after :attr:`position` (up to ``upto``; None: all committed
        ones) to the serving engine and the pinned ones; returns the new position. Call with the
        manager's ingestion lock held."""
        if upto is not None and upto <= self.position:
            return self.position
        bound = 2**62 if upto is None else int(upto)
        manager = self.manager
        rows: list[tuple] = []
        self._conn.execute("BEGIN")  # one snapshot for the rows and the counter
        try:
            if manager.engine is not None or manager.pinned:  # before the first engine there is nothing to apply to
                rows = self._conn.execute(
                    f"SELECT {ENTRY_COLUMNS} FROM events WHERE seq > ? AND seq <= ? ORDER BY seq",
                    (self.position, bound)).fetchall()
            row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        finally:
            self._conn.execute("COMMIT")
        end = min(bound, int(row[0]) if row else 0)
        if rows:
            # events and live catalog changes, in log order: a change gives an engine a successor
            # (tandem.server.live_catalog), which replaces it where it serves
            entries = [entry_of(row) for row in rows]
            manager.apply_entries(entries)
            events = sum(1 for e in entries if isinstance(e, Event))
            self.tailed += events
            if self.on_tailed is not None and events:
                self.on_tailed(events)
        self.position = max(self.position, end)
        return self.position

    def applied(self, seq: int) -> None:
        """This process applied its own events up to ``seq`` (after :meth:`advance` to just
        before them). Call with the ingestion lock held."""
        self.position = max(self.position, int(seq))

    # -- the thread -------------------------------------------------------------------------
    def start(self) -> None:
        """Poll for other processes' commits in a daemon thread until :meth:`stop`."""

        def loop() -> None:
            seen = None
            while not self._stop.wait(self.interval_s):
                try:
                    version = self._signal.execute("PRAGMA data_version").fetchone()[0]
                    if version == seen:
                        continue
                    seen = version
                    with self.manager.ingest_lock:
                        self.advance()
                except Exception:  # noqa: BLE001 - the tailer must outlive one failed read; it retries
                    log.exception("event log tailer: reading %s failed; retrying", self.event_log.path)
                    seen = None
                    time.sleep(min(1.0, 100 * self.interval_s))

        self._thread = threading.Thread(target=loop, name="event-log-tailer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._conn.close()
        self._signal.close()
