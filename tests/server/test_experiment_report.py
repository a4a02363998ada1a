"""`tandem experiment report` on logs written by the server's own EventLog and ExposureLog: the
file path gives exactly what :func:`analyze` gives on the same data, prices come from the bundle's
catalog, and bad input exits 2 with one line."""

import json

import pytest

from tandem.retrieval.bundle import write_bundle
from tandem.retrieval.catalog_io import save_catalog
from tandem.retrieval.data import Catalog, Item
from tandem.server.cli import main
from tandem.server.event_log import EventLog
from tandem.server.experiment_report import analyze
from tandem.server.exposure_log import ExposureLog
from tests.server.test_experiment_stats import PRICES, experiment, simulate


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    root = tmp / "bundles"
    items = [Item(i, f"item {i}", price=None if i == "i0" else p) for i, p in PRICES.items()]

    def fill(folder):
        save_catalog(Catalog.from_items(items), folder / "catalog")
        return {"built_at": 0}

    write_bundle(root, fill, version="v1")
    exp = experiment("report-test")
    (tmp / "exp.toml").write_text('name = "report-test"\nattribution_window_s = 600\n[[arms]]\nname = "A"\n'
                                  'share = 0.5\n[[arms]]\nname = "B"\nshare = 0.5\n')
    exposures, events, _ = simulate(exp, seed=5, users=1500, lift=1.5)
    xlog = ExposureLog(tmp / "exposures.sqlite3")
    for e in exposures:
        xlog.append(exp.name, e, "rid", "v1")
    xlog.append("another-experiment", exposures[0])  # not this experiment's: left out
    xlog.close()
    elog = EventLog(tmp / "events.sqlite3")
    elog.append(events)
    elog.close()
    return tmp, exp, exposures, events


def test_the_report_reads_exactly_what_analyze_sees(logs, capsys):
    tmp, exp, exposures, events = logs
    out = tmp / "report.json"
    assert main(["experiment", "report", "--experiment", str(tmp / "exp.toml"), "--log", str(tmp / "events.sqlite3"),
                 "--bundles", str(tmp / "bundles"), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    expected = analyze(exp, exposures, events, {i: p for i, p in PRICES.items() if i != "i0"})
    assert {k: v for k, v in report.items() if not k.endswith("_log")} == expected
    assert report["exposure_log"] == str(tmp / "exposures.sqlite3")  # the default: beside the event log
    assert report["arms"][1]["vs_control"]["ctr"]["verdict"] == "better"
    unpriced = sum(e.event == "purchase" and e.item_id == "i0" for e in events)  # all attributed: shown, in time
    assert unpriced > 0 and sum(a["unpriced_purchases"] for a in report["arms"]) == unpriced
    assert "CTR" in text and "BETTER" in text and f"without a catalog price (revenue 0): {unpriced}" in text
    assert main(["experiment", "report", "--experiment", str(tmp / "exp.toml"), "--log", str(tmp / "events.sqlite3"),
                 "--bundles", str(tmp / "bundles"), "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["arms"] == report["arms"]


def test_bad_input_exits_2_with_one_line(logs, tmp_path, capsys):
    tmp, *_ = logs
    args = ["experiment", "report", "--experiment", str(tmp / "exp.toml"), "--log", str(tmp / "events.sqlite3")]
    assert main([*args, "--bundles", str(tmp / "bundles"), "--exposures", str(tmp_path / "none.sqlite3")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no exposure log at" in err
    assert main(args) == 2  # the default --bundles (the event log's folder) holds no bundle
    assert "has no CURRENT file" in capsys.readouterr().err
    (tmp_path / "bad.toml").write_text('name = "x"\n')
    assert main(["experiment", "report", "--experiment", str(tmp_path / "bad.toml"), "--log", "x"]) == 2
    assert "arms must list at least two" in capsys.readouterr().err
