"""`make demo` end to end (`python -m tandem.server.demo`) on a tiny shop with tiny models: every step
runs, the server is waited for, and the key lines reach the terminal."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

# tests.conftest.TINY_CONFIG as the TOML file `tandem build --config` reads
TINY_TOML = """\
[build.two_tower]
dim = 16
layers = 1
max_len = 10
epochs = 3
n_negatives = 64

[build.ranker]
epochs = 3
hidden = [16]

[build.pipeline]
per_source_k = 50
fused_k = 60
"""


@pytest.mark.timeout(1000)  # about 2 minutes alone; a crowded 2-core machine is many times slower
def test_the_demo_runs_end_to_end_on_a_small_shop(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    out = tmp_path / "demo"
    proc = subprocess.Popen([sys.executable, "-m", "tandem.server.demo", "--out", str(out), "--items", "300",
                             "--users", "200", "--queries", "40", "--config", str(config)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:  # SIGTERM: the demo stops its step and the server
            proc.terminate()
            proc.communicate(timeout=60)
    shown = stdout + stderr
    assert proc.returncode == 0, shown[-6000:]
    for step in ("generate", "clean", "popularity baseline", "build", "serve", "search", "recommend", "record",
                 "recommend again"):
        assert f"\n== {step}\n$ " in stdout, step
    assert "--config " + str(config) in stdout  # the build got the config
    assert "stage two_tower done" in stderr  # the build's own log is shown
    assert "  server | " in stdout and "the server reports SERVING after" in stdout
    assert "\nsearch '" in stdout and "\nrecommend for u" in stdout
    assert "the purchase changed the next recommendation" in stdout
    assert "demo finished in" in stdout
    assert "Traceback" not in shown
    assert (out / "bundles" / "CURRENT").is_file() and (out / "cleaning_report.json").is_file()
    assert "tandem serving" in (out / "server.log").read_text()


@pytest.mark.timeout(1000)
def test_the_search_only_demo_runs_end_to_end(tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "tandem.server.demo", "--out", str(out), "--items", "300",
                           "--users", "50", "--queries", "40", "--config", str(config), "--search-only"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    stdout, stderr = proc.stdout, proc.stderr
    assert proc.returncode == 0, (stdout + stderr)[-6000:]
    assert not (out / "shop" / "events.jsonl.gz").exists()
    for step in ("generate", "clean", "build", "serve", "search", "get-item", "similar", "recommend (refused)",
                 "record", "recommend from history"):
        assert f"\n== {step}\n$ " in stdout, step
    assert "\n== popularity baseline\n" not in stdout  # it needs events
    assert "source two_tower skipped" in stderr and "skipped popularity, item_cf, two_tower:" in stdout
    assert "is refused, as documented:\n  FAILED_PRECONDITION: search-only bundle" in stdout
    assert "(text similarity to the history):\n  i" in stdout
    assert "demo finished in" in stdout and "Traceback" not in stdout + stderr
