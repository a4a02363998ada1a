"""End to end, issue #14.1: `tandem build --events-log` applies the log's live catalog changes
(upserts override catalog rows, deletes remove items) up to the position it records, and a server
loading that bundle replays only the later changes."""

import shutil

import pytest

from tandem.ranking.live_catalog import CatalogChange
from tandem.retrieval.data import Event, Item
from tests.conftest import TINY_CONFIG

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_build_from_the_log_includes_upserts_and_deletes(tiny_bundles, tiny_shop, tmp_path):
    from tandem.index_builder.config import load_config
    from tandem.index_builder.tune import to_toml
    from tandem.ranking.loader import load_engine
    from tandem.retrieval.bundle import current_bundle, read_manifest, set_current
    from tandem.retrieval.catalog_io import load_catalog
    from tandem.server.bundle_manager import BundleManager
    from tandem.server.cli import main
    from tandem.server.event_log import EventLog
    from tandem.server.live_catalog import catalog_rows

    first = current_bundle(tiny_bundles)
    root = tmp_path / "bundles"
    shutil.copytree(first, root / first.name)
    set_current(root, first.name)
    old = load_catalog(first / "catalog")
    victim, changed = old.item_ids[3], old.item(4)
    new = Item("build-new-1", "Heliotrope moonstone face mist", "a cooling mist", "Beauty > Skin", "Heliotrope",
               21.0, ("mist",), True)
    repriced = Item(changed.item_id, changed.title, changed.description, changed.category, changed.brand, 55.5,
                    changed.tags, False)
    path = root / "events.sqlite3"
    log = EventLog(path)
    log.append([Event("build-user", old.item_ids[0], 1_700_000_000)])
    log.append_catalog(catalog_rows([CatalogChange.upsert(new), CatalogChange.delete(victim),
                                     CatalogChange.upsert(repriced)]))
    log.append([Event("build-user", new.item_id, 1_700_000_100)])
    assert log.position() == 5
    log.close()

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(to_toml(load_config(overrides=TINY_CONFIG, environ={})))
    staging = tmp_path / "staging"
    assert main(["build", "--data", str(tiny_shop), "--out", str(staging), "--config", str(cfg),
                 "--events-log", str(path)]) == 0
    built = current_bundle(staging)
    assert read_manifest(built)["event_log"]["seq"] == 5
    catalog = load_catalog(built / "catalog")
    assert new.item_id in catalog.index and victim not in catalog.index
    row = catalog.item(catalog.index[changed.item_id])
    assert (row.price, row.in_stock) == (55.5, False)
    assert catalog.item(catalog.index[new.item_id]).title == new.title

    # served with the log: nothing before seq 5 is applied again; a later delete is replayed
    log = EventLog(path)
    log.append_catalog(catalog_rows([CatalogChange.delete(new.item_id)]))
    shutil.copytree(built, root / built.name)
    manager = BundleManager(root, load_engine, log)
    try:
        swapped, error = manager.reload(built.name)
        assert swapped and error == ""
        engine = manager.engine
        assert engine.n_items == len(catalog)  # no row added by a replayed upsert
        assert new.item_id not in engine.catalog.index and victim not in engine.catalog.index
        assert engine.get_item(changed.item_id).price == 55.5
    finally:
        log.close()
