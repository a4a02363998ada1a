"""The manifest is verified like every other file of a bundle, and the version the server reports
(GetStatus, ReloadBundle, responses, metrics, logs) is the name of the folder it serves."""

import json
import logging

import grpc
import pytest
from prometheus_client import generate_latest

from tandem.retrieval.bundle import set_current
from tandem.server._generated import tandem_pb2 as pb
from tandem.server._generated import tandem_pb2_grpc as pb_grpc
from tandem.server.bundle_manager import BundleManager
from tandem.server.service import ServerConfig, TandemServer
from tests.server.fake_engine import load_fake_engine, write_fake_bundle


@pytest.fixture
def serve():
    started = []

    def start(root, loader=load_fake_engine):
        server = TandemServer(ServerConfig(bundles=root, port=0, watch_interval_s=60, grace_s=1, workers=4),
                              loader)
        port = server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        started.append((server, channel))
        return server, pb_grpc.TandemStub(channel), pb_grpc.TandemAdminStub(channel)

    yield start
    for server, channel in started:
        channel.close()
        server.stop(0)


def edit_manifest(folder, **changes):
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")


def reported(server, t, admin):
    """Every place the server names the serving bundle."""
    metrics = generate_latest(server.metrics.registry).decode()
    info = next(line for line in metrics.splitlines() if line.startswith("tandem_bundle_info"))
    return {"status": admin.GetStatus(pb.GetStatusRequest()).bundle_version,
            "search": t.Search(pb.SearchRequest(query="red", k=1)).bundle_version,
            "metrics": info.split('version="')[1].split('"')[0],
            "manager": server.manager.folder.name}


def test_an_edited_manifest_is_refused_on_reload_and_at_start(tmp_path, serve, caplog):
    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v1")
    server, t, admin = serve(root)
    v2 = write_fake_bundle(root, version="v2", make_current=False)
    edit_manifest(v2, version="v2-hotfix")  # before: accepted, and served as "v2-hotfix"
    with caplog.at_level(logging.ERROR, logger="tandem.server.bundles"):
        r = admin.ReloadBundle(pb.ReloadBundleRequest(version="v2"))
    assert not r.swapped and r.version == "v1"
    assert "v2/manifest.json does not match its digest" in r.error and "manifest.sha256" in r.error
    assert "v2/manifest.json does not match its digest" in caplog.text
    assert admin.GetStatus(pb.GetStatusRequest()).last_reload_error == r.error
    assert set(reported(server, t, admin).values()) == {"v1"}
    set_current(root, "v2")  # the same through CURRENT (the watcher's path)
    assert server.manager.reload() == (False, r.error)
    assert server.metrics.refused._value.get() == 2

    # a server starting on it refuses to start, naming the file
    other = TandemServer(ServerConfig(bundles=root, port=0, event_log=tmp_path / "ev2.sqlite3"), load_fake_engine)
    with pytest.raises(RuntimeError, match=r"no usable bundle .*v2/manifest.json does not match its digest"):
        other.start()


def test_the_reported_version_is_the_folder_served(tmp_path, serve):
    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v1")
    server, t, admin = serve(root)
    assert set(reported(server, t, admin).values()) == {"v1"}
    write_fake_bundle(root, version="v2", make_current=False)
    r = admin.ReloadBundle(pb.ReloadBundleRequest(version="v2"))
    assert r.swapped and r.version == "v2"
    assert set(reported(server, t, admin).values()) == {"v2"}


def test_an_engine_naming_another_version_is_refused(tmp_path):
    # a custom --engine-loader must report the folder it loaded; anything else would make the
    # server name a bundle it does not serve
    root = tmp_path / "bundles"
    write_fake_bundle(root, version="v1")

    def misnaming_loader(folder):
        engine = load_fake_engine(folder)
        engine.version = "v7"
        return engine

    manager = BundleManager(root, misnaming_loader, None)
    swapped, error = manager.reload()
    assert not swapped and manager.engine is None
    assert "the engine loader reported version 'v7' for the bundle folder v1" in error
