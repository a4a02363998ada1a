"""A real ``redis-server`` for the event bus tests: its own process on a free loopback port, its
data in a temporary folder, AOF on with ``appendfsync always`` (what docs/operations.md asks of a
fleet's Redis). No fakeredis, no mock: where redis-server is missing the tests skip, saying why
(``make redis`` installs the Debian package)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import free_port

__all__ = ["RedisServer", "redis_server"]


class RedisServer:
    """``start()``, ``kill9()`` (SIGKILL: no shutdown, no final fsync), ``start()`` again on the
    same port and folder, ``stop()``."""

    def __init__(self, folder: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            pytest.skip("redis-server is not installed (the Debian package redis-server; `make redis` installs it)")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> RedisServer:
        import redis

        log = open(self.folder / "redis.log", "a")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():  # answers only once the AOF is loaded
                        return self
                except redis.exceptions.RedisError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start: see {self.folder / 'redis.log'}")
                time.sleep(0.05)
        finally:
            client.close()

    def client(self):
        import redis

        return redis.Redis(port=self.port, socket_timeout=5)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
