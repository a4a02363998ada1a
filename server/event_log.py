"""The durable event log: SQLite in WAL mode with ``synchronous=FULL``.

:meth:`EventLog.append` commits before it returns, so an acknowledged ``RecordEvents`` survives
``kill -9``; sequence numbers (``seq``) only ever grow. Schema (also read directly with sqlite3
by ``tandem build --events-log``; documented in docs/operations.md): :data:`SCHEMA`.

Damage is never served silently. Opening a log first checks it on a read-only connection (which
cannot checkpoint, so a damaged WAL stays on disk for ``tandem events recover``):
``PRAGMA quick_check``, the row count against the sequence numbers (gaps are only allowed where
the ``lost`` table records them), and the newest sequence number against the side file
``<log>-acked``, which holds the last acknowledged one (written after each commit). SQLite drops
every WAL frame from the first damaged one on without a word; the side file is how the loss of
acknowledged events shows. Any failure raises :class:`EventLogDamaged` naming the file and the
commands that salvage it (:mod:`tandem.server.event_commands`).

Several processes may append to one log (``tandem serve --processes N``; open it with
``shared=True``): SQLite serialises their write transactions, so sequence numbers stay in commit
order and ``event_id`` deduplication (checked inside the write transaction) holds across
processes; the side file is only ever raised, under an ``fcntl`` lock, so a process whose commit
is older never overwrites a newer one's position; :meth:`EventLog.position` reads the log's
newest sequence number, whoever wrote it; and the open-time checks read one snapshot.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from tandem.retrieval.data import Event

__all__ = ["EventLog", "EventLogDamaged", "FINGERPRINT_COLUMNS", "SCHEMA", "acked_path", "read_acked", "sqlite_uri",
           "inspect_log", "lost_count", "CATALOG_KINDS", "CatalogRow", "ENTRY_COLUMNS", "entry_of", "read_entries"]

#: the ``event`` of a live catalog change's row (its ``payload`` holds the item row as JSON for an
#: upsert, "{}" for a delete; ``user_id`` is ""). Event readers skip them (not an event type).
CATALOG_KINDS = ("catalog.upsert", "catalog.delete")


class CatalogRow(NamedTuple):
    """A live catalog change as logged: ``kind`` one of :data:`CATALOG_KINDS`, the item id, and
    the JSON ``payload`` (the item row of an upsert)."""

    kind: str
    item_id: str
    payload: str

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    event TEXT NOT NULL,
    value REAL,
    received_at REAL NOT NULL,
    event_id TEXT,
    payload TEXT
);
CREATE INDEX IF NOT EXISTS events_ts ON events (ts);
CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events (event_id) WHERE event_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS lost (
    first INTEGER NOT NULL,
    last INTEGER NOT NULL,
    reason TEXT NOT NULL,
    recorded_at REAL NOT NULL
);
"""

#: the columns of one event that tell one log from another (a bundle's manifest records those of the
#: last logged event it includes; ``received_at`` is this server's clock when it logged the event)
FINGERPRINT_COLUMNS = ("user_id", "item_id", "ts", "event", "received_at")

_ACKED_WIDTH = 20  # the side file is one fixed-width decimal line, rewritten in place


class EventLogDamaged(ValueError):
    """The event log cannot be trusted; the message names the file and what to run."""


def sqlite_uri(path: str | Path, mode: str | None = None) -> str:
    """A ``file:`` URI for ``path`` with ``#``, ``?`` and ``%`` escaped (unescaped, ``#`` starts a
    URI fragment and SQLite opens, and may create, the file named by the part before it)."""
    uri = "file:" + quote(str(Path(path).absolute()), safe="/")
    return uri + (f"?mode={mode}" if mode else "")


def acked_path(path: str | Path) -> Path:
    return Path(f"{path}-acked")


def read_acked(path: str | Path) -> int | None:
    """The last acknowledged sequence number from ``<log>-acked``; None when there is no such file."""
    side = acked_path(path)
    try:
        text = side.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise EventLogDamaged(f"event log {path}: cannot read {side} ({exc})") from None
    if not text.isdigit():
        raise EventLogDamaged(f"event log {path}: {side} should hold one sequence number, got {text[:40]!r}")
    return int(text)


def lost_count(lost: Sequence[tuple[int, int]], after: int = 0, upto: int | None = None) -> int:
    """How many sequence numbers in ``after < seq <= upto`` the (first, last) ranges cover."""
    upto = 2**62 if upto is None else upto
    return sum(max(0, min(last, upto) - max(first, after + 1) + 1) for first, last in lost)


def _damaged(path: Path, detail: str) -> EventLogDamaged:
    return EventLogDamaged(
        f"event log {path} is damaged: {detail}. Nothing was served from it. See `tandem events check {path}`; "
        f"`tandem events recover {path} --out NEW.sqlite3` copies every readable event into a new log and lists "
        "the sequence numbers that were lost; then serve with --event-log NEW.sqlite3 (or move it into place)")


def inspect_log(path: str | Path) -> dict:
    """Read-only checks of an existing log (nothing is written, the WAL is not checkpointed).

    Returns ``{"problems": [...], "rows": N, "last_seq": S, "acked": A or None, "lost": [(first, last), ...],
    "has_event_id": bool}``; an empty ``problems`` list means the log is sound."""
    path = Path(path)
    out: dict = {"problems": [], "rows": 0, "last_seq": 0, "acked": None, "lost": [], "has_event_id": True}
    problems = out["problems"]
    try:
        out["acked"] = read_acked(path)
    except EventLogDamaged as exc:
        problems.append(str(exc))
    conn = sqlite3.connect(sqlite_uri(path, "ro"), uri=True, isolation_level=None)
    try:
        # one read transaction: another process may append between the statements below, and the
        # counter of one snapshot compared with the rows of another would look like lost events
        conn.execute("BEGIN")
        verdict = [" ".join(str(r[0]).split()) for r in conn.execute("PRAGMA quick_check(20)").fetchall()]
        if verdict != ["ok"]:
            problems.append("PRAGMA quick_check: " + "; ".join(verdict))
            return out
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "events" not in tables:
            if tables - {"sqlite_sequence"}:
                problems.append(f"it has no events table (tables: {', '.join(sorted(tables))})")
            return out
        out["has_event_id"] = "event_id" in {r[1] for r in conn.execute("PRAGMA table_info(events)")}
        rows, last = conn.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM events").fetchone()
        counter = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        # a recovered log whose last numbers were lost ends with a gap: the counter is past the rows
        out["rows"], out["last_seq"] = int(rows), max(int(last), int(counter[0]) if counter else 0)
        if "lost" in tables:
            out["lost"] = [(int(a), int(b)) for a, b in conn.execute("SELECT first, last FROM lost ORDER BY first")]
    except sqlite3.DatabaseError as exc:
        problems.append(f"SQLite cannot read it ({exc})")
        return out
    finally:
        conn.close()
    expected = out["last_seq"] - lost_count(out["lost"], 0, out["last_seq"])
    if out["rows"] != expected:
        problems.append(f"it holds {out['rows']} events but its sequence numbers run to {out['last_seq']} "
                        f"({expected} expected)")
    if out["acked"] is not None and out["acked"] > out["last_seq"]:
        problems.append(f"events up to sequence {out['acked']} were acknowledged but the log ends at "
                        f"{out['last_seq']}: {out['acked'] - out['last_seq']} acknowledged events are missing "
                        "(SQLite drops a damaged WAL's frames from the first bad one on)")
    return out


#: the columns :func:`entry_of` reads, in its order
ENTRY_COLUMNS = "user_id, item_id, ts, event, value, payload"


def entry_of(row: Sequence) -> Event | CatalogRow:
    """An event or a live catalog change from a row of :data:`ENTRY_COLUMNS`."""
    u, i, ts, ev, v, payload = row
    return CatalogRow(ev, i, payload) if payload is not None else Event(u, i, int(ts), ev, v)


def read_entries(path: str | Path, since_ts: int | None = None, received_since: float | None = None, *,
                 after_seq: int = 0, upto_seq: int | None = None, batch: int = 10_000) -> Iterator[Event | CatalogRow]:
    """The events and live catalog changes of the log at ``path`` with ``after_seq < seq <= upto_seq``
    in sequence order, read-only on a connection of its own (:meth:`EventLog.iter_entries`; other
    processes, e.g. ``tandem learn``, call it directly). With ``since_ts`` or ``received_since``,
    only events with ``ts >= since_ts`` or received at or after ``received_since`` (catalog changes
    always). A read error raises :class:`EventLogDamaged`."""
    path = Path(path)
    conn = sqlite3.connect(sqlite_uri(path, "ro"), uri=True)
    everything = since_ts is None and received_since is None
    try:
        cur = conn.execute(
            f"SELECT {ENTRY_COLUMNS} FROM events "
            "WHERE seq > ? AND seq <= ? AND (? OR payload IS NOT NULL OR ts >= ? OR received_at >= ?) ORDER BY seq",
            (int(after_seq), 2**62 if upto_seq is None else int(upto_seq), everything,
             since_ts if since_ts is not None else 2**62,
             received_since if received_since is not None else float(2**62)))
        while rows := cur.fetchmany(batch):
            yield from map(entry_of, rows)
    except sqlite3.DatabaseError as exc:
        raise _damaged(path, f"reading it failed ({exc})") from None
    finally:
        conn.close()


class EventLog:
    """Append-only, thread-safe (one writer connection under a lock). ``shared``: other processes
    append to the same file too (see the module docstring)."""

    def __init__(self, path: str | Path, shared: bool = False) -> None:
        self.path = Path(path)
        self.shared = shared
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            found = inspect_log(self.path)
            if found["problems"]:
                raise _damaged(self.path, "; ".join(found["problems"]))
        elif Path(f"{self.path}-wal").exists():
            raise _damaged(self.path, f"the file is missing or empty but {self.path}-wal exists")
        self._conn = sqlite3.connect(sqlite_uri(self.path), uri=True, check_same_thread=False,
                                     isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._lock = threading.Lock()
        self._closed = False
        self._last = int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        self._lost = [(int(a), int(b)) for a, b in self._conn.execute("SELECT first, last FROM lost")]
        seq_row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        self._last = max(self._last, int(seq_row[0]) if seq_row else 0)  # a recovered log may end in a loss
        self._acked_fd = os.open(acked_path(self.path), os.O_RDWR | os.O_CREAT, 0o644)
        self._write_acked(self._last)

    def _migrate(self) -> None:
        """Add what older logs lack (the event_id column and its index, the lost table)."""
        conn = self._conn
        # one write transaction for the look and the change: the processes of a group open the same
        # log at once, and two that both saw a column missing would both add it (the second fails)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone():
                columns = {r[1] for r in conn.execute("PRAGMA table_info(events)")}
                if "event_id" not in columns:
                    conn.execute("ALTER TABLE events ADD COLUMN event_id TEXT")
                if "payload" not in columns:
                    conn.execute("ALTER TABLE events ADD COLUMN payload TEXT")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write_acked(self, seq: int) -> None:
        # no fsync: the file only has to survive the process (kill -9); it is never ahead of a commit
        line = f"{seq:>{_ACKED_WIDTH}}\n".encode("ascii")
        if not self.shared:
            os.pwrite(self._acked_fd, line, 0)
            return
        # another process may have committed (and written) a newer position since this one's commit
        fcntl.flock(self._acked_fd, fcntl.LOCK_EX)
        try:
            text = os.pread(self._acked_fd, _ACKED_WIDTH + 1, 0).decode("ascii", "replace").strip()
            if not text.isdigit() or int(text) < seq:
                os.pwrite(self._acked_fd, line, 0)
        finally:
            fcntl.flock(self._acked_fd, fcntl.LOCK_UN)

    def append(self, events: Sequence[Event], event_ids: Sequence[str | None] | None = None) -> int:
        """Durably append; returns the sequence number of the last event (0 if none ever)."""
        return self.append_unique(events, event_ids)[0]

    def append_unique(self, events: Sequence[Event], event_ids: Sequence[str | None] | None = None,
                      before_commit: Callable[[], None] | None = None) -> tuple[int, list[int]]:
        """Durably append the events whose ``event_id`` (parallel to ``events``; None or "" = no id)
        is not in the log yet, in one transaction. Returns ``(log position, indices of the events
        appended)``; the others were duplicates (acknowledged before, or earlier in this batch).

        ``before_commit`` is called inside the transaction, after the inserts and right before
        COMMIT: when it raises, the transaction is rolled back (nothing is logged) and the
        exception propagates (StreamEvents checks there that its client still waits)."""
        ids = [None] * len(events) if event_ids is None else [i or None for i in event_ids]
        if len(ids) != len(events):
            raise ValueError(f"event_ids has {len(ids)} entries for {len(events)} events")
        if not events:
            if before_commit is not None:
                before_commit()
            return self.position(), []
        now = time.time()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"event log {self.path} is closed (the server is shutting down)")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                fresh = self._fresh(ids)
                if fresh:
                    self._conn.executemany(
                        "INSERT INTO events (user_id, item_id, ts, event, value, received_at, event_id) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(e.user_id, e.item_id, int(e.ts), e.event, e.value, now, ids[k])
                         for k in fresh for e in (events[k],)])
                last = int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
                if before_commit is not None:
                    before_commit()
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._last = max(self._last, last)
            self._write_acked(self._last)
            return self._last, fresh

    def _fresh(self, ids: list[str | None]) -> list[int]:
        keyed = sorted({i for i in ids if i is not None})
        known: set[str] = set()
        for start in range(0, len(keyed), 500):  # SQLite's bound-parameter limit
            chunk = keyed[start:start + 500]
            known.update(r[0] for r in self._conn.execute(
                f"SELECT event_id FROM events WHERE event_id IN ({','.join('?' * len(chunk))})", chunk))
        fresh = []
        for k, i in enumerate(ids):
            if i is None:
                fresh.append(k)
            elif i not in known:
                known.add(i)
                fresh.append(k)
        return fresh

    def restore(self, rows: Sequence[tuple], lost: Sequence[tuple[int, int, str, float]], last: int) -> None:
        """Fill an empty log from a salvage: ``rows`` are (seq, user_id, item_id, ts, event, value,
        received_at, event_id) kept with their own ``seq``; ``lost`` (first, last, reason, recorded_at);
        the log continues after ``last``."""
        with self._lock:
            if self._last:
                raise RuntimeError(f"event log {self.path} is not empty; restore only fills a new log")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany(
                    "INSERT INTO events (seq, user_id, item_id, ts, event, value, received_at, event_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                self._conn.executemany("INSERT INTO lost (first, last, reason, recorded_at) VALUES (?, ?, ?, ?)",
                                       lost)
                self._conn.execute("DELETE FROM sqlite_sequence WHERE name = 'events'")
                self._conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (int(last),))
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._last = int(last)
            self._lost = [(int(a), int(b)) for a, b, *_ in lost]
            self._write_acked(self._last)

    def position(self) -> int:
        """The sequence number of the newest event (0 when empty); of a shared log, whichever
        process appended it."""
        with self._lock:
            if self.shared and not self._closed:
                row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
                self._last = max(self._last, int(row[0]) if row else 0)
            return self._last

    def check_range(self, after_seq: int, upto_seq: int) -> None:
        """Raise :class:`EventLogDamaged` unless every sequence number in ``after_seq < seq <= upto_seq``
        is in the log or recorded as lost, so a replay can never be silently partial."""
        conn = sqlite3.connect(sqlite_uri(self.path, "ro"), uri=True)
        try:
            found = int(conn.execute("SELECT COUNT(*) FROM events WHERE seq > ? AND seq <= ?",
                                     (int(after_seq), int(upto_seq))).fetchone()[0])
        except sqlite3.DatabaseError as exc:
            raise _damaged(self.path, f"reading it failed ({exc})") from None
        finally:
            conn.close()
        expected = max(0, upto_seq - after_seq) - lost_count(self._lost, after_seq, upto_seq)
        if found != expected:
            raise _damaged(self.path, f"{found} events are readable between sequence numbers {after_seq + 1} and "
                           f"{upto_seq}, {expected} were acknowledged")

    def holds(self, seq: int, row: Mapping[str, object] | None) -> bool:
        """Whether this log's event ``seq`` is ``row`` (some of :data:`FINGERPRINT_COLUMNS` with
        their values, as a bundle's manifest records its last included event), so that a bundle
        built from this log (or a backup or recovery of it) is told from one built from another
        log. A ``seq`` the log records as lost (a recovery could not read it) counts as held:
        only a recovery of the log that had it numbers its events the same way."""
        if seq <= 0 or seq > self.position() or not isinstance(row, Mapping):
            return False
        columns = [c for c in FINGERPRINT_COLUMNS if c in row]
        if not columns:
            return False
        conn = sqlite3.connect(sqlite_uri(self.path, "ro"), uri=True)
        try:
            found = conn.execute(f"SELECT {', '.join(columns)} FROM events WHERE seq = ?", (int(seq),)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise _damaged(self.path, f"reading it failed ({exc})") from None
        finally:
            conn.close()
        if found is None:
            return lost_count(self._lost, seq - 1, seq) == 1
        return list(found) == [row[c] for c in columns]

    def iter_events(self, since_ts: int | None = None, received_since: float | None = None, *,
                    after_seq: int = 0, upto_seq: int | None = None, batch: int = 10_000) -> Iterator[Event]:
        """Events in sequence order: all of them, or those with ``ts >= since_ts`` or received at or
        after ``received_since`` (epoch seconds) when either is given; always restricted to
        ``after_seq < seq <= upto_seq`` (``upto_seq`` None = the end). Reads on its own connection,
        so appends go on meanwhile. A read error raises :class:`EventLogDamaged`."""
        for entry in self.iter_entries(since_ts, received_since, after_seq=after_seq, upto_seq=upto_seq, batch=batch):
            if isinstance(entry, Event):
                yield entry

    def append_catalog(self, rows: Sequence[CatalogRow], before_commit: Callable[[], None] | None = None) -> int:
        """Durably append live catalog changes in one transaction, in order; returns the log position.
        ``before_commit`` as in :meth:`append_unique`."""
        if not rows:
            return self.position()
        now = time.time()
        with self._lock:
            if self._closed:
                raise RuntimeError(f"event log {self.path} is closed (the server is shutting down)")
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for r in rows:
                    if r.kind not in CATALOG_KINDS:
                        raise ValueError(f"catalog row kind must be one of {CATALOG_KINDS}, got {r.kind!r}")
                self._conn.executemany(
                    "INSERT INTO events (user_id, item_id, ts, event, value, received_at, event_id, payload) "
                    "VALUES ('', ?, ?, ?, NULL, ?, NULL, ?)",
                    [(r.item_id, int(now), r.kind, now, r.payload) for r in rows])
                last = int(self._conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
                if before_commit is not None:
                    before_commit()
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._last = max(self._last, last)
            self._write_acked(self._last)
            return self._last

    def iter_entries(self, since_ts: int | None = None, received_since: float | None = None, *,
                     after_seq: int = 0, upto_seq: int | None = None,
                     batch: int = 10_000) -> Iterator[Event | CatalogRow]:
        """What :meth:`iter_events` reads (same selection) and the live catalog changes in the
        range (whatever their time), in one sequence order: what a replay applies."""
        return read_entries(self.path, since_ts, received_since, after_seq=after_seq, upto_seq=upto_seq, batch=batch)

    def close(self) -> None:
        """Checkpoint the WAL into the main file and close; later calls do nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                # a shared log's other processes still read and write it: checkpoint what is free now
                self._conn.execute(f"PRAGMA wal_checkpoint({'PASSIVE' if self.shared else 'TRUNCATE'})")
            finally:
                self._conn.close()
                os.close(self._acked_fd)
