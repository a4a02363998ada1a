"""The serving-latency benchmark's --json feeds `tandem report --latency`: a short real run of
benchmarks/serve_latency.py against `tandem serve` on the tiny bundle, then the report of it."""

import os
import subprocess
import sys

import pytest

from tandem.index_builder.report_inputs import read_latency
from tandem.server.cli import main
from tests.conftest import ROOT
from tests.index_builder.test_report import check_page

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def test_serve_latency_json_is_what_the_report_reads(tiny_bundles, tiny_shop, tmp_path):
    bench = tmp_path / "latency.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "serve_latency.py"), "--bundles", str(tiny_bundles), "--data",
         str(tiny_shop), "--seconds", "0.5", "--warmup", "0.1", "--concurrency", "1,2", "--work", str(tmp_path),
         "--json", str(bench)],
        cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert f"measurements written to {bench}" in run.stdout
    data = read_latency(bench)  # the report's own checks
    assert data["bundle"] == (tiny_bundles / "CURRENT").read_text().strip()
    got = {(r["rpc"], r["concurrency"]) for r in data["results"]}
    assert got == {(rpc, c) for rpc in ("Ping (echo floor)", "bare FAISS search", "Recommend", "Search")
                   for c in (1, 2)}
    for r in data["results"]:
        assert r["errors"] == 0 and sum(r["histogram"]["counts"]) == r["n"] > 0 and r["p50"] <= r["p99"], r["rpc"]
    out = tmp_path / "report"
    assert main(["report", "--bundle", str(tiny_bundles), "--latency", str(bench), "--users", "20",
                 "--out", str(out)]) == 0
    page = check_page(out, {"overlap", "coverage", "training", "latency"})
    latency = page[page.index('<section id="latency">'):]
    for rpc in ("Ping (echo floor)", "bare FAISS search", "Recommend", "Search"):
        assert f"<td>{rpc}</td>" in latency, rpc
