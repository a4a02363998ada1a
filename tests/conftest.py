"""A tiny real bundle (synthetic shop, small models) shared by the end-to-end tests."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_shop(tmp_path_factory):
    from tandem.index_builder.synthetic import SyntheticConfig, generate

    out = tmp_path_factory.mktemp("shop")
    generate(out, SyntheticConfig(items=300, users=200, seed=5, queries=40, events_per_user=15))
    return out


TINY_CONFIG = {"two_tower": {"dim": 16, "layers": 1, "max_len": 10, "epochs": 3, "n_negatives": 64},
               "ranker": {"epochs": 3, "hidden": [16]}, "pipeline": {"per_source_k": 50, "fused_k": 60}}


@pytest.fixture(scope="session")
def tiny_bundles(tiny_shop, tmp_path_factory):
    """A bundle root with one bundle built from the tiny shop (split none, like production)."""
    from tandem.index_builder.build import build
    from tandem.index_builder.config import load_config

    root = tmp_path_factory.mktemp("bundles")
    build(tiny_shop, root, load_config(overrides=TINY_CONFIG, environ={}))
    return root


def stop_process(proc: subprocess.Popen, log=None) -> int | None:
    """Stop a server process started by a test: SIGTERM, up to 30 s for it to exit, then SIGKILL;
    closes its log file. Returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if log is not None:
        log.close()
    return proc.returncode


class Server:
    """One `tandem serve` subprocess on a free loopback port; its output goes to ``log`` (appended,
    so a restart on the same log keeps both runs), by default ``BUNDLES/server-PORT.log``."""

    #: what runs after the interpreter: the product CLI's serve command
    COMMAND: tuple[str, ...] = ("-m", "tandem.server.cli", "serve")

    def __init__(self, bundles: Path, *extra: str, log: Path | None = None) -> None:
        self.port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.log = open(log or bundles / f"server-{self.port}.log", "a")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, *self.COMMAND, "--bundles", str(bundles),
                                      "--port", str(self.port), *extra], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.addr) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, f"server exited with {self.proc.returncode}: see {self.log.name}"
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return
                except grpc.RpcError:
                    time.sleep(0.1)
        raise TimeoutError(f"server at {self.addr} not SERVING within {timeout}s")

    def stop(self) -> None:
        stop_process(self.proc, self.log)
