"""tandem report: its inputs, its list statistics against brute-force oracles, and the page as a
real headless Chromium renders it."""

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tandem.index_builder.list_stats import list_statistics, popularity_percentiles
from tandem.index_builder.report import REPORT_FILE, SECTIONS
from tandem.index_builder.report_inputs import LATENCY_EDGES_MS, LATENCY_FORMAT, latency_record
from tandem.server.cli import main

SHOT_SIZE = (1200, 3000)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, png: Path, size: tuple[int, int] = SHOT_SIZE) -> subprocess.CompletedProcess:
    """Render ``page`` in headless Chromium (a fresh profile, nothing fetched from the network)
    and save a ``size`` screenshot to ``png``. The same command is in docs/operations.md."""
    with tempfile.TemporaryDirectory(prefix="tandem-chromium-") as profile:
        return subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--screenshot={png}", f"--window-size={size[0]},{size[1]}",
             page.resolve().as_uri()],
            capture_output=True, text=True, timeout=180)


# -- inputs ------------------------------------------------------------------------------------

def test_popularity_percentiles_match_a_brute_force_oracle():
    x = np.random.default_rng(0).integers(0, 6, 40).astype(np.float64)  # many ties
    got = popularity_percentiles(x)
    n = x.size
    oracle = [((x < v).sum() + ((x == v).sum() - 1) / 2) / (n - 1) * 100 for v in x]
    np.testing.assert_allclose(got, oracle)
    assert got[x.argmin()] == got.min() and got.max() <= 100 and got.min() >= 0


def test_latency_record_summarises_the_samples():
    samples = np.random.default_rng(1).lognormal(0.5, 0.6, 5000)
    r = latency_record("Recommend", 4, samples, wall_s=2.0, errors=3)
    assert r["p50"] == pytest.approx(np.percentile(samples, 50)) and r["p99"] == pytest.approx(np.percentile(samples, 99))
    assert r["n"] == 5000 and r["rps"] == 2500 and r["errors"] == 3
    counts = np.asarray(r["histogram"]["counts"])
    assert counts.sum() == 5000 and len(r["histogram"]["edges_ms"]) == len(counts) + 1 == len(LATENCY_EDGES_MS)
    below = counts[: np.searchsorted(LATENCY_EDGES_MS, 1.0)].sum()  # bins entirely under 1 ms
    assert below == (samples < 1.0).sum()
    with pytest.raises(ValueError, match="no request was answered"):
        latency_record("Search", 1, [], 1.0)


@pytest.mark.parametrize(("option", "content", "message"), [
    ("--eval", None, "no such file"),
    ("--eval", "{not json", "not valid JSON"),
    ("--eval", '{"protocol": {}}', "no 'metrics' object"),
    ("--eval", '{"metrics": {"final": {"ndcg@10": "high"}}}', "metrics.final must map metric names to numbers"),
    ("--eval", '{"metrics": {"search": {"final": {"ndcg@10": "high"}}}}', "metrics.search must map stages to"),
    ("--latency", '{"results": []}', "no 'results' list"),
    ("--latency", '{"results": [{"rpc": "Recommend", "concurrency": 1, "p50": 1, "p99": 2}]}',
     "results[0]: missing 'histogram'"),
    ("--latency", '{"results": [{"rpc": "R", "concurrency": 1, "p50": 1, "p99": 2, '
                  '"histogram": {"edges_ms": [1, 2], "counts": [1, 2]}}]}', "one more entry than 'counts'"),
    ("--latency", json.dumps({"format": LATENCY_FORMAT + 1, "results": [{}]}), "is newer than"),
])
def test_a_broken_input_exits_2_with_one_line_naming_the_file(tmp_path, capsys, option, content, message):
    path = tmp_path / "input.json"
    if content is not None:
        path.write_text(content)
    # the inputs are read before the bundle is looked at, so a missing bundle is not what fails here
    assert main(["report", "--bundle", str(tmp_path / "no-bundle"), option, str(path), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tandem report: error: {option} {path}") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_missing_bundle_exits_2_naming_it(tmp_path, capsys):
    assert main(["report", "--bundle", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(tmp_path / "nowhere") in err[0] and "tandem build" in err[0]


def test_report_help_names_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["report", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for option in ("--bundle", "--eval", "--data", "--latency", "--out", "--users", "--k", "--seed"):
        assert option in out


# -- on the tiny bundle --------------------------------------------------------------------------

@pytest.mark.slow
def test_list_statistics_match_brute_force_oracles(tiny_bundles):
    from tandem.ranking.loader import load_engine

    p = load_engine(tiny_bundles)
    k = 10
    stats = list_statistics(p, users=100_000, k=k)  # more than there are: every user with a history
    users = [u for u in p.histories.user_ids if len(p.histories.get(u))]
    assert stats["users"] == len(users) > 100
    reqs = [p.user_request(u)[0] for u in users]
    final = p.rank_requests(reqs, k)
    fused = p.rank_requests(reqs, k, use_ranker=False)
    for name, rows in (("final", final), ("fused", fused)):
        items = rows[rows >= 0]
        assert stats["coverage"][name]["items"] == np.unique(items).size, name
        assert stats["coverage"][name]["share"] == pytest.approx(np.unique(items).size / p.n_items)
        pct = popularity_percentiles(p.table.log_pop.astype(np.float64))
        assert stats["popularity"]["mean_percentile"][name] == pytest.approx(pct[items].mean()), name
    history = np.concatenate([r.history for r in reqs])
    assert stats["popularity"]["reference_mean_percentile"] == pytest.approx(pct[history].mean())
    assert stats["popularity"]["reference_events"] == history.size
    # overlap from each source's raw candidate lists, with Python sets
    names = stats["sources"]
    assert set(names) == {"two_tower", "item_cf", "text", "popularity"}
    lists = []
    for r in reqs:
        cands, _ = p.retrieve(r, "recommend")
        seen = set(r.history.tolist())
        lists.append({c.source: set(c.items.tolist()) - seen for c in cands})
    jac = np.asarray(stats["overlap"]["jaccard"])
    assert np.allclose(jac, jac.T) and np.allclose(np.diag(jac), 1)
    for a, b in (("two_tower", "item_cf"), ("text", "popularity")):
        vals = [len(x[a] & x[b]) / len(x[a] | x[b]) for x in lists if x.get(a, set()) | x.get(b, set())]
        assert jac[names.index(a), names.index(b)] == pytest.approx(np.mean(vals)), (a, b)
    for name in names:
        got = [i in lists[u].get(name, set()) for u in range(len(reqs)) for i in final[u][final[u] >= 0]]
        assert stats["overlap"]["final_from"][name] == pytest.approx(np.mean(got)), name
        unique = [len(x[name] - set().union(*(x[o] for o in names if o != name))) / len(x[name])
                  for x in lists if x.get(name)]
        assert stats["overlap"]["unique_share"][name] == pytest.approx(np.mean(unique)), name


@pytest.mark.slow
def test_the_sample_is_seeded_and_bounded(tiny_bundles):
    from tandem.ranking.loader import load_engine

    p = load_engine(tiny_bundles)
    a, b = list_statistics(p, users=30, k=5, seed=7), list_statistics(p, users=30, k=5, seed=7)
    assert a == b and a["users"] == 30 and a["coverage"]["final"]["slots"] <= 150
    assert list_statistics(p, users=30, k=5, seed=8)["popularity"] != a["popularity"]


def _measured_latency(tiny_bundles, path: Path) -> None:
    """A latency JSON in the benchmark's format, from real in-process Recommend and Search calls
    (tests/e2e/test_report_latency.py feeds the report from the benchmark itself)."""
    from tandem.ranking.api import RecommendRequest, SearchRequest
    from tandem.ranking.loader import load_engine

    p = load_engine(tiny_bundles)
    users = p.histories.user_ids[:50]
    results = []
    for rpc, call in (("Recommend", lambda i: p.recommend(RecommendRequest(user_id=users[i % 50], k=10))),
                      ("Search", lambda i: p.search(SearchRequest(query=["blue", "gift", "set"][i % 3], k=10)))):
        samples, t0 = [], time.perf_counter()
        for i in range(60):
            s = time.perf_counter()
            call(i)
            samples.append((time.perf_counter() - s) * 1e3)
        results.append(latency_record(rpc, 1, samples, time.perf_counter() - t0))
    path.write_text(json.dumps({"format": LATENCY_FORMAT, "bundle": p.version, "results": results}))


def check_page(out: Path, expect_images: set[str]) -> str:
    """Every section is on the page, every image is an inline PNG data URI, the PNGs are beside it."""
    page = (out / REPORT_FILE).read_text()
    for sid, title in SECTIONS:
        assert f'<section id="{sid}"><h2>{title}</h2>' in page, sid
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) == len(expect_images) and all(s.startswith("data:image/png;base64,") for s in srcs), \
        [s[:40] for s in srcs]
    assert {p.stem for p in out.glob("*.png")} >= expect_images
    for name in expect_images:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page  # nothing to fetch: self-contained
    return page


def check_screenshot(png: Path) -> None:
    """A real PNG of the window's size that shows more than a blank page: the figures' coloured
    pixels (bars, lines, heat map) must cover a good part of it."""
    from PIL import Image

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        assert im.size == SHOT_SIZE
        rgb = np.asarray(im.convert("RGB")).astype(np.int16)
    assert rgb.std() > 20
    coloured = (rgb.max(axis=2) - rgb.min(axis=2)) > 60
    assert coloured.mean() > 0.02, f"only {coloured.mean():.2%} coloured pixels: are the figures rendered?"


@pytest.mark.slow
def test_report_page_renders_in_headless_chromium(tiny_bundles, tiny_shop, tmp_path, capsys):
    # a real `tandem eval --json` (the popularity baseline: the tiny bundle was built with split none)
    evaluation = tmp_path / "eval.json"
    assert main(["eval", "--data", str(tiny_shop), "--k", "5,10,20,50", "--json", str(evaluation)]) == 0
    latency = tmp_path / "latency.json"
    _measured_latency(tiny_bundles, latency)
    out = tmp_path / "report"
    assert main(["report", "--bundle", str(tiny_bundles), "--eval", str(evaluation), "--data", str(tiny_shop),
                 "--latency", str(latency), "--users", "120", "--out", str(out)]) == 0
    assert str(out / REPORT_FILE) in capsys.readouterr().out
    page = check_page(out, {"quality", "overlap", "coverage", "training", "latency"})
    assert "two-tower (fit with validation)" in page and "recommend ranker" in page  # training curves found
    assert "purchases in" in page  # --data: popularity against the shop's purchases
    assert "stages fitted on the data alone" in page  # `tandem eval` without --bundle, and the page says so
    assert "Recommend" in page and "Search" in page
    if chromium() is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; `make test` installs it): "
                    "the page was checked, its rendering was not")
    shot = tmp_path / "report.png"
    run = screenshot(out / REPORT_FILE, shot)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    check_screenshot(shot)


@pytest.mark.slow
def test_report_without_optional_inputs_says_how_to_get_them(tiny_bundles, tmp_path):
    out = tmp_path / "plain"
    assert main(["report", "--bundle", str(tiny_bundles), "--users", "40", "--out", str(out)]) == 0
    page = check_page(out, {"overlap", "coverage", "training"})
    assert "built with split none" in page and "tandem eval --bundle B --data D --json eval.json" in page
    assert "benchmarks/serve_latency.py" in page
    assert "items in the sampled users&#x27; histories" in page
    # an evaluation of another bundle is shown, under a warning naming both
    # and so is a latency measurement of another bundle
    other = tmp_path / "other-eval.json"
    other.write_text(json.dumps({"bundle": "20200101T000000Z-abcd", "metrics": {"final": {"recall@10": 0.5}}}))
    latency = tmp_path / "latency.json"
    _measured_latency(tiny_bundles, latency)
    assert "not of" not in check_page(out, {"overlap", "coverage", "training"})
    measured = json.loads(latency.read_text())
    latency.write_text(json.dumps({**measured, "bundle": "20200202T000000Z-ef01"}))
    assert main(["report", "--bundle", str(tiny_bundles), "--eval", str(other), "--latency", str(latency),
                 "--users", "5", "--out", str(tmp_path / "warned")]) == 0
    page = check_page(tmp_path / "warned", {"quality", "overlap", "coverage", "training", "latency"})
    assert "this evaluation is of bundle 20200101T000000Z-abcd, not of" in page
    assert "this measurement is of bundle 20200202T000000Z-ef01, not of" in page


@pytest.mark.slow
def test_report_refuses_data_of_another_shop(tiny_bundles, tmp_path, capsys):
    from tandem.index_builder.synthetic import SyntheticConfig, generate

    other = tmp_path / "other"
    generate(other, SyntheticConfig(items=120, users=40, seed=9, events_per_user=5))
    assert main(["report", "--bundle", str(tiny_bundles), "--data", str(other), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--data {other} does not hold the catalog" in err[0]
