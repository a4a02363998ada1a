"""Hot swap: load the bundle ``<root>/CURRENT`` names, replay the event log into it, then swap
the engine reference atomically. In-flight requests keep the engine they started with (they
hold a reference), so no request fails during a swap. A bundle that fails verification or
loading is refused and the old engine keeps serving.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ranking.api import Engine
from retrieval.bundle import BundleError, current_bundle
from server.event_log import EventLog

__all__ = ["BundleManager"]

log = logging.getLogger(__name__)


def _created_epoch(folder: Path) -> float | None:
    try:
        created = json.loads((folder / "manifest.json").read_text()).get("created_at")
        return dt.datetime.fromisoformat(created).timestamp() if created else None
    except (OSError, ValueError):
        return None


class BundleManager:
    """Owns the current engine; ``engine`` is read without a lock (a reference swap is atomic)."""

    def __init__(self, root: Path, loader: Callable[[Path], Engine], event_log: EventLog | None,
                 on_swap: Callable[[Engine], None] | None = None) -> None:
        self.root = Path(root)
        self.loader = loader
        self.event_log = event_log
        self.on_swap = on_swap
        self.engine: Engine | None = None
        self.folder: Path | None = None
        self.last_error = ""
        self._reload_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def _replay(self, engine: Engine, folder: Path) -> int:
        if self.event_log is None:
            return 0
        applied = 0
        batch = []
        for ev in self.event_log.iter_events(since_ts=int(engine.built_at), received_since=_created_epoch(folder)):
            batch.append(ev)
            if len(batch) >= 10_000:
                applied += engine.record_events(batch)
                batch = []
        if batch:
            applied += engine.record_events(batch)
        return applied

    def reload(self, version: str | None = None) -> tuple[bool, str]:
        """Load ``version`` (default: what CURRENT names) unless it is already serving.
        Returns (swapped, error message or "")."""
        with self._reload_lock:
            try:
                folder = self.root / version if version else current_bundle(self.root)
                if self.folder is not None and folder.resolve() == self.folder.resolve():
                    return False, ""
                t0 = time.perf_counter()
                engine = self.loader(folder)
                replayed = self._replay(engine, folder)
            except (BundleError, OSError, ValueError, KeyError, RuntimeError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("bundle refused; %s keeps serving: %s",
                          getattr(self.engine, "version", "nothing"), self.last_error)
                return False, self.last_error
            old = self.engine
            self.engine, self.folder, self.last_error = engine, folder, ""
            if self.on_swap is not None:
                self.on_swap(engine)
            log.info("serving bundle %s (was %s; %d logged events replayed; loaded in %.1fs)", engine.version,
                     getattr(old, "version", None), replayed, time.perf_counter() - t0)
            return True, ""

    def watch(self, interval_s: float = 1.0) -> None:
        """Poll CURRENT in a daemon thread and reload when it changes."""

        def loop() -> None:
            last = None
            while not self._stop.wait(interval_s):
                try:
                    text = (self.root / "CURRENT").read_text().strip()
                except OSError:
                    continue
                if text != last:
                    last = text
                    if self.folder is None or self.folder.name != text:
                        self.reload()

        self._watcher = threading.Thread(target=loop, name="bundle-watcher", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        self._stop.set()
