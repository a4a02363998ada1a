"""The online learner's judge: the newest logged events, held out from the candidate's training,
and the final-stage Recommend of two engines scored on them (``tandem learn``, server/learner.py).

Held out: the newest ``share`` of the events logged since the serving bundle (by sequence number,
the order the server acknowledged them), at least one. The candidate trains on the log up to the
event before them. Each engine is then given what a server would give it (the logged events it
does not include, up to the same point: :meth:`Engine.record_events`, as the server's replay
does), and every user with a held-out event is asked ``Recommend(user, k)`` as a client would
be answered (the final, re-ranked list; seen items excluded). Targets: the distinct items the
user touched (any event type) in the held-out window and had not touched before it: an item in
the history is never recommended, so it could only count as a miss for both engines.

Scores are R@k and NDCG@k (binary relevance) of :mod:`tandem.retrieval.metrics`, averaged over
the users with a target; the same users and targets for both engines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tandem.index_builder.candidate import LoggedEvent
from tandem.ranking.api import CannotAnswerError, Engine, RecommendRequest
from tandem.retrieval.data import Event
from tandem.retrieval.metrics import ndcg_at_k, recall_at_k

__all__ = ["Holdout", "UserScores", "choose_holdout", "history_items", "holdout_targets", "score_engine",
           "score_users"]


@dataclass(frozen=True)
class Holdout:
    """The events after the serving bundle split into what the candidate trains on
    (``seq <= train_upto``) and the held-out newest ones (``held``, in log order)."""

    train_upto: int
    train: tuple[LoggedEvent, ...]
    held: tuple[LoggedEvent, ...]

    def describe(self) -> dict:
        return {"train_events": len(self.train), "held_out_events": len(self.held),
                "train_seq": [self.train[0].seq, self.train[-1].seq] if self.train else None,
                "held_out_seq": [self.held[0].seq, self.held[-1].seq] if self.held else None,
                "held_out_users": len({e.event.user_id for e in self.held})}


def choose_holdout(new: Sequence[LoggedEvent], share: float) -> Holdout:
    """Hold out the newest ``ceil(share * len(new))`` events (at least one) of ``new`` (the events
    logged after the serving bundle, in log order)."""
    if not 0 < share < 1:
        raise ValueError(f"holdout share must be between 0 and 1 (exclusive), got {share}")
    if not new:
        raise ValueError("no new events to hold out")
    n_held = max(1, math.ceil(share * len(new)))
    cut = len(new) - n_held
    train, held = tuple(new[:cut]), tuple(new[cut:])
    upto = train[-1].seq if train else held[0].seq - 1
    return Holdout(upto, train, held)


def holdout_targets(held: Sequence[LoggedEvent], seen: dict[str, set[str]]) -> dict[str, list[str]]:
    """``{user: [target item ids]}``: the distinct items each user touched in ``held`` that are not
    in ``seen[user]`` (their history before the window), in the order first touched. Users left
    with no target are left out."""
    out: dict[str, list[str]] = {}
    for le in held:
        ev = le.event
        before = seen.get(ev.user_id, ())
        items = out.setdefault(ev.user_id, [])
        if ev.item_id not in before and ev.item_id not in items:
            items.append(ev.item_id)
    return {u: items for u, items in out.items() if items}


def history_items(engine: Engine, user_ids: Sequence[str]) -> dict[str, set[str]]:
    """The item ids of each user's stored history in ``engine`` (a :class:`~tandem.ranking.pipeline.Pipeline`)."""
    histories, catalog = engine.histories, engine.catalog  # type: ignore[attr-defined]
    return {u: {catalog.item_ids[int(i)] for i in histories.get(u).items} for u in user_ids}


@dataclass(frozen=True)
class UserScores:
    """Per-user scores of one engine on held-out targets: ``users`` sorted ids, ``recall`` and
    ``ndcg`` float64 (len(users),) R@k and NDCG@k of each user's answer, in ``users`` order."""

    k: int
    users: tuple[str, ...]
    recall: np.ndarray
    ndcg: np.ndarray

    def means(self) -> dict[str, float]:
        """``{"recall@k", "ndcg@k", "users"}`` averaged over the users (0 when there are none)."""
        n = len(self.users)
        return {f"recall@{self.k}": float(self.recall.mean()) if n else 0.0,
                f"ndcg@{self.k}": float(self.ndcg.mean()) if n else 0.0, "users": float(n)}


def score_engine(engine: Engine, replay: Sequence[Event], targets: dict[str, list[str]],
                 k: int = 10) -> dict[str, float]:
    """Apply ``replay`` to ``engine`` (as the server's replay would), then ask ``Recommend(user, k)``
    for every user of ``targets`` and score the answers: ``{"recall@k", "ndcg@k", "users"}``.
    A user the engine cannot answer (a search-only bundle) counts as a miss."""
    return score_users(engine, replay, targets, k).means()


def score_users(engine: Engine, replay: Sequence[Event], targets: dict[str, list[str]],
                k: int = 10) -> UserScores:
    """:func:`score_engine`, each user's scores kept (for a paired comparison of two engines on
    the same ``targets``)."""
    if replay:
        engine.record_events(list(replay))
    ids: dict[str, int] = {}
    users = sorted(targets)
    ranked = np.full((len(users), k), -1, dtype=np.int64)
    indptr, items = [0], []
    for r, user in enumerate(users):
        try:
            answer = engine.recommend(RecommendRequest(user_id=user, k=k)).items
        except CannotAnswerError:
            answer = ()
        for c, it in enumerate(answer[:k]):
            ranked[r, c] = ids.setdefault(it.item_id, len(ids))
        items += [ids.setdefault(t, len(ids)) for t in targets[user]]
        indptr.append(len(items))
    if not users:
        return UserScores(k, (), np.zeros(0), np.zeros(0))
    csr = (np.asarray(indptr, dtype=np.int64), np.asarray(items, dtype=np.int64))
    return UserScores(k, tuple(users), np.asarray(recall_at_k(ranked, csr, k, per_user=True), dtype=np.float64),
                      np.asarray(ndcg_at_k(ranked, csr, k, per_user=True), dtype=np.float64))
