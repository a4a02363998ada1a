"""Read event rows straight from the pages of a damaged event log and its WAL.

SQLite stops at the first damaged page (a query raises "database disk image is malformed", or
a damaged interior page hides whole subtrees without any error), and on open it silently drops
every WAL frame from the first one whose checksum fails. This module does not go through the
b-tree at all: it walks every page of the main file and every frame of the WAL, decodes the
cells of each table-leaf page, and keeps the records that have exactly the shape of an
``events`` row (see :data:`server.event_log.SCHEMA`). A row is small (ids are at most 256
characters), so it never spills onto an overflow page and a readable leaf page yields all of its
rows.

What it can and cannot do: rows on any page that is intact are found, wherever the damage is;
rows on a damaged page are lost, and a WAL frame is only trusted when it carries the salt of the
WAL header (older frames are leftovers of a previous WAL generation). Rows are never updated, so
two copies of one ``seq`` (a row moved by a page split, a page in both the file and the WAL) hold
the same values; the WAL copy, being newer, wins.
"""

from __future__ import annotations

import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from tandem.retrieval.data import EVENT_TYPES

__all__ = ["SalvagedRow", "salvage_rows", "recover_log"]

_HEADER = b"SQLite format 3\x00"
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_TABLE_LEAF = 0x0D
_EVENTS = frozenset(EVENT_TYPES)


@dataclass(frozen=True, slots=True)
class SalvagedRow:
    """One ``events`` row as stored (``event_id`` None for rows written before it existed)."""

    seq: int
    user_id: str
    item_id: str
    ts: int
    event: str
    value: float | None
    received_at: float
    event_id: str | None = None


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """SQLite's big-endian varint at ``pos`` -> (value, next position)."""
    value = 0
    for i in range(8):
        byte = buf[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    return (value << 8) | buf[pos + 8], pos + 9


def _column(buf: bytes, pos: int, serial: int):
    """Decode one record column -> (value, size in bytes)."""
    if serial == 0:
        return None, 0
    if 1 <= serial <= 6:
        size = (1, 2, 3, 4, 6, 8)[serial - 1]
        return int.from_bytes(buf[pos:pos + size], "big", signed=True), size
    if serial == 7:
        return struct.unpack(">d", buf[pos:pos + 8])[0], 8
    if serial in (8, 9):
        return serial - 8, 0
    if serial >= 13 and serial % 2:
        size = (serial - 13) // 2
        return buf[pos:pos + size].decode("utf-8"), size
    if serial >= 12:
        size = (serial - 12) // 2
        return bytes(buf[pos:pos + size]), size
    raise ValueError(f"reserved serial type {serial}")


def _record(buf: bytes, start: int, end: int) -> list:
    header_size, pos = _varint(buf, start)
    header_end = start + header_size
    if header_end > end:
        raise ValueError("record header past the cell")
    serials = []
    while pos < header_end:
        serial, pos = _varint(buf, pos)
        serials.append(serial)
    values, body = [], header_end
    for serial in serials:
        value, size = _column(buf, body, serial)
        body += size
        values.append(value)
    if body != end:
        raise ValueError("record size does not match the cell")
    return values


def _as_row(rowid: int, values: list) -> SalvagedRow | None:
    """The record if it has exactly the shape of an events row, else None."""
    if len(values) not in (7, 8, 9) or rowid < 1 or values[0] is not None:
        return None
    if len(values) == 9 and values[8] is not None:  # a live catalog change (payload): not recovered
        return None
    user, item, ts, event, value, received = values[1:7]
    event_id = values[7] if len(values) == 8 else None
    if not (isinstance(user, str) and isinstance(item, str) and user and item and isinstance(ts, int)
            and event in _EVENTS and (value is None or isinstance(value, int | float))
            and isinstance(received, int | float) and (event_id is None or isinstance(event_id, str))):
        return None
    return SalvagedRow(rowid, user, item, int(ts), event, None if value is None else float(value),
                       float(received), event_id)


def _leaf_rows(page: bytes, header_at: int, usable: int) -> list[SalvagedRow]:
    """Rows of one page when it is a table-leaf page; anything undecodable is skipped."""
    if len(page) < header_at + 8 or page[header_at] != _TABLE_LEAF:
        return []
    n_cells = int.from_bytes(page[header_at + 3:header_at + 5], "big")
    rows = []
    max_local = usable - 35  # larger payloads spill onto overflow pages; an events row never does
    for k in range(n_cells):
        at = header_at + 8 + 2 * k
        if at + 2 > len(page):
            break
        cell = int.from_bytes(page[at:at + 2], "big")
        try:
            size, pos = _varint(page, cell)
            rowid, pos = _varint(page, pos)
            if size > max_local or pos + size > usable:
                continue
            row = _as_row(rowid, _record(page, pos, pos + size))
        except (IndexError, ValueError, UnicodeDecodeError, struct.error):
            continue
        if row is not None:
            rows.append(row)
    return rows


def _page_size(main: bytes, wal: bytes) -> tuple[int, int]:
    """(page size, reserved bytes per page) from the file header, else the WAL header, else 4096."""
    if main[:16] == _HEADER and len(main) >= 100:
        size = int.from_bytes(main[16:18], "big")
        size = 65536 if size == 1 else size
        if 512 <= size <= 65536 and size & (size - 1) == 0:
            return size, main[20]
    if len(wal) >= 32 and int.from_bytes(wal[:4], "big") in _WAL_MAGIC:
        size = int.from_bytes(wal[8:12], "big")
        if 512 <= size <= 65536 and size & (size - 1) == 0:
            return size, 0
    return 4096, 0


def salvage_rows(path: str | Path) -> tuple[dict[int, SalvagedRow], dict[str, int]]:
    """Every readable events row of ``path`` and ``path-wal`` by ``seq``, and counts of what was
    scanned (``pages``, ``wal_frames``, ``wal_frames_trusted``, ``rows_main``, ``rows_wal``)."""
    path = Path(path)
    main = path.read_bytes() if path.is_file() else b""
    wal_path = Path(f"{path}-wal")
    wal = wal_path.read_bytes() if wal_path.is_file() else b""
    page_size, reserved = _page_size(main, wal)
    usable = page_size - reserved
    rows: dict[int, SalvagedRow] = {}
    stats = {"pages": 0, "wal_frames": 0, "wal_frames_trusted": 0, "rows_main": 0, "rows_wal": 0}
    for n, start in enumerate(range(0, len(main), page_size)):
        page = main[start:start + page_size]
        stats["pages"] += 1
        for row in _leaf_rows(page, 100 if n == 0 else 0, usable):
            rows[row.seq] = row
            stats["rows_main"] += 1
    if len(wal) >= 32:
        salt = wal[16:24] if int.from_bytes(wal[:4], "big") in _WAL_MAGIC else None
        frame = 24 + page_size
        for start in range(32, len(wal) - frame + 1, frame):
            stats["wal_frames"] += 1
            head = wal[start:start + 24]
            if salt is not None and head[8:16] != salt:
                continue  # a frame of an older WAL generation (or garbage): not trusted
            stats["wal_frames_trusted"] += 1
            page_no = int.from_bytes(head[:4], "big")
            for row in _leaf_rows(wal[start + 24:start + frame], 100 if page_no == 1 else 0, usable):
                rows[row.seq] = row  # frames are in write order: a later copy is the newer one
                stats["rows_wal"] += 1
    return rows, stats


def _ranges(numbers: list[int]) -> list[tuple[int, int]]:
    """Sorted integers -> (first, last) runs."""
    out: list[tuple[int, int]] = []
    for n in numbers:
        if out and n == out[-1][1] + 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))
    return out


def _readable_meta(path: Path) -> tuple[int, list[tuple[int, int]]]:
    """What SQLite can still read of the bookkeeping: (sqlite_sequence for events, lost ranges)."""
    from tandem.server.event_log import sqlite_uri

    top, lost = 0, []
    try:
        conn = sqlite3.connect(sqlite_uri(path, "ro"), uri=True)
    except sqlite3.Error:
        return top, lost
    try:
        row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        top = int(row[0]) if row else 0
        lost = [(int(a), int(b)) for a, b in conn.execute("SELECT first, last FROM lost")]
    except sqlite3.Error:
        pass
    finally:
        conn.close()
    return top, lost


def recover_log(source: str | Path, target: str | Path) -> dict:
    """Copy every readable event of ``source`` (and its WAL) into a new log ``target``, keeping
    their sequence numbers, and record the missing ones in ``target``'s ``lost`` table.

    The source is only read. Sequence numbers run from 1 to the highest of: the newest readable
    row, SQLite's sequence counter, the ``-acked`` side file. Rows past the side file's number
    were never acknowledged (a commit cut short) and are left out. The new log continues after
    that highest number, so a lost number is never reused. Returns a report: ``salvaged``,
    ``lost`` (count), ``lost_ranges`` ([first, last] pairs), ``previously_lost``,
    ``unacknowledged_dropped``, ``last_seq``, ``acked`` and the scan counts."""
    from tandem.server.event_log import EventLog, read_acked

    source, target = Path(source), Path(target)
    if not source.is_file() and not Path(f"{source}-wal").is_file():
        raise FileNotFoundError(f"no event log at {source}")
    if target.exists() or Path(f"{target}-wal").exists():
        raise FileExistsError(f"{target} already exists; recover writes a new log, give another --out")
    try:
        acked = read_acked(source)
    except ValueError:
        acked = None  # a garbled side file: judge by the rows alone
    rows, stats = salvage_rows(source)
    dropped = 0
    if acked is not None:
        dropped = sum(1 for s in rows if s > acked)
        rows = {s: r for s, r in rows.items() if s <= acked}
    seq_counter, previously = _readable_meta(source)
    last = max([acked or 0, seq_counter, *rows.keys()] or [0])
    known_lost = set()
    for first, end in previously:
        known_lost.update(range(first, end + 1))
    missing = [s for s in range(1, last + 1) if s not in rows and s not in known_lost]
    new_ranges = _ranges(missing)
    now = time.time()
    log = EventLog(target)
    try:
        log.restore([(r.seq, r.user_id, r.item_id, r.ts, r.event, r.value, r.received_at, r.event_id)
                     for _, r in sorted(rows.items())],
                    [(a, b, "earlier recovery", now) for a, b in previously]
                    + [(a, b, f"unreadable in {source}", now) for a, b in new_ranges], last)
    finally:
        log.close()
    return {"source": str(source), "target": str(target), "salvaged": len(rows), "lost": len(missing),
            "lost_ranges": [list(r) for r in new_ranges], "previously_lost": [list(r) for r in previously],
            "unacknowledged_dropped": dropped, "last_seq": last, "acked": acked, **stats}
