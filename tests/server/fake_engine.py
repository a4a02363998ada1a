"""A small, deterministic :class:`ranking.api.Engine` for the server tests.

The catalog is a tiny JSON file inside a real bundle written with ``retrieval.bundle.write_bundle``,
so checksum verification, ``CURRENT`` and hot swap are exercised for real while the answers stay
predictable:

- ``recommend``: items the user has not seen, ordered by how soon they follow the user's last
  recorded item in catalog order (score ``1 - distance / n``); a user without history gets catalog
  order and ``cold_start``. A recorded event therefore changes the next answer.
- ``search``: items whose title contains every query word, catalog order. Two magic queries drive
  the failure tests: ``"boom"`` raises ``RuntimeError`` (-> INTERNAL) and ``"sleep <seconds>"``
  sleeps first (drain and deadline tests). With ``candidate_item_ids``: the known ones that pass
  the filters, those whose title holds more of the query words first (score: that share), else
  the caller's order; unknown ids are counted in ``unknown_candidates``.
- ``similar_items``: the nearest items in catalog order; unknown ids raise ``UnknownItemError``.

Used in-process by ``tests/server`` and, through ``python -m tests.e2e.fake_serve`` (the serve
command with this loader), by the subprocess tests in ``tests/e2e``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tandem.ranking.api import (
    Explanation,
    RecommendRequest,
    Response,
    ScoredItem,
    SearchRequest,
    SimilarRequest,
    SourceHit,
    UnknownItemError,
)
from tandem.retrieval.bundle import current_bundle, verify_bundle, write_bundle
from tandem.retrieval.data import Event, Item

__all__ = ["FakeEngine", "load_fake_engine", "write_fake_bundle", "CATALOG_FILE"]

CATALOG_FILE = "catalog.json"
BRANDS = ("acme", "globex", "initech")
CATEGORIES = ("Home > Kitchen", "Home > Garden", "Beauty > Skin")


def write_fake_bundle(root: Path, *, n_items: int = 20, built_at: int = 1_700_000_000,
                      histories: dict[str, list[str]] | None = None, make_current: bool = True,
                      version: str | None = None, event_log: dict | None = None) -> Path:
    """Write a bundle of ``n_items`` items ``i00``.. with titles ``"item <n> <colour>"``.

    ``event_log`` is the manifest's record of the logged events the bundle includes (what
    ``tandem build`` writes: ``{"seq": 0}`` for none); None leaves it out, as older builds did."""
    colours = ("red", "green", "blue", "black")
    items = [{"item_id": f"i{n:02d}", "title": f"item {n} {colours[n % len(colours)]}",
              "category": CATEGORIES[n % len(CATEGORIES)], "brand": BRANDS[n % len(BRANDS)],
              "price": float(5 + n), "in_stock": n % 5 != 4} for n in range(n_items)]
    histories = {"alice": ["i03"], "bob": ["i10", "i11"]} if histories is None else histories

    def fill(folder: Path) -> dict:
        (folder / CATALOG_FILE).write_text(json.dumps({"items": items, "histories": histories}))
        return {"built_at": built_at, "kind": "fake", **({"event_log": event_log} if event_log is not None else {})}

    return write_bundle(root, fill, version=version, make_current=make_current)


def load_fake_engine(path: Path) -> FakeEngine:
    """The engine loader of the server tests: a bundle root (its CURRENT) or a bundle folder."""
    folder = current_bundle(path)
    manifest = verify_bundle(folder)
    data = json.loads((folder / CATALOG_FILE).read_text())
    items = [Item(d["item_id"], d["title"], category=d["category"], brand=d["brand"], price=d["price"],
                  in_stock=d["in_stock"]) for d in data["items"]]
    return FakeEngine(items, data["histories"], version=manifest["version"], built_at=int(manifest["built_at"]))


class FakeEngine:
    """Implements the Engine protocol over a list of items and per-user histories."""

    def __init__(self, items: Sequence[Item], histories: dict[str, list[str]], *, version: str = "fake-1",
                 built_at: int = 0) -> None:
        self.version = version
        self.built_at = built_at
        self.items = list(items)
        self.index = {it.item_id: n for n, it in enumerate(self.items)}
        self.histories = {u: list(h) for u, h in histories.items()}
        self.recorded: list[Event] = []
        self.stats: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_users(self) -> int:
        with self._lock:
            return len(self.histories)

    def _explain(self, n: int, score: float, rank: int, explain: bool) -> Explanation | None:
        if not explain:
            return None
        return Explanation(sources=(SourceHit("fake", rank, score),), fused_score=score, ranker_score=score * 2,
                           top_features=(("closeness", score),))

    def _answer(self, ranked: list[tuple[int, float]], k: int, explain: bool, cold: bool = False,
                unknown: int = 0) -> Response:
        self.stats = {"fake_candidates": float(len(ranked)), "fake_seconds": 1e-5}
        out = tuple(ScoredItem(self.items[n].item_id, s, self.items[n].title, self._explain(n, s, r, explain))
                    for r, (n, s) in enumerate(ranked[:k], 1))
        return Response(out, self.version, cold, unknown_candidates=unknown)

    def _allowed(self, n: int, filters) -> bool:
        it = self.items[n]
        return (it.item_id not in filters.exclude_item_ids
                and (not filters.brands or it.brand in filters.brands)
                and (not filters.in_stock_only or it.in_stock))

    def recommend(self, request: RecommendRequest) -> Response:
        with self._lock:
            history = list(self.histories.get(request.user_id or "", ()))
        history += [e.item_id for e in request.context if e.item_id in self.index]
        size = len(self.items)
        seen = set(history) if request.exclude_seen else set()
        if not history:
            ranked = [(n, 1.0 - n / size) for n in range(size) if self._allowed(n, request.filters)]
            return self._answer(ranked, request.k, request.explain, cold=True)
        last = self.index[history[-1]]
        ranked = [(n, 1.0 - ((n - last) % size) / size) for n in range(size)
                  if self.items[n].item_id not in seen and self._allowed(n, request.filters)]
        ranked.sort(key=lambda t: -t[1])
        return self._answer(ranked, request.k, request.explain)

    def search(self, request: SearchRequest) -> Response:
        words = request.query.lower().split()
        if words[0] == "boom":
            raise RuntimeError("the fake engine was asked to fail")
        if words[0] == "sleep" and len(words) > 1:
            time.sleep(float(words[1]))
            words = words[2:]
        if request.candidate_item_ids:
            given = [self.index[i] for i in request.candidate_item_ids if i in self.index]
            ranked = [(n, sum(w in self.items[n].title.lower().split() for w in words) / max(1, len(words)))
                      for n in dict.fromkeys(given) if self._allowed(n, request.filters)]
            ranked.sort(key=lambda t: -t[1])
            return self._answer(ranked, request.k, request.explain,
                                unknown=len(request.candidate_item_ids) - len(given))
        ranked = [(n, 1.0) for n, it in enumerate(self.items)
                  if all(w in it.title.lower().split() for w in words) and self._allowed(n, request.filters)]
        return self._answer(ranked, request.k, request.explain)

    def similar_items(self, request: SimilarRequest) -> Response:
        if request.item_id not in self.index:
            raise UnknownItemError(request.item_id)
        seed = self.index[request.item_id]
        ranked = sorted(((n, 1.0 / (1 + abs(n - seed))) for n in range(len(self.items))
                         if n != seed and self._allowed(n, request.filters)), key=lambda t: (-t[1], t[0]))
        return self._answer(ranked, request.k, request.explain)

    def get_item(self, item_id: str) -> Item:
        if item_id not in self.index:
            raise UnknownItemError(item_id)
        return self.items[self.index[item_id]]

    def record_events(self, events: Sequence[Event]) -> int:
        applied = 0
        with self._lock:
            for e in events:
                self.recorded.append(e)
                if e.item_id in self.index:
                    self.histories.setdefault(e.user_id, []).append(e.item_id)
                    applied += 1
        return applied
