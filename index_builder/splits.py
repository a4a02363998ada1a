"""Train / validation / test splits of an interaction log for offline evaluation.

Every protocol predicts the next *new* item: a user's events are reduced to the sequence of
distinct items ordered by their first interaction (a view -> click -> purchase funnel repeats
an item; re-finding it is not the task). A split gives the training interactions and, for the
validation and test stages, a :class:`Targets`: per target user the items to predict and the
history a model may look at when predicting them.

Protocols:

* ``leave-last-out`` (:func:`leave_last_out`): per user, the last distinct item is the test
  target and the second last the validation target (the S3-Rec / SASRec protocol).
* ``temporal`` (:func:`temporal`): global time cuts; targets are the items a user first meets
  after a cut.
* ``none`` (:func:`no_split`): everything is training; no targets (for building a serving bundle).

All of it is vectorised numpy: the 200k events of Amazon Beauty split in well under a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tandem.retrieval.base import RetrievalRequest
from tandem.retrieval.data import Interactions

__all__ = [
    "SPLIT_PROTOCOLS",
    "Targets",
    "Split",
    "leave_last_out",
    "temporal",
    "temporal_cuts",
    "no_split",
    "make_split",
]

#: Protocol names as the CLI and the bundle manifest spell them.
SPLIT_PROTOCOLS: tuple[str, ...] = ("leave-last-out", "temporal", "none")


@dataclass(frozen=True)
class Targets:
    """Target items and visible histories of the users evaluated at one stage.

    Row ``i`` describes target user ``users[i]`` (int64 index into ``user_ids``; rows are in
    ascending user order):

    * targets: ``items[indptr[i]:indptr[i + 1]]`` (int64 item indices, unique per user, in the
      order the user first met them); ``indptr`` int64 (u + 1,).
    * history the model may see: ``history_items`` int64, ``history_ts`` int64 epoch seconds and
      ``history_events`` int8 event codes, rows ``history_indptr[i]:history_indptr[i + 1]``,
      oldest first; ``history_indptr`` int64 (u + 1,). A history never contains a target item.

    ``now`` is the request time of the stage (the time cut of a temporal split; None when every
    user is asked at their own time, as in leave-last-out).
    """

    user_ids: list[str]
    users: np.ndarray
    indptr: np.ndarray
    items: np.ndarray
    history_indptr: np.ndarray
    history_items: np.ndarray
    history_ts: np.ndarray
    history_events: np.ndarray
    now: int | None = None

    def __post_init__(self) -> None:
        u = self.users.shape[0]
        for name in ("indptr", "history_indptr"):
            ptr = getattr(self, name)
            if ptr.shape != (u + 1,) or ptr[0] != 0:
                raise ValueError(f"Targets.{name} must have shape ({u + 1},) and start at 0, got {ptr.shape}")
        if int(self.indptr[-1]) != self.items.shape[0]:
            raise ValueError(f"Targets.indptr ends at {int(self.indptr[-1])} but there are "
                             f"{self.items.shape[0]} target items")
        h = int(self.history_indptr[-1])
        for name in ("history_items", "history_ts", "history_events"):
            if getattr(self, name).shape != (h,):
                raise ValueError(f"Targets.{name} has shape {getattr(self, name).shape}, expected ({h},)")

    @classmethod
    def empty(cls, user_ids: list[str]) -> Targets:
        zero = np.zeros(1, dtype=np.int64)
        none = np.zeros(0, dtype=np.int64)
        return cls(user_ids, none, zero, none, zero.copy(), none.copy(), none.copy(),
                   np.zeros(0, dtype=np.int8))

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def n_targets(self) -> int:
        return int(self.items.shape[0])

    def targets(self, i: int) -> np.ndarray:
        """int64 target items of row ``i``."""
        return self.items[self.indptr[i]:self.indptr[i + 1]]

    def history(self, i: int) -> np.ndarray:
        """int64 visible history items of row ``i``, oldest first (may repeat an item)."""
        return self.history_items[self.history_indptr[i]:self.history_indptr[i + 1]]

    def request(self, i: int) -> RetrievalRequest:
        """The recommendation request of row ``i``: its visible history and user id."""
        lo, hi = int(self.history_indptr[i]), int(self.history_indptr[i + 1])
        return RetrievalRequest(
            history=self.history_items[lo:hi],
            history_ts=self.history_ts[lo:hi],
            history_events=self.history_events[lo:hi],
            user_id=self.user_ids[int(self.users[i])],
            now=self.now,
        )

    def requests(self, start: int = 0, stop: int | None = None) -> list[RetrievalRequest]:
        """Requests of rows ``start .. stop - 1``."""
        stop = len(self) if stop is None else min(stop, len(self))
        return [self.request(i) for i in range(start, stop)]

    def __iter__(self) -> Iterator[RetrievalRequest]:
        return (self.request(i) for i in range(len(self)))


@dataclass
class Split:
    """One split of an interaction log.

    ``protocol`` is a JSON-able ``{"name": ..., "parameters": {...}}`` recorded in reports and
    bundle manifests. ``train`` is what models are fitted on. ``valid`` and ``test`` are the
    targets of the two evaluation stages: ``valid`` histories hold the training events, ``test``
    histories the training and validation events. ``train_and_valid`` holds every event that is
    not a test-target event (what a model may be refitted on before the test stage).
    """

    protocol: dict[str, Any]
    train: Interactions
    valid: Targets
    test: Targets
    train_and_valid: Interactions = field(repr=False, default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.train_and_valid is None:
            self.train_and_valid = self.train

    def counts(self) -> dict[str, int]:
        """JSON-able sizes of the split's parts."""
        return {
            "train_events": len(self.train),
            "train_and_valid_events": len(self.train_and_valid),
            "valid_users": len(self.valid),
            "valid_targets": self.valid.n_targets,
            "test_users": len(self.test),
            "test_targets": self.test.n_targets,
        }


class _Pairs:
    """The distinct (user, item) pairs of a chronologically ordered event stream.

    ``users``/``items`` int64 (n,) are events sorted by (user, ts, file order). ``inverse`` (n,)
    maps each event to its pair; pair arrays are in (user, first-interaction) order:
    ``first`` (p,) position of the pair's first event, ``user``/``item`` (p,), ``rank`` (p,) the
    pair's 0-based position in its user's distinct sequence, ``count`` (p,) that sequence's length.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int) -> None:
        n_items = int(items.max()) + 1 if items.size else 1
        _, first, inverse = np.unique(users * n_items + items, return_index=True, return_inverse=True)
        # np.unique orders pairs by (user, item); reorder them by first interaction. The event
        # stream is grouped by user, so sorting by first position keeps users together.
        order = np.argsort(first, kind="stable")
        relabel = np.empty_like(order)
        relabel[order] = np.arange(order.shape[0])
        self.inverse = relabel[inverse.reshape(-1)]
        self.first = first[order]
        self.user = users[self.first]
        self.item = items[self.first]
        per_user = np.bincount(self.user, minlength=n_users)
        start = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(per_user, out=start[1:])
        self.rank = np.arange(self.first.shape[0]) - start[self.user]
        self.count = per_user[self.user]


def _sorted_events(interactions: Interactions) -> tuple[np.ndarray, ...]:
    order = interactions.chronological_order()
    return (
        order,
        interactions.users[order].astype(np.int64),
        interactions.items[order].astype(np.int64),
        interactions.ts[order],
        interactions.events[order],
    )


def _targets(user_ids: list[str], pair_user: np.ndarray, pair_item: np.ndarray, ev_users: np.ndarray,
             ev_items: np.ndarray, ev_ts: np.ndarray, ev_events: np.ndarray,
             visible: np.ndarray, now: int | None = None) -> Targets:
    """Build :class:`Targets` from target pairs (grouped by ascending user) and the visible events.

    ``visible`` is a bool mask over the chronologically sorted events ``ev_*``.
    """
    n_users = len(user_ids)
    users, per_user = np.unique(pair_user, return_counts=True)
    indptr = np.zeros(users.shape[0] + 1, dtype=np.int64)
    np.cumsum(per_user, out=indptr[1:])
    is_target_user = np.zeros(n_users, dtype=bool)
    is_target_user[users] = True
    keep = visible & is_target_user[ev_users]
    h_count = np.bincount(ev_users[keep], minlength=n_users)[users]
    history_indptr = np.zeros(users.shape[0] + 1, dtype=np.int64)
    np.cumsum(h_count, out=history_indptr[1:])
    return Targets(
        user_ids=user_ids,
        users=users.astype(np.int64),
        indptr=indptr,
        items=pair_item.astype(np.int64),
        history_indptr=history_indptr,
        history_items=ev_items[keep].astype(np.int64),
        history_ts=ev_ts[keep].astype(np.int64),
        history_events=ev_events[keep].astype(np.int8),
        now=now,
    )


def _select_sorted(interactions: Interactions, order: np.ndarray, mask: np.ndarray) -> Interactions:
    """Rows ``order[mask]`` of the log, back in file order."""
    return interactions.select(np.sort(order[mask]))


def leave_last_out(interactions: Interactions) -> Split:
    """Per user: last distinct item -> test, second last -> validation, the rest -> training.

    Events are ordered by timestamp, ties by file order. All the user's events on a target item
    are held out of training. Users with fewer than 3 distinct items are training only.
    """
    order, users, items, ts, events = _sorted_events(interactions)
    pairs = _Pairs(users, items, interactions.n_users)
    from_end = pairs.count - 1 - pairs.rank
    eligible = pairs.count >= 3
    role = np.zeros(pairs.first.shape[0], dtype=np.int8)  # 0 train, 1 valid, 2 test
    role[eligible & (from_end == 1)] = 1
    role[eligible & (from_end == 0)] = 2
    ev_role = role[pairs.inverse]
    valid_pairs, test_pairs = role == 1, role == 2
    uid = interactions.user_ids
    return Split(
        protocol={"name": "leave-last-out", "parameters": {"min_distinct_items": 3}},
        train=_select_sorted(interactions, order, ev_role == 0),
        valid=_targets(uid, pairs.user[valid_pairs], pairs.item[valid_pairs], users, items, ts, events,
                       ev_role == 0),
        test=_targets(uid, pairs.user[test_pairs], pairs.item[test_pairs], users, items, ts, events,
                      ev_role < 2),
        train_and_valid=_select_sorted(interactions, order, ev_role < 2),
    )


def temporal_cuts(ts: np.ndarray, cut_ts: int | None = None, valid_fraction: float = 0.1,
                  test_fraction: float = 0.1, valid_cut_ts: int | None = None) -> tuple[int, int]:
    """``(cut_ts, valid_cut_ts)`` of :func:`temporal` over the event times ``ts`` (int64 (n,)):
    given cuts are checked, missing ones placed on the time distribution."""
    if not 0.0 <= valid_fraction < 1.0 or not 0.0 < test_fraction < 1.0 \
            or valid_fraction + test_fraction >= 1.0:
        raise ValueError(f"temporal split: need 0 <= valid_fraction, 0 < test_fraction and their sum < 1; "
                         f"got valid_fraction={valid_fraction}, test_fraction={test_fraction}")
    if len(ts) == 0:
        raise ValueError("temporal split: the interaction log is empty")
    sorted_ts = np.sort(ts)
    n = sorted_ts.shape[0]
    if cut_ts is None:
        cut_ts = int(sorted_ts[min(n - 1, int(np.floor(n * (1.0 - test_fraction))))])
    if valid_cut_ts is None:
        before = int(np.searchsorted(sorted_ts, cut_ts, side="left"))
        pos = before - int(round(valid_fraction * n))
        valid_cut_ts = cut_ts if valid_fraction == 0 else int(sorted_ts[max(0, min(pos, n - 1))])
    if valid_cut_ts > cut_ts:
        raise ValueError(f"temporal split: valid_cut_ts={valid_cut_ts} is after cut_ts={cut_ts}; "
                         "the validation cut must come first")
    return cut_ts, valid_cut_ts


def temporal(interactions: Interactions, cut_ts: int | None = None, valid_fraction: float = 0.1,
             test_fraction: float = 0.1, valid_cut_ts: int | None = None) -> Split:
    """Global time cuts: training before ``valid_cut_ts``, validation until ``cut_ts``, test after.

    A user's validation targets are the distinct items they first interact with in
    ``[valid_cut_ts, cut_ts)``; test targets those first met at or after ``cut_ts`` (items seen
    before, in any period, are not targets). Training is every event before ``valid_cut_ts``.

    Cuts left as None are placed on the event time distribution: ``cut_ts`` so that about
    ``test_fraction`` of all events fall at or after it, ``valid_cut_ts`` so that about
    ``valid_fraction`` of all events fall between the two cuts (ties on a timestamp stay on one
    side, so the fractions are approximate). ``valid_fraction=0`` gives no validation stage.
    """
    cut_ts, valid_cut_ts = temporal_cuts(interactions.ts, cut_ts, valid_fraction, test_fraction, valid_cut_ts)
    order, users, items, ts, events = _sorted_events(interactions)
    period = (ts >= valid_cut_ts).astype(np.int8) + (ts >= cut_ts).astype(np.int8)  # 0, 1, 2
    pairs = _Pairs(users, items, interactions.n_users)
    first_period = period[pairs.first]
    valid_pairs, test_pairs = first_period == 1, first_period == 2
    uid = interactions.user_ids
    return Split(
        protocol={"name": "temporal", "parameters": {
            "cut_ts": int(cut_ts), "valid_cut_ts": int(valid_cut_ts),
            "valid_fraction": float(valid_fraction), "test_fraction": float(test_fraction)}},
        train=_select_sorted(interactions, order, period == 0),
        valid=_targets(uid, pairs.user[valid_pairs], pairs.item[valid_pairs], users, items, ts, events,
                       period == 0, now=int(valid_cut_ts)),
        test=_targets(uid, pairs.user[test_pairs], pairs.item[test_pairs], users, items, ts, events,
                      period < 2, now=int(cut_ts)),
        train_and_valid=_select_sorted(interactions, order, period < 2),
    )


def no_split(interactions: Interactions) -> Split:
    """Protocol ``none``: everything is training, no targets (for the serving bundle)."""
    return Split(
        protocol={"name": "none", "parameters": {}},
        train=interactions,
        valid=Targets.empty(interactions.user_ids),
        test=Targets.empty(interactions.user_ids),
    )


def make_split(interactions: Interactions, protocol: str, **parameters: Any) -> Split:
    """Split by protocol name (one of :data:`SPLIT_PROTOCOLS`); ``parameters`` go to the protocol."""
    if protocol == "leave-last-out":
        # what leave_last_out records in its protocol may be passed back (a manifest round trip)
        if parameters.get("min_distinct_items", 3) == 3:
            parameters = {k: v for k, v in parameters.items() if k != "min_distinct_items"}
        if parameters:
            raise ValueError(f"leave-last-out takes no parameters, got {sorted(parameters)}")
        return leave_last_out(interactions)
    if protocol == "temporal":
        return temporal(interactions, **parameters)
    if protocol == "none":
        if parameters:
            raise ValueError(f"protocol 'none' takes no parameters, got {sorted(parameters)}")
        return no_split(interactions)
    raise ValueError(f"unknown split protocol {protocol!r}; choose one of {', '.join(SPLIT_PROTOCOLS)}")
