"""The split, popularity and item-CF co-occurrence as Spark jobs: the ``--engine spark`` twins of
:func:`tandem.index_builder.splits.make_split`, :meth:`Popularity.fit` and :meth:`ItemCF.fit`.

Each takes the cleaned events DataFrame of :class:`~tandem.index_builder.spark_clean.SparkClean`
(columns ``pos, u, i, ts, ev, value``) and returns the object the local engine builds, so the rest
of the build (text, two-tower, ranker) continues unchanged:

* split: Spark finds each user's distinct (user, item) pairs in first-interaction order and gives
  every event its role (train / validation target / test target); the driver assembles the
  :class:`Split` arrays from those roles with the local code;
* popularity: weighted (and decayed) event sums per item, float64, cast to float32 as locally;
* item-CF: the transition counts (pairs up to ``window`` steps apart in each user's distinct
  sequence) or the cosine / Jaccard co-occurrence counts, popularity damping, top-k per row
  (ties: lower column first) and row normalisation, all in float64; the kept neighbours come back
  as one float32 csr.

Floating-point sums run in a different order than numpy's, so weights agree to about 1e-15
relative, not bit for bit; counts, cosine and Jaccard (one division of exact counts) are exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from tandem.index_builder.spark_clean import _collect_frame
from tandem.index_builder.splits import Split, _sorted_events, _targets, no_split, temporal_cuts
from tandem.retrieval.data import Interactions
from tandem.retrieval.item_cf import ItemCF, ItemCFConfig
from tandem.retrieval.popularity import Popularity, PopularityConfig

__all__ = ["spark_split", "spark_popularity", "spark_item_cf"]

_SECONDS_PER_DAY = 86_400.0


def _pairs(events: Any) -> Any:
    """Distinct (u, i) pairs with the time and file position of their first event, and their
    0-based rank ``r`` in the user's distinct sequence and the sequence length ``n``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    first = events.groupBy("u", "i").agg(F.min(F.struct("ts", "pos")).alias("f"))
    first = first.select("u", "i", F.col("f.ts").alias("ts"), F.col("f.pos").alias("pos"))
    by_user = Window.partitionBy("u").orderBy("ts", "pos")
    return (first.withColumn("r", F.row_number().over(by_user) - 1)
            .withColumn("n", F.count(F.lit(1)).over(Window.partitionBy("u"))))


def spark_split(events: Any, interactions: Interactions, protocol: str,
                **parameters: Any) -> tuple[Split, Any, Any]:
    """``make_split(interactions, protocol, **parameters)`` with the per-event roles computed in
    Spark over ``events`` (the same events as ``interactions``, rows matched by ``pos``).

    Returns the split and the training and training+validation events as DataFrames (for the
    Spark sources fitted on them).
    """
    from pyspark.sql import functions as F

    if protocol == "none":
        if parameters:
            raise ValueError(f"protocol 'none' takes no parameters, got {sorted(parameters)}")
        return no_split(interactions), events, events
    pairs = _pairs(events)
    if protocol == "leave-last-out":
        if parameters.get("min_distinct_items", 3) != 3 or set(parameters) - {"min_distinct_items"}:
            raise ValueError(f"leave-last-out takes no parameters, got {sorted(parameters)}")
        from_end = F.col("n") - 1 - F.col("r")
        role = (F.when((F.col("n") >= 3) & (from_end == 0), 2)
                .when((F.col("n") >= 3) & (from_end == 1), 1).otherwise(0))
        pairs = pairs.withColumn("role", role)
        with_role = events.join(pairs.select("u", "i", "role"), ["u", "i"])
        protocol_info = {"name": "leave-last-out", "parameters": {"min_distinct_items": 3}}
        now_valid = now_test = None
        train_df = with_role.filter(F.col("role") == 0).drop("role")
        train_valid_df = with_role.filter(F.col("role") < 2).drop("role")
    elif protocol == "temporal":
        valid_fraction = parameters.pop("valid_fraction", 0.1)
        test_fraction = parameters.pop("test_fraction", 0.1)
        cut, vcut = temporal_cuts(interactions.ts, parameters.pop("cut_ts", None), valid_fraction,
                                  test_fraction, parameters.pop("valid_cut_ts", None))
        if parameters:
            raise TypeError(f"temporal split: unknown parameters {sorted(parameters)}")
        period = (F.col("ts") >= vcut).cast("int") + (F.col("ts") >= cut).cast("int")
        pairs = pairs.withColumn("role", period)  # the period of the pair's first event
        with_role = events.withColumn("period", period)
        protocol_info = {"name": "temporal", "parameters": {
            "cut_ts": int(cut), "valid_cut_ts": int(vcut),
            "valid_fraction": float(valid_fraction), "test_fraction": float(test_fraction)}}
        now_valid, now_test = int(vcut), int(cut)
        train_df = with_role.filter(F.col("period") == 0).drop("period")
        train_valid_df = with_role.filter(F.col("period") < 2).drop("period")
    else:
        raise ValueError(f"unknown split protocol {protocol!r}; choose one of leave-last-out, temporal, none")

    from pyspark import StorageLevel

    with_role = with_role.persist(StorageLevel.MEMORY_AND_DISK)
    train_df = train_df.persist(StorageLevel.MEMORY_AND_DISK)
    train_valid_df = train_valid_df.persist(StorageLevel.MEMORY_AND_DISK)
    ev_col = "role" if protocol == "leave-last-out" else "period"
    ev_roles = _collect_frame(with_role, ["pos", ev_col], "pos")[ev_col].astype(np.int8)
    targets = pairs.filter(F.col("role") > 0).withColumn("key", F.col("u").cast("long") * (1 << 32) + F.col("r"))
    t = _collect_frame(targets, ["key", "u", "i", "role"], "key")
    if ev_roles.shape[0] != len(interactions):
        raise RuntimeError(f"spark split: {ev_roles.shape[0]} events have a role, the log has {len(interactions)}")

    order, users, items, ts, events_sorted = _sorted_events(interactions)
    role_sorted = ev_roles[order]
    uid = interactions.user_ids
    t_user, t_item, t_role = (t["u"].astype(np.int64), t["i"].astype(np.int64), t["role"])
    valid, test = t_role == 1, t_role == 2
    split = Split(
        protocol=protocol_info,
        train=interactions.select(np.flatnonzero(ev_roles == 0)),
        valid=_targets(uid, t_user[valid], t_item[valid], users, items, ts, events_sorted, role_sorted == 0,
                       now=now_valid),
        test=_targets(uid, t_user[test], t_item[test], users, items, ts, events_sorted, role_sorted < 2,
                      now=now_test),
        train_and_valid=interactions.select(np.flatnonzero(ev_roles < 2)),
    )
    return split, train_df, train_valid_df


def spark_popularity(events: Any, n_items: int, config: PopularityConfig | None = None) -> Popularity:
    """:meth:`Popularity.fit` over the events DataFrame (catalog of ``n_items`` items)."""
    from pyspark.sql import functions as F

    config = config or PopularityConfig()
    weights = config.weights()
    w = F.lit(0.0)
    for code in range(len(weights) - 1, -1, -1):
        w = F.when(F.col("ev") == code, F.lit(float(weights[code]))).otherwise(w)
    newest = events.agg(F.max("ts")).first()[0]
    newest = 0 if newest is None else int(newest)
    age = (F.lit(newest) - F.col("ts")).cast("double") / _SECONDS_PER_DAY
    if config.window_days is not None:
        w = F.when(age <= config.window_days, w).otherwise(F.lit(0.0))
    if config.half_life_days is not None:
        w = w * F.pow(F.lit(2.0), -age / config.half_life_days)
    rows = events.groupBy("i").agg(F.sum(w).alias("s")).collect()
    scores = np.zeros(n_items, dtype=np.float64)
    if rows:
        idx = np.array([r[0] for r in rows], dtype=np.int64)
        if int(idx.max()) >= n_items:
            raise ValueError(f"interactions refer to item {int(idx.max())} but the catalog has {n_items} items")
        scores[idx] = [r[1] for r in rows]
    out = Popularity(config)
    out.scores = scores.astype(np.float32)
    out.newest_ts = newest
    return out


def spark_item_cf(events: Any, n_items: int, config: ItemCFConfig | None = None) -> ItemCF:
    """:meth:`ItemCF.fit` over the events DataFrame (catalog of ``n_items`` items)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    c = config or ItemCFConfig()
    spark = events.sparkSession
    out = ItemCF(c)
    newest = events.agg(F.max("ts")).first()[0]
    if newest is None:
        out.similarity = sp.csr_matrix((n_items, n_items), dtype=np.float32)
        return out
    from pyspark import StorageLevel

    pairs = _pairs(events).select("u", "i", "ts", "r").persist(StorageLevel.MEMORY_AND_DISK)
    if c.similarity == "transition":
        step_w = spark.createDataFrame([(d, float(c.distance_decay ** (d - 1))) for d in range(1, c.window + 1)],
                                       "d int, wd double")
        a = (pairs.select("u", F.col("i").alias("src"), "r")
             .crossJoin(F.broadcast(step_w)).withColumn("r2", F.col("r") + F.col("d")))
        b = pairs.select("u", F.col("i").alias("dst"), F.col("r").alias("r2"), F.col("ts").alias("ts2"))
        joined = a.join(b, ["u", "r2"])
        w = F.col("wd")
        if c.half_life_days is not None:
            age = (F.lit(int(newest)) - F.col("ts2")).cast("double") / _SECONDS_PER_DAY
            w = w * F.pow(F.lit(0.5), age / c.half_life_days)
        joined = joined.select("src", "dst", w.alias("w"))
        parts = joined
        if c.reverse_weight > 0:
            parts = parts.unionByName(joined.select(F.col("dst").alias("src"), F.col("src").alias("dst"),
                                                    (F.col("w") * c.reverse_weight).alias("w")))
        sim = parts.filter(F.col("src") != F.col("dst")).groupBy("src", "dst").agg(F.sum("w").alias("v"))
        sim = sim.filter(F.col("v") != 0)
        if c.pop_exponent > 0:
            pop = np.zeros(n_items, dtype=np.float64)
            counts = pairs.groupBy("i").count().collect()
            pop[[r[0] for r in counts]] = [r[1] for r in counts]
            factor = 1.0 / np.maximum(pop, 1.0) ** c.pop_exponent  # the local engine's exact factors
            used = np.flatnonzero(pop > 0)
            fac = spark.createDataFrame([(int(j), float(factor[j])) for j in used], "dst int, f double")
            sim = sim.join(F.broadcast(fac) if used.size < 2_000_000 else fac, "dst").select(
                "src", "dst", (F.col("v") * F.col("f")).alias("v"))
        sim = _top_k(sim, c.n_neighbours)
        if c.row_normalise:
            total = F.sum("v").over(Window.partitionBy("src"))
            sim = sim.withColumn("v", F.col("v") * (F.lit(1.0) / F.when(total > 0, total).otherwise(1.0)))
    else:
        deg = pairs.groupBy("i").agg(F.count(F.lit(1)).cast("double").alias("deg"))
        left = pairs.select("u", F.col("i").alias("src"))
        right = pairs.select("u", F.col("i").alias("dst"))
        co = (left.join(right, "u").filter(F.col("src") != F.col("dst"))
              .groupBy("src", "dst").agg(F.count(F.lit(1)).cast("double").alias("c")))
        co = (co.join(deg.select(F.col("i").alias("src"), F.col("deg").alias("di")), "src")
              .join(deg.select(F.col("i").alias("dst"), F.col("deg").alias("dj")), "dst"))
        if c.similarity == "cosine":
            val = F.col("c") / F.sqrt(F.col("di") * F.col("dj"))
        else:
            val = F.col("c") / (F.col("di") + F.col("dj") - F.col("c"))
        sim = _top_k(co.select("src", "dst", val.alias("v")), c.n_neighbours)
    out.similarity = _neighbour_csr(sim, n_items)
    pairs.unpersist()
    return out


def _neighbour_csr(sim: Any, n_items: int) -> sp.csr_matrix:
    """The kept ``(src, dst, v)`` rows of ``sim`` as an ``n_items x n_items`` float32 csr with
    sorted indices. The rows come in any order, each (src, dst) once: no sort key is collected and
    nothing is sorted on the driver (the coo -> csr conversion places the entries in one counting
    pass); ``v`` is cast to float32 before the matrix is built (the same values as casting the
    float64 matrix, as no entries are summed), so the driver holds 12 bytes per neighbour twice,
    not 24 bytes four times (50M neighbours on the 10M-event shop)."""
    table = sim.select("src", "dst", "v").toArrow()
    src = table.column("src").to_numpy().astype(np.int32, copy=False)
    dst = table.column("dst").to_numpy().astype(np.int32, copy=False)
    v = table.column("v").to_numpy().astype(np.float32)
    del table
    matrix = sp.coo_matrix((v, (src, dst)), shape=(n_items, n_items)).tocsr()
    del src, dst, v
    matrix.sort_indices()
    return matrix


def _top_k(sim: Any, k: int) -> Any:
    """The ``k`` largest ``v`` of every ``src`` (ties: lower ``dst`` first), ranked on ``v`` as
    float32, what the similarity stores and what the local engine ranks on (``_top_k_rows``):
    sums in another order differ in the last float64 bits, and must keep the same neighbours."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rank = F.row_number().over(Window.partitionBy("src").orderBy(F.col("v").cast("float").desc(),
                                                                   F.col("dst").asc()))
    return sim.withColumn("rank", rank).filter(F.col("rank") <= k).drop("rank")
