"""In-process servers over the FakeEngine: each test gets a fresh bundle root, event log and port."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from server._generated import tandem_pb2_grpc as pb_grpc
from server.service import ServerConfig, TandemServer
from tests.server.fake_engine import load_fake_engine, write_fake_bundle

TOKEN = "s3cret"
AUTH = (("authorization", f"Bearer {TOKEN}"),)


@dataclass
class Running:
    server: TandemServer
    addr: str
    channel: grpc.Channel
    tandem: pb_grpc.TandemStub
    admin: pb_grpc.TandemAdminStub
    root: Path


@pytest.fixture
def bundle_root(tmp_path) -> Path:
    root = tmp_path / "bundles"
    write_fake_bundle(root)
    return root


@pytest.fixture
def start_server(tmp_path) -> Iterator:
    """``start_server(root, **config)`` -> :class:`Running`; every server is stopped afterwards."""
    running: list[Running] = []

    def start(root: Path, loader=load_fake_engine, **config) -> Running:
        config = {"port": 0, "watch_interval_s": 0.1, "grace_s": 2.0, "workers": 8,
                  "event_log": tmp_path / "events.sqlite3", **config}
        server = TandemServer(ServerConfig(bundles=root, **config), loader)
        port = server.start()
        addr = f"127.0.0.1:{port}"
        channel = grpc.insecure_channel(addr)
        r = Running(server, addr, channel, pb_grpc.TandemStub(channel), pb_grpc.TandemAdminStub(channel), root)
        running.append(r)
        return r

    yield start
    for r in running:
        r.channel.close()
        r.server.stop(grace_s=0)


@pytest.fixture
def served(bundle_root, start_server) -> Running:
    """A server over the fake bundle, with the bearer token ``TOKEN``."""
    return start_server(bundle_root, token=TOKEN)
