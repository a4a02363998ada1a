"""Hot swap: load the bundle ``<root>/CURRENT`` names, replay the event log into it, then swap
the engine reference atomically. In-flight requests keep the engine they started with (they
hold a reference), so no request fails during a swap. A bundle that fails verification or
loading is refused and the old engine keeps serving. The manifest is checked against its digest
here whatever the engine loader does, and an engine must report the folder's name as its version
(the name GetStatus, responses, metrics and logs give).

Ready means ready: before an engine serves (at start, so before health says SERVING, and on
every swap) it answers one Search, one Recommend and one SimilarItems built from its own
catalog (:func:`warm_request_paths`), so that nothing a request needs (the query encoder, the
ranker, compiled loops) is loaded by the first client. An engine that fails them is refused.

Event ingestion goes through :meth:`BundleManager.record` so that a swap cannot lose an event:
the bulk of the replay runs while requests and ingestion go on; the last stretch of the log
(events appended during that replay) is applied under the ingestion lock, and the reference is
swapped before the lock is released. Every acknowledged event is therefore either in the
replayed log or applied to the engine that serves after the swap.

What is replayed goes by sequence number, never by time: a bundle's manifest records, as
``event_log.seq``, the newest logged event it was built from (``tandem build --events-log``; 0
when it includes none), and every event after it is replayed, once (:meth:`BundleManager._replay_from`).

When other processes append to the same log (``tandem serve --processes N``), :attr:`BundleManager.tailer`
(a :class:`~tandem.server.log_tailer.LogTailer`) applies their events; the manager tells it what
it applied itself, so that every engine sees each logged event once, in sequence order.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.ranking.api import CannotAnswerError, Engine, RecommendRequest, SearchRequest, SimilarRequest
from tandem.ranking.live_catalog import CatalogChange
from tandem.retrieval.bundle import current_bundle, list_bundles, read_manifest
from tandem.retrieval.data import Event
from tandem.server.event_log import CatalogRow, EventLog
from tandem.server.live_catalog import CatalogUnsupported, apply_changes, catalog_rows, commit, replay_entries

if TYPE_CHECKING:
    from tandem.server.log_tailer import LogTailer

__all__ = ["BundleManager", "check_version_name", "warm_request_paths"]

log = logging.getLogger("tandem.server.bundles")

_REPLAY_BATCH = 10_000
_CURRENT = "CURRENT"  # the pointer file retrieval.bundle maintains


def check_version_name(version: str) -> str:
    """A bundle version is a plain folder name under the bundle root; anything else is refused."""
    if not version or "/" in version or "\\" in version or version.startswith(".") or len(version) > 256:
        raise ValueError(f"version must be a bundle folder name under the bundle root, got {version[:80]!r}")
    return version


#: the user id of the warm-up's Recommend with a history (sent as request context, never stored)
_WARM_USER = "tandem-warm-up"


#: the query that finds an item to warm up with on a search-only bundle (which has no cold Recommend)
_WARM_QUERY = "popular product"


def warm_request_paths(engine: Engine) -> str | None:
    """Answer one request of each kind on ``engine`` through its public API: a cold Recommend
    (which names a real item; on a search-only bundle, which refuses it, a Search names one), a
    Search for that item's title, a SimilarItems of it, and a Recommend whose history is that item
    (sent as context, so no stored state changes). Returns the item used, or None when the engine
    recommends nothing (an empty catalog). Raises what the engine raises."""
    try:
        found = engine.recommend(RecommendRequest(user_id=None, k=10)).items
    except CannotAnswerError:
        found = engine.search(SearchRequest(query=_WARM_QUERY, k=10)).items
    if not found:
        return None
    item = found[0]
    query = " ".join((item.title or engine.get_item(item.item_id).title).split()[:16])[:200] or item.item_id
    engine.search(SearchRequest(query=query, k=10, explain=True))
    engine.similar_items(SimilarRequest(item_id=item.item_id, k=10, explain=True))
    context = (Event(_WARM_USER, item.item_id, int(engine.built_at)),)
    engine.recommend(RecommendRequest(user_id=None, k=10, context=context, explain=True))
    return item.item_id


def _created_epoch(manifest: dict) -> float | None:
    try:
        created = manifest.get("created_at")
        return dt.datetime.fromisoformat(created).timestamp() if created else None
    except (ValueError, TypeError, AttributeError):
        return None


class BundleManager:
    """Owns the current engine; ``engine`` is read without a lock (a reference swap is atomic)."""

    def __init__(self, root: Path, loader: Callable[[Path], Engine], event_log: EventLog | None,
                 on_swap: Callable[[Engine], None] | None = None,
                 on_refused: Callable[[str], None] | None = None, warm_users: int | None = None) -> None:
        self.root = Path(root)
        self.warm_users = warm_users
        self.loader = loader
        self.event_log = event_log
        self.on_swap = on_swap
        self.on_refused = on_refused
        self.engine: Engine | None = None
        self.folder: Path | None = None
        self.last_error = ""
        self.replayed = 0
        #: engines pinned beside the serving one (an A/B experiment's bundle arms): every recorded
        #: event is applied to them too; they are never swapped
        self.pinned: dict[str, Engine] = {}
        #: called with each batch of newly logged events (duplicates left out), after they are applied
        self.on_logged: Callable[[Sequence[Event]], None] | None = None
        #: follows what other processes append to the log (see tandem.server.log_tailer); None: nobody else writes
        self.tailer: LogTailer | None = None
        self._ingest_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- ingestion ------------------------------------------------------------------------
    def record(self, events: Sequence[Event], event_ids: Sequence[str | None] | None = None,
               before_commit: Callable[[], None] | None = None) -> tuple[int, int, int]:
        """Log ``events`` durably, then apply them to the serving engine. An event whose
        ``event_id`` the log already holds is a duplicate: acknowledged, neither logged nor applied again.
        ``before_commit`` runs right before the log's commit (see :meth:`EventLog.append_unique`);
        when it raises, nothing is logged or applied.

        Returns ``(event-log position after the batch, events the engine applied, duplicates)``.
        """
        with self._ingest_lock:
            if self.event_log is not None:
                seq, fresh = self.event_log.append_unique(events, event_ids, before_commit)
                new = events if len(fresh) == len(events) else [events[k] for k in fresh]
                if self.tailer is not None:  # other processes' earlier events first, in log order (and a
                    self.tailer.advance(seq - len(new))  # duplicate's original is applied when it is acknowledged)
            else:
                if before_commit is not None:
                    before_commit()
                seq, new = 0, events
            engine = self.engine
            applied = engine.record_events(new) if engine is not None and new else 0
            if new:
                for other in self.pinned.values():
                    other.record_events(new)
                if self.tailer is not None:
                    self.tailer.applied(seq)
        self._notify(new)
        return seq, int(applied), len(events) - len(new)

    @property
    def ingest_lock(self) -> threading.Lock:
        """Held while events are logged and applied; a log shared with other writers (the event
        bus) takes it to apply theirs, so that every engine sees one order."""
        return self._ingest_lock

    def apply_logged(self, entries: Sequence[Event | CatalogRow]) -> int:
        """:meth:`apply_entries`, then :attr:`on_logged` for the events among ``entries`` (the event
        bus's other replicas: every replica counts the fleet's events)."""
        applied = self.apply_entries(entries)
        self._notify([e for e in entries if isinstance(e, Event)])
        return applied

    def apply_entries(self, entries: Sequence[Event | CatalogRow]) -> int:
        """Apply events and live catalog changes another writer logged (the event bus's other
        replicas, a process group's other processes) to the serving and pinned engines, in order
        (hold :attr:`ingest_lock`); a catalog change gives an engine a successor, which replaces
        it. Returns how many events the serving engine applied."""
        applied = 0
        if self.engine is not None and entries:
            self.engine, applied = self._apply(self.engine, entries)
        for version, other in list(self.pinned.items()):
            self.pinned[version] = self._apply(other, entries)[0]
        return int(applied)

    def _notify(self, events: Sequence[Event]) -> None:
        if events and self.on_logged is not None:
            try:  # counters must never fail an acknowledged batch
                self.on_logged(events)
            except Exception:  # noqa: BLE001
                log.exception("on_logged failed for %d events", len(events))

    # -- loading --------------------------------------------------------------------------
    @staticmethod
    def _apply(engine: Engine, entries: Iterable[Event | CatalogRow]) -> tuple[Engine, int]:
        """Replay events and live catalog changes in log order (a catalog change gives a new engine)."""
        return replay_entries(engine, entries, _REPLAY_BATCH)

    def change_catalog(self, changes: Sequence[CatalogChange],
                       before_commit: Callable[[], None] | None = None) -> tuple[int, dict[str, int]]:
        """Apply live catalog changes: the new engine is built first (nothing is logged when that
        fails), the changes are logged durably, then the engine reference is swapped, all under the
        ingestion lock, so that they take the same place among events in the log and in the engine.
        Returns ``(log position, counts)``; raises :class:`CatalogUnsupported`."""
        with self._ingest_lock:
            engine = self.engine
            if engine is None:
                raise CatalogUnsupported("no bundle is loaded yet; retry shortly")
            if self.tailer is not None:  # what the group's other processes logged so far comes first
                self.tailer.advance()
                engine = self.engine
            new, counts = apply_changes(engine, changes)
            pinned = {v: apply_changes(e, changes)[0] for v, e in self.pinned.items()}
            if self.event_log is not None:
                seq = self.event_log.append_catalog(catalog_rows(changes), before_commit)
            else:
                if before_commit is not None:
                    before_commit()
                seq = 0
            if self.engine is not engine:
                # a shared log (the event bus) applied another replica's catalog change that came
                # before this one: make the change again on top of it (the log's order)
                engine = self.engine
                new = apply_changes(engine, changes)[0]
                pinned = {v: apply_changes(e, changes)[0] for v, e in self.pinned.items()}
            self.engine = commit(new, engine)
            self.pinned.update({v: commit(e, self.pinned[v]) for v, e in pinned.items()})
            if self.tailer is not None:
                # entries another process committed between the advance above and this append are
                # applied now, after the change (the one reordering a group allows: they were
                # concurrent with it); then the position moves past the change's own rows
                self.tailer.advance(seq - len(changes))
                self.tailer.applied(seq)
        return seq, counts

    def bundle_folder(self, version: str) -> Path:
        """``<root>/<version>`` when it is a bundle folder (one holding a manifest); else
        ValueError naming the field and the bundles there are (``CURRENT``, the event log or a
        missing folder are refused here, before anything is loaded)."""
        folder = self.root / check_version_name(version)
        if not (folder / "manifest.json").is_file():
            there = list_bundles(self.root)
            raise ValueError(f"version {version!r} is not a bundle folder under {self.root}; bundles there: "
                             + (", ".join(there[-10:]) if there else "none"))
        return folder

    def _resolve(self, version: str | None) -> Path:
        if version:
            folder = self.root / check_version_name(version)
            if not folder.is_dir():
                raise FileNotFoundError(f"no bundle {version!r} under {self.root}")
            return folder
        return current_bundle(self.root)

    def reload(self, version: str | None = None) -> tuple[bool, str]:
        """Load ``version`` (default: what CURRENT names) unless it is already serving.

        Returns ``(swapped, error message or "")``. Never raises: a refused bundle leaves the old
        engine serving, and the reason is kept in :attr:`last_error`.
        """
        with self._reload_lock:
            target = version or _CURRENT
            try:
                folder = self._resolve(version)
                target = folder.name
                if self.folder is not None and folder.resolve() == self.folder.resolve():
                    return False, ""
                t0 = time.perf_counter()
                engine, since_ts, received, after, mark, replayed = self._prepare(folder)
            except Exception as exc:  # noqa: BLE001 - any failure refuses the bundle, the old one serves on
                return False, self._refuse(target, exc)
            with self._ingest_lock:
                # events acknowledged while the bulk replay ran: apply them before anything else
                # can be logged, then swap, so none is lost between the two engines
                try:
                    engine, caught = self._catch_up(engine, since_ts, received, after, mark)
                    replayed += caught
                except Exception as exc:  # noqa: BLE001
                    return False, self._refuse(target, exc)
                old = self.engine
                self.engine, self.folder, self.last_error, self.replayed = engine, folder, "", replayed
            if self.on_swap is not None:
                self.on_swap(engine)
            log.info("serving bundle %s (was %s; %d logged events replayed; loaded in %.2fs)", engine.version,
                     getattr(old, "version", None), replayed, time.perf_counter() - t0)
            return True, ""

    def _prepare(self, folder: Path) -> tuple[Engine, int | None, float | None, int, int, int]:
        """Load ``folder``, replay the event log into it up to its current position, warm it. Returns
        ``(engine, since_ts, received_since, after_seq, that position, events replayed)``."""
        manifest = read_manifest(folder)  # its digest and version, whatever the engine loader checks
        engine = self.loader(folder)
        if getattr(engine, "version", None) != folder.name:  # what every report names (status, metrics, logs)
            raise ValueError(f"the engine loader reported version {getattr(engine, 'version', None)!r} for "
                             f"the bundle folder {folder.name}; the version served is the folder's name")
        replayed, after, since_ts, received = 0, 0, None, None
        mark = self.event_log.position() if self.event_log is not None else 0
        if self.event_log is not None:
            # every acknowledged event must be readable, or nothing is served from the log
            self.event_log.check_range(0, mark)
            after, since_ts, received = self._replay_from(folder, manifest, engine)
            engine, replayed = self._apply(engine, self._entries(since_ts, received, after, mark))
        warm = getattr(engine, "warm", None)  # optional: engines may keep per-user state
        if warm is not None and self.warm_users is not None:
            t1 = time.perf_counter()
            warmed = warm(self.warm_users)
            log.info("bundle %s: %d users' memos filled in %.1fs", engine.version, warmed,
                     time.perf_counter() - t1)
        t1 = time.perf_counter()
        item = warm_request_paths(engine)
        log.info("bundle %s: Search, Recommend and SimilarItems warmed (item %s) in %.2fs", engine.version,
                 item, time.perf_counter() - t1)
        return engine, since_ts, received, after, mark, replayed

    def _catch_up(self, engine: Engine, since_ts: int | None, received: float | None, after: int,
                  mark: int) -> tuple[Engine, int]:
        """Apply the events and catalog changes logged after ``mark`` (call under the ingestion lock),
        up to the log's position: what the serving engine holds. With a tailer (``--processes``),
        the engines serving now are first brought to the log's end, and ``engine`` to that same
        position, so the tailer goes on from there for all of them; a shared stream (the event bus)
        may hold more, which its follower applies."""
        if self.event_log is None:
            return engine, 0
        if self.tailer is not None:
            end = self.tailer.advance()
        else:
            apply_through = getattr(self.event_log, "apply_through", None)
            if apply_through is not None and after > self.event_log.position():
                # a shared log's follower is behind what the bundle includes: the engines serving now
                # get those entries first, so that the log's position covers the bundle's
                apply_through(after)
            end = self.event_log.position()
        self.event_log.check_range(mark, end)
        return self._apply(engine, self._entries(since_ts, received, max(mark, after), end))

    def _entries(self, since_ts: int | None, received: float | None, after: int, upto: int | None):
        """The log's events and live catalog changes after ``after``, up to ``upto``."""
        assert self.event_log is not None
        return self.event_log.iter_entries(since_ts, received, after_seq=after, upto_seq=upto)

    def load_pinned(self, version: str) -> Engine:
        """Load the bundle ``version`` beside the serving one, for good (an experiment arm's): the
        event log replayed, warmed, and from then on given every recorded event. Raises on failure."""
        with self._reload_lock:
            if version in self.pinned:
                return self.pinned[version]
            folder = self.bundle_folder(version)
            engine, since_ts, received, after, mark, replayed = self._prepare(folder)
            with self._ingest_lock:
                engine, caught = self._catch_up(engine, since_ts, received, after, mark)
                replayed += caught
                self.pinned[version] = engine
            log.info("bundle %s pinned beside the serving one (%d logged events replayed)", version, replayed)
            return engine

    def _replay_from(self, folder: Path, manifest: dict, engine: Engine) -> tuple[int, int | None, float | None]:
        """Which logged events the new engine gets: ``(after_seq, since_ts, received_since)`` for
        :meth:`EventLog.iter_events`. The manifest's ``event_log.seq`` is the newest event of the
        log the bundle was built from (``tandem build --events-log``; 0 when it includes none):
        every later event is replayed, once. When this log is not that log (its event ``seq`` is
        not the one the manifest describes), none of its events is in the bundle: all are replayed.
        A manifest without ``event_log`` (written before Tandem recorded it) falls back to
        timestamps: events with ``ts >= built_at`` or received after the bundle was created."""
        included = manifest.get("event_log")
        if included is None:
            log.warning("bundle %s does not record which logged events it includes (built by an older Tandem): "
                        "replaying the events newer than its data or received after it was created; rebuild it "
                        "so that every later event is replayed", folder.name)
            return 0, int(engine.built_at), _created_epoch(manifest)
        seq = included.get("seq") if isinstance(included, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError(f"manifest.json of {folder.name}: event_log.seq must be a sequence number >= 0, "
                             f"got {seq!r}")
        if seq == 0:
            return 0, None, None
        assert self.event_log is not None
        if self.event_log.holds(seq, included.get("last_event")):
            return seq, None, None
        log.warning("bundle %s includes events 1..%d of another event log (%s), not of %s (whose event %d differs "
                    "or is missing): every event of %s is replayed into it", folder.name, seq,
                    included.get("path", "?"), self.event_log.path, seq, self.event_log.path)
        return 0, None, None

    def _refuse(self, target: str, exc: Exception) -> str:
        self.last_error = f"bundle {target} refused: {type(exc).__name__}: {exc}"
        log.error("%s; %s keeps serving", self.last_error, getattr(self.engine, "version", "nothing"))
        if self.on_refused is not None:
            self.on_refused(self.last_error)
        return self.last_error

    # -- watching -------------------------------------------------------------------------
    def watch(self, interval_s: float = 1.0) -> None:
        """Poll ``<root>/CURRENT`` in a daemon thread and reload when what it names changes.

        A refused version is not retried until CURRENT changes again (or ReloadBundle asks).
        """

        def loop() -> None:
            last = self.folder.name if self.folder is not None else None
            while not self._stop.wait(interval_s):
                try:
                    text = (self.root / _CURRENT).read_text(encoding="utf-8").strip()
                except OSError:
                    continue
                if text == last:
                    continue
                last = text
                try:
                    if self.folder is None or self.folder.name != text:
                        self.reload()
                except Exception:  # noqa: BLE001 - the watcher must outlive any one bad bundle
                    log.exception("bundle watcher: reload of %s failed", text)

        self._watcher = threading.Thread(target=loop, name="bundle-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
