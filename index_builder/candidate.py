"""The online learner's candidate bundle: what the serving bundle was built from, plus the server's
event log up to a chosen sequence number (``tandem learn``, server/learner.py).

A bundle's manifest records its source data (``data.path``), its whole build configuration
(``config``) and the event-log position it includes (``event_log``): that is enough to build it
again with more events. :func:`train_candidate` is the one place a candidate is produced; today
it runs the full build (:func:`tandem.index_builder.build.build`) on the serving bundle's source
data and the log, into a scratch root. The incremental build (``tandem build --from``: text
vectors reused, warm starts, fewer epochs) can replace that call without changing anything else.

The log is read by sequence number, never by time (the contract of server/bundle_manager.py): a
candidate built with ``upto_seq = S`` records ``event_log.seq = S``, and a server that loads it
replays the events after S.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tandem.index_builder.config import BuildConfig, _build, _deep_merge
from tandem.index_builder.event_log_reader import FINGERPRINT_COLUMNS, read_event_log
from tandem.retrieval.bundle import read_manifest
from tandem.retrieval.data import EVENT_TYPES, Event

__all__ = ["CannotRebuildError", "LoggedEvent", "SourceData", "bundle_source", "log_mark_at", "log_position", "read_log_range",
           "train_candidate"]


class CannotRebuildError(ValueError):
    """The serving bundle does not record enough to build a candidate from it."""


@dataclass(frozen=True)
class SourceData:
    """What a bundle was built from: its data folder, its build configuration and the event-log
    position it includes (``event_log_seq``; 0 when it includes no logged event)."""

    data_dir: Path
    config: BuildConfig
    event_log_seq: int
    event_log: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    """One row of the event log: its sequence number and the event."""

    seq: int
    event: Event


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(f"--events-log {path} does not exist; it is the server's --event-log file "
                                "(default BUNDLES/events.sqlite3)")
    return sqlite3.connect(f"file:{quote(str(path.absolute()), safe='/')}?mode=ro", uri=True)


def _query(path: Path, sql: str, args: tuple) -> list[tuple]:
    conn = _connect(path)
    try:
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{path} is not a Tandem event log ({exc})") from None
    finally:
        conn.close()


def log_position(path: str | Path) -> int:
    """The newest sequence number of the log (0 when it is empty)."""
    rows = _query(Path(path), "SELECT COALESCE(MAX(seq), 0) FROM events", ())
    return int(rows[0][0])


def log_mark_at(path: str | Path, seq: int) -> dict:
    """What a bundle built from the log's events up to ``seq`` includes, in the manifest's
    ``event_log`` layout (:func:`tandem.index_builder.event_log_reader.event_log_mark`, at ``seq``
    instead of the newest row)."""
    path = Path(path)
    if seq <= 0:
        return {"seq": 0, "last_event": None, "path": str(path.absolute())}
    rows = _query(path, f"SELECT seq, {', '.join(FINGERPRINT_COLUMNS)} FROM events WHERE seq <= ? "
                        "ORDER BY seq DESC LIMIT 1", (int(seq),))
    if not rows:
        return {"seq": 0, "last_event": None, "path": str(path.absolute())}
    row = rows[0]
    return {"seq": int(row[0]), "last_event": dict(zip(FINGERPRINT_COLUMNS, row[1:], strict=True)),
            "path": str(path.absolute())}


def read_log_range(path: str | Path, after_seq: int, upto_seq: int | None = None) -> list[LoggedEvent]:
    """The logged events with ``after_seq < seq <= upto_seq`` (every later one when ``upto_seq``
    is None), in log order; rows with an unknown event type are skipped (as the build does)."""
    upto = 2**62 if upto_seq is None else int(upto_seq)
    rows = _query(Path(path), "SELECT seq, user_id, item_id, ts, event, value FROM events "
                              "WHERE seq > ? AND seq <= ? ORDER BY seq", (int(after_seq), upto))
    return [LoggedEvent(int(seq), Event(str(user), str(item), int(ts), event, None if value is None else float(value)))
            for seq, user, item, ts, event, value in rows if event in EVENT_TYPES]


def bundle_source(folder: str | Path, events_log: str | Path) -> SourceData:
    """What the bundle ``folder`` was built from, checked: its data folder must still be there,
    its configuration must load, and the log position it records must be a row of ``events_log``
    with the same fingerprint (else it was built from another log, and its events cannot be told
    apart from the new ones). Raises :class:`CannotRebuildError` saying what is missing."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    data = manifest.get("data")
    if not isinstance(data, Mapping) or not data.get("path"):
        raise CannotRebuildError(f"{folder / 'manifest.json'} has no data.path: the bundle does not record the data it "
                                 "was built from, so it cannot be rebuilt with new events; rebuild it with `tandem build "
                                 "--data DIR --events-log FILE` (which records it), then start the learner again")
    data_dir = Path(data["path"])
    if not data_dir.is_dir():
        raise CannotRebuildError(f"bundle {folder.name} was built from data.path {data_dir}, which is not a folder here "
                                 "(moved, deleted, or a path relative to another directory): the learner rebuilds "
                                 "from it; restore it or rebuild the bundle from where the data is now")
    if not isinstance(manifest.get("config"), Mapping):
        raise CannotRebuildError(f"{folder / 'manifest.json'} has no build config: rebuild the bundle with this Tandem")
    try:
        config = _build(BuildConfig, manifest["config"], "build")
    except ValueError as exc:
        raise CannotRebuildError(f"bundle {folder.name}: its recorded build config does not load here ({exc}); "
                                 "rebuild the bundle with this Tandem") from None
    included = manifest.get("event_log")
    if not isinstance(included, Mapping) or not isinstance(included.get("seq"), int):
        raise CannotRebuildError(f"{folder / 'manifest.json'} has no event_log.seq (built by an older Tandem): which "
                                 "logged events it includes is unknown; rebuild it with `tandem build --events-log`")
    seq = int(included["seq"])
    if seq > 0:
        mark = log_mark_at(events_log, seq)
        if mark["seq"] != seq or mark["last_event"] != included.get("last_event"):
            raise CannotRebuildError(f"bundle {folder.name} includes the events up to seq {seq} of another log "
                                     f"({included.get('path')}), not of --events-log {events_log}: give the log the "
                                     "server writes, or rebuild the bundle from it")
    return SourceData(data_dir, config, seq, dict(included))


def train_candidate(serving_folder: str | Path, events_log: str | Path, out: str | Path, *, upto_seq: int,
                    config_overrides: Mapping[str, Any] | None = None, incremental: bool = True) -> Path:
    """Build a candidate bundle into the scratch root ``out`` from what the serving bundle was
    built from (its data folder and build config, :func:`bundle_source`) plus every event and live
    catalog change of ``events_log`` with ``seq <= upto_seq``; its manifest records
    ``event_log.seq = upto_seq``. ``incremental`` (the default): an incremental build from the
    serving bundle (``tandem build --from``: text vectors of unchanged texts reused, two-tower and
    ranker warm-started and trained for fewer epochs; docs/operations.md); False: a full build.
    ``config_overrides``: ``[build]`` settings changed for the candidate (nested dicts).
    Returns the candidate's folder (under ``out``)."""
    from tandem.index_builder.build import build
    from tandem.index_builder.event_log_reader import read_catalog_changes

    source = bundle_source(serving_folder, events_log)
    config = source.config
    if config_overrides:
        from tandem.index_builder.config import config_to_dict

        config = _build(BuildConfig, _deep_merge(config_to_dict(config), config_overrides), "build")
    if incremental:
        config = replace(config, from_bundle=Path(serving_folder))
    mark = log_mark_at(events_log, upto_seq)
    events = read_event_log(events_log, upto_seq=mark["seq"])
    edits = read_catalog_changes(events_log, upto_seq=mark["seq"])
    return build(source.data_dir, Path(out), config, extra_events=events, event_log=mark,
                 catalog_edits=edits or None).folder
