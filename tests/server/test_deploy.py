"""The container and monitoring files (Dockerfile, compose.yaml, server/deploy/): their structure,
the build script's install step, the dashboard against the metrics the server defines, and the
alert rules under promtool. The files run for real in tests/e2e/test_deploy_stack.py."""

import json
import os
import re
import shutil
import subprocess

import pytest
from prometheus_client.metrics import MetricWrapperBase

from tandem.server.metrics import ServiceMetrics
from tests.conftest import ROOT

DEPLOY = ROOT / "server" / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "tandem.json"
# what Grafana puts in for its variables when the tests run a panel's query themselves
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "5m", "$instance": ".*"}


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(panel title, refId, PromQL with the variables substituted) of every panel target."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((panel["title"], target["refId"], expr))
    return out


def exported_series() -> set[str]:
    """Every series name ServiceMetrics exports (histograms as _bucket/_sum/_count)."""
    names = set()
    for metric in vars(ServiceMetrics()).values():
        if isinstance(metric, MetricWrapperBase):
            name = metric._name
            names |= {"counter": {f"{name}_total"}, "gauge": {name}, "info": {f"{name}_info"},
                      "histogram": {f"{name}_bucket", f"{name}_sum", f"{name}_count"}}[metric._type]
    return names


def referenced_series(expr: str) -> set[str]:
    return set(re.findall(r"\btandem_[a-z0-9_]+", expr))


def test_dockerfile_runs_the_deploy_scripts_as_a_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in re.sub(r"\\\n", " ", text).splitlines() if ln.strip() and not ln.startswith("#")]
    instr = [(ln.split()[0], ln.split(None, 1)[1]) for ln in lines]
    assert instr[0][0] == "FROM" and "python:3.11" in instr[0][1]
    runs = [arg for op, arg in instr if op == "RUN"]
    assert runs[0] == "server/deploy/build.sh all"  # the image's build steps are the tested script
    for op, arg in instr:
        if op == "COPY":
            *sources, _dest = arg.split()
            assert all((ROOT / s).exists() for s in sources), arg
    users = [arg for op, arg in instr if op == "USER"]
    assert users == ["tandem"]
    last_user = max(i for i, (op, _) in enumerate(instr) if op == "USER")
    assert all(op != "RUN" for op, _ in instr[last_user:])  # nothing runs as root after the switch
    assert "useradd --system --uid 10001" in runs[1]
    env = " ".join(arg for op, arg in instr if op == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "TRANSFORMERS_OFFLINE=1" in env  # no model hub
    entry = json.loads(dict(instr)["ENTRYPOINT"])
    health = dict(instr)["HEALTHCHECK"]
    assert entry == ["/app/server/deploy/entrypoint.sh"]
    assert health.endswith('CMD ["python", "/app/server/deploy/healthcheck.py"]')
    for script in ("build.sh", "entrypoint.sh"):
        assert os.access(DEPLOY / script, os.X_OK), f"{script} must be executable (the image runs it directly)"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored


def test_build_script_installs_cpu_torch_pinned_like_the_makefile():
    pin = re.search(r"^TORCH_PIN \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_PIN", "TORCH_INDEX", "SRC")}
    done = subprocess.run(["sh", str(DEPLOY / "build.sh"), "install"], env={**env, "PIP": "echo pip"},
                          capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [
        f"pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu {pin}",
        f"pip install --no-cache-dir {ROOT}",
    ]
    bad = subprocess.run(["sh", str(DEPLOY / "build.sh"), "deploy"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_compose_wires_the_shipped_files_and_services():
    compose = (ROOT / "compose.yaml").read_text()
    services = set(re.findall(r"^  ([a-z]+):$", compose, re.M))
    assert {"tandem", "prometheus", "grafana"} <= services
    mounts = re.findall(r"- \./(\S+?):", compose)
    assert len(mounts) == 3 and all((ROOT / m).exists() for m in mounts), mounts
    assert "build: ." in compose
    # published on loopback only
    assert re.findall(r'"(\S+):\d+:\d+"', compose) == ["127.0.0.1"] * 3
    prom = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    host, port = re.search(r'targets: \["([a-z]+):(\d+)"\]', prom).groups()
    entrypoint = (DEPLOY / "entrypoint.sh").read_text()
    assert host in services and f"METRICS_PORT:-{port}" in entrypoint
    assert re.search(r"rule_files:\n  - alerts.yml\n", prom)
    datasource = (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text()
    assert re.search(r"url: http://([a-z]+):9090", datasource).group(1) in services
    home = re.search(r"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH: (\S+)", compose).group(1)
    provider = (DEPLOY / "grafana" / "provisioning" / "dashboards" / "tandem.yaml").read_text()
    assert home == re.search(r"path: (\S+)", provider).group(1) + "/tandem.json"


def test_dashboard_panels_query_exported_metrics_through_the_provisioned_datasource():
    dash = json.loads(DASHBOARD.read_text())
    uid = re.search(r"uid: (\S+)", (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml")
                    .read_text()).group(1)
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    exported = exported_series()
    variables = {f"${v['name']}" for v in dash["templating"]["list"]}
    covered = set()
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
        assert p["targets"] and p["description"], p["title"]
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])
        for t in p["targets"]:
            assert t["datasource"]["uid"] == uid and t["expr"].strip(), (p["title"], t)
            used = set(re.findall(r"\$[a-z_]+", t["expr"]))
            assert used <= variables | set(GRAFANA_VARIABLES), (p["title"], used)
            names = referenced_series(t["expr"])
            assert names and names <= exported, (p["title"], names - exported)
            covered |= names
    for v in dash["templating"]["list"]:
        assert v["datasource"]["uid"] == uid and referenced_series(v["definition"]) <= exported
    # the panels: requests and errors per RPC, latency, per-stage time, candidates per
    # source, events ingested and lag, bundle version and swaps, compute-slot waits, experiment arms
    for needed in ("tandem_rpc_responses_total", "tandem_rpc_latency_seconds_bucket", "tandem_stage_seconds_bucket",
                   "tandem_retrieval_candidates_sum", "tandem_events_ingested_total",
                   "tandem_event_visible_lag_seconds_bucket", "tandem_bundle_info", "tandem_bundle_swaps_total",
                   "tandem_compute_slot_wait_seconds_bucket", "tandem_experiment_exposures_total",
                   "tandem_experiment_conversions_total", "tandem_experiment_revenue_total"):
        assert needed in covered, needed
    exprs = " ".join(e for _, _, e in dashboard_queries())
    assert "histogram_quantile(0.5, sum by (rpc, le)" in exprs and "histogram_quantile(0.99, sum by (rpc, le)" in exprs
    # panels of a row do not overlap on Grafana's 24-column grid
    cells = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & mine, p["title"]
        cells |= mine


def test_alert_rules_query_exported_metrics():
    rules = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    names = referenced_series(rules)
    assert len(re.findall(r"- alert: ", rules)) == 6
    assert names and names <= exported_series(), names - exported_series()


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not found: it comes with the Debian package `prometheus` (make test installs it)")
def test_promtool_checks_the_config_and_every_alert_fires_in_its_unit_test():
    prom = DEPLOY / "prometheus"
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"],
                 ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=prom, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
    tested = set(re.findall(r"alertname: (\w+)", (prom / "alerts_test.yml").read_text()))
    assert tested == set(re.findall(r"- alert: (\w+)", (prom / "alerts.yml").read_text()))
