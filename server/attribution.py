"""Which exposure an event is attributed to; the rule the report and the server's live counters share.

An exposure is one answer an experiment arm gave a user (a Search, Recommend or SimilarItems
response with its item ids). A click, cart or purchase of that user at time ``t`` is attributed
to the user's **last exposure at or before t, at most the attribution window earlier**; with
``attribution = "shown"`` (the default) only exposures that showed the event's item qualify,
so an event on an item no arm showed counts for nobody. The event counts for that exposure's
arm. Exposure times are compared in whole seconds (event timestamps are whole seconds, and
an event sent with ts 0 gets the server's receive time, truncated): an event in the same
second as an exposure counts as after it.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Exposure", "CONVERSION_EVENTS", "attribute", "LiveAttribution"]

#: The event types an experiment counts (views and ratings are not outcomes of an exposure).
CONVERSION_EVENTS: tuple[str, ...] = ("click", "cart", "purchase")


@dataclass(frozen=True, slots=True)
class Exposure:
    """One answer an arm gave a user: when (epoch seconds), who, which arm, which kind of request
    (search, recommend, similar), which items in the order shown."""

    ts: float
    user_id: str
    arm: str
    kind: str
    items: tuple[str, ...]

    @property
    def second(self) -> int:
        return math.floor(self.ts)


def attribute(exposures: Sequence[Exposure], seconds: Sequence[int], item_id: str, ts: int,
              window_s: float, shown_only: bool) -> int | None:
    """The index in ``exposures`` (one user's, in time order; ``seconds`` their whole-second
    times) of the exposure an event on ``item_id`` at ``ts`` is attributed to, or None."""
    j = bisect.bisect_right(seconds, ts) - 1
    while j >= 0 and ts - seconds[j] <= window_s:
        if not shown_only or item_id in exposures[j].items:
            return j
        j -= 1
    return None


class LiveAttribution:
    """The server's in-memory view for its live counters: the last ``per_user`` exposures of up to
    ``users`` recently exposed users (least recently exposed dropped first). The report reads the
    logs and is exact; these counters are a running approximation of it. Thread-safe."""

    def __init__(self, window_s: float, shown_only: bool, users: int = 100_000, per_user: int = 16) -> None:
        self.window_s = window_s
        self.shown_only = shown_only
        self.users = users
        self.per_user = per_user
        self._recent: OrderedDict[str, deque[Exposure]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, exposure: Exposure) -> None:
        with self._lock:
            q = self._recent.get(exposure.user_id)
            if q is None:
                q = self._recent[exposure.user_id] = deque(maxlen=self.per_user)
                while len(self._recent) > self.users:
                    self._recent.popitem(last=False)
            else:
                self._recent.move_to_end(exposure.user_id)
            q.append(exposure)

    def attribute(self, user_id: str, item_id: str, ts: int) -> Exposure | None:
        with self._lock:
            q = self._recent.get(user_id)
            if not q:
                return None
            exposures = list(q)
        j = attribute(exposures, [e.second for e in exposures], item_id, ts, self.window_s, self.shown_only)
        return None if j is None else exposures[j]
