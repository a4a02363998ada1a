"""The Spark engine against the local engine on a small dirty shop (``local[2]``): the same
cleaning report, the same interactions, the same split, the same popularity and the same item-CF
neighbours with weights within 1e-6. One Spark session for the module (starting one costs seconds)."""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tandem.index_builder.cleaning import CleaningConfig, load_dataset
from tandem.index_builder.readers import read_event_rows
from tandem.index_builder.spark_session import spark_problem
from tandem.index_builder.splits import make_split
from tandem.retrieval.item_cf import ItemCF, ItemCFConfig
from tandem.retrieval.popularity import Popularity, PopularityConfig

_PROBLEM = spark_problem()  # None when pyspark and Java are there
pytestmark = pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))

# k-core on, so every cleaning rule runs
CONFIG = CleaningConfig(min_user_events=3, min_item_events=2)
BAD_ROWS = [
    b'{"user_id": "u9", "item_id": "i0000001", "ts": "yesterday"}\n',
    b"not json at all\n",
    b"\n",
    b'{"user_id": "", "item_id": "i0000001", "ts": 1}\n',
    b'{"user_id": "u9", "item_id": "i0000002", "ts": 1600000000, "event": "teleport"}\n',
    b'[1, 2]\n',
]


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A generated shop with duplicate items and events, events on unknown items, bots, some
    malformed rows and a ``now`` that makes the newest events future ones."""
    from tandem.index_builder.synthetic import SyntheticConfig, generate

    out = tmp_path_factory.mktemp("spark_shop")
    generate(out, SyntheticConfig(items=300, users=200, seed=5, queries=0, events_per_user=15))
    path = out / "events.jsonl.gz"
    raw = gzip.decompress(path.read_bytes()).splitlines(keepends=True)
    path.write_bytes(gzip.compress(b"".join(raw[:50] + BAD_ROWS + raw[50:])))
    ts = np.sort([r[2] for r in read_event_rows(path)])
    now = int(ts[int(0.98 * len(ts))]) - CONFIG.max_future_s
    return out, now


@pytest.fixture(scope="module")
def spark(tmp_path_factory):
    from tandem.index_builder.spark_session import start_spark

    session = start_spark("local[2]", driver_memory="1g", local_dir=tmp_path_factory.mktemp("spark_tmp"),
                          conf={"spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2",
                                # tiny jobs on a busy machine: the quick JIT tier and one GC thread
                                "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"})
    yield session
    session.stop()


@pytest.fixture(scope="module")
def both(spark, shop):
    from tandem.index_builder.spark_engine import SparkEngine

    data, now = shop
    engine = SparkEngine(spark=spark)
    return load_dataset(data, CONFIG, now=now), engine.load_dataset(data, CONFIG, now=now), engine


def test_cleaning_counts_and_interactions_match(both):
    local, remote, _ = both
    a, b = local.report.to_dict(), remote.report.to_dict()
    # the shop exercises every rule: otherwise this test would prove little
    assert a["read"]["events"]["rows_skipped"] == 5 and a["duplicate_item_ids"] > 0
    assert all(a["events_dropped"][k] > 0 for k in ("future_ts", "unknown_item", "duplicate", "bot", "k_core"))
    assert a == b
    li, si = local.interactions, remote.interactions
    assert li.user_ids == si.user_ids
    for col in ("users", "items", "ts", "events", "values"):
        x, y = getattr(li, col), getattr(si, col)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=True), col
    assert local.catalog.item_ids == remote.catalog.item_ids
    assert local.catalog.titles == remote.catalog.titles
    assert np.array_equal(local.catalog.prices, remote.catalog.prices, equal_nan=True)
    assert np.array_equal(local.catalog.price_outlier, remote.catalog.price_outlier)


def _same_targets(x, y):
    for f in ("users", "indptr", "items", "history_indptr", "history_items", "history_ts", "history_events"):
        assert np.array_equal(getattr(x, f), getattr(y, f)), f
    assert x.now == y.now


def _check_split(engine, local, remote, protocol):
    split = engine.make_split(remote.interactions, protocol)
    expected = make_split(local.interactions, protocol)
    assert split.protocol == expected.protocol and split.counts() == expected.counts()
    assert len(expected.valid) > 0 and len(expected.test) > 0
    _same_targets(split.valid, expected.valid)
    _same_targets(split.test, expected.test)
    for part in ("train", "train_and_valid"):
        for col in ("users", "items", "ts", "events"):
            assert np.array_equal(getattr(getattr(split, part), col), getattr(getattr(expected, part), col))
    return split, expected


def _check_popularity(engine, local, split, expected, cfg, exact):
    got = engine.fit_source("popularity", cfg, len(local.catalog), split.train)
    want = Popularity(cfg).fit(local.catalog, expected.train)
    assert got.newest_ts == want.newest_ts and got.scores.dtype == np.float32
    if exact:  # sums of multiples of 0.25: no rounding anywhere
        assert np.array_equal(got.scores, want.scores)
    else:
        np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6, atol=1e-6)


def _check_item_cf(engine, local, split, expected, cfg):
    got = engine.fit_source("item_cf", cfg, len(local.catalog), split.train).similarity
    want = ItemCF(cfg).fit(local.catalog, expected.train).similarity
    assert want.nnz > 0 and got.dtype == want.dtype == np.float32
    assert np.array_equal(got.indptr, want.indptr), cfg  # the same neighbours per row ...
    assert np.array_equal(got.indices, want.indices), cfg
    np.testing.assert_allclose(got.data, want.data, rtol=0, atol=1e-6)  # ... with the same weights
    if cfg.similarity != "transition":  # one division of exact counts: bit for bit
        assert np.array_equal(got.data, want.data)
    if cfg.n_neighbours < 200:  # the cut to the top k was exercised
        assert np.diff(want.indptr).max() == cfg.n_neighbours


def test_leave_last_out_split_popularity_and_item_cf_match(both):
    local, remote, engine = both
    split, expected = _check_split(engine, local, remote, "leave-last-out")
    _check_popularity(engine, local, split, expected, PopularityConfig(), exact=True)
    _check_item_cf(engine, local, split, expected, ItemCFConfig())
    _check_item_cf(engine, local, split, expected, ItemCFConfig(similarity="cosine", n_neighbours=5))


@pytest.mark.slow
def test_temporal_split_and_source_variants_match(both):
    local, remote, engine = both
    split, expected = _check_split(engine, local, remote, "temporal")
    _check_popularity(engine, local, split, expected, PopularityConfig(half_life_days=7.0, window_days=60.0),
                      exact=False)
    _check_item_cf(engine, local, split, expected, ItemCFConfig(similarity="jaccard", n_neighbours=5))
    _check_item_cf(engine, local, split, expected,
                   ItemCFConfig(pop_exponent=0.5, row_normalise=True, n_neighbours=7, half_life_days=30.0))


def test_sources_are_fitted_only_on_known_events(both):
    local, _, engine = both
    with pytest.raises(ValueError, match="only on the interactions it cleaned or split"):
        engine.fit_source("popularity", PopularityConfig(), len(local.catalog), local.interactions)


def test_build_command_says_what_is_missing_without_java(tmp_path):
    """No Java on the PATH and no JAVA_HOME: one line, exit 2, nothing started."""
    env = {k: v for k, v in os.environ.items() if k != "JAVA_HOME"}
    env["PATH"] = os.path.dirname(sys.executable)
    proc = subprocess.run([sys.executable, "-m", "tandem.server.cli", "build", "--data", str(tmp_path),
                           "--out", str(tmp_path / "b"), "--engine", "spark"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["tandem build: error: the spark engine needs Java 17 or newer: install a JDK "
                     "(e.g. openjdk-17-jre) or set JAVA_HOME"]


@pytest.mark.slow
def test_build_with_the_spark_engine_writes_the_same_cleaning_and_item_cf(spark, tiny_shop, tmp_path):
    """A whole `tandem build` (split none: fitted on a leave-last-out split, then refitted on every
    event) with the Spark engine: the manifest names the engine, and the bundle's cleaning report
    and item-CF neighbours are the local engine's."""
    from tandem.index_builder.build import build
    from tandem.index_builder.config import load_config
    from tandem.index_builder.spark_engine import SparkEngine
    from tests.conftest import TINY_CONFIG

    config = load_config(overrides=TINY_CONFIG, environ={})
    result = build(tiny_shop, tmp_path, config, engine=SparkEngine(spark=spark))
    manifest = json.loads((result.folder / "manifest.json").read_text())
    assert manifest["engine"]["name"] == "spark" and manifest["engine"]["master"] == "local[2]"
    local = load_dataset(tiny_shop, config.cleaning)
    got = manifest["cleaning"]
    want = local.report.to_dict()
    for key in ("events_read", "events_kept", "events_dropped", "items_kept", "users", "bot_users", "read"):
        assert got[key] == want[key], key
    refit = ItemCF(config.item_cf).fit(local.catalog, local.interactions).similarity
    served = result.pipeline.sources["item_cf"].similarity
    assert np.array_equal(served.indptr, refit.indptr) and np.array_equal(served.indices, refit.indices)
    np.testing.assert_allclose(served.data, refit.data, atol=1e-6)


def test_a_folder_without_events_is_a_search_only_shop_on_both_engines(spark, shop, tmp_path):
    from tandem.index_builder.spark_engine import SparkEngine

    data, _ = shop
    (tmp_path / "items.jsonl.gz").write_bytes((data / "items.jsonl.gz").read_bytes())
    local = load_dataset(tmp_path, CONFIG)
    remote = SparkEngine(spark=spark).load_dataset(tmp_path, CONFIG)
    assert len(remote.interactions) == 0 and remote.interactions.user_ids == []
    assert local.report.to_dict() == remote.report.to_dict()
    assert local.catalog.item_ids == remote.catalog.item_ids


def test_the_session_lets_the_driver_collect_more_than_a_gib(spark):
    """Item-CF's neighbour table is collected to the driver; on the 10M-event shop it was 1,035 MiB,
    over Spark's default ``spark.driver.maxResultSize`` of 1 GiB, and the build failed."""
    assert spark.conf.get("spark.driver.maxResultSize") == "0"


def test_top_k_ranks_on_float32_weights_as_the_local_engine(spark):
    """Two weights equal as float32 but not as float64 (sums in another order do that): both engines
    keep the lower column, as the local ``_top_k_rows`` ranks on float32. Spark ranked on float64
    and kept the higher column."""
    import scipy.sparse as sp

    from tandem.index_builder.spark_sources import _neighbour_csr, _top_k
    from tandem.retrieval.item_cf import _top_k_rows

    rows = [(0, 1, 0.5), (0, 3, 0.5 + 1e-12), (0, 2, 0.25),
            (1, 0, 1.0), (1, 2, 1.0 + 1e-13), (1, 3, 0.125),
            (2, 0, 0.75), (2, 1, 0.875), (2, 3, 0.75 + 1e-14)]
    src, dst, v = (list(c) for c in zip(*rows, strict=True))
    for k in (1, 2):
        want = _top_k_rows(sp.csr_matrix((v, (src, dst)), shape=(4, 4)), k).astype(np.float32)
        got = _neighbour_csr(_top_k(spark.createDataFrame(rows, "src int, dst int, v double"), k), 4)
        assert got.indptr.tolist() == want.indptr.tolist()
        assert got.indices.tolist() == want.indices.tolist(), k
        assert np.array_equal(got.data, want.data)
    assert want.indices.tolist() == [1, 3, 0, 2, 0, 1]  # k = 2: row 2 keeps 0.875 and the lower 0.75
