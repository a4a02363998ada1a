import json

import pytest

from tandem.index_builder.config import load_config
from tandem.server.cli import main

pytestmark = pytest.mark.slow


def test_tune_writes_a_loadable_config(tiny_shop, tmp_path):

    base = tmp_path / "base.toml"
    base.write_text('[build.two_tower]\nepochs = 2\nn_negatives = 32\n[build.ranker]\nepochs = 2\n'
                    '[build.pipeline]\nper_source_k = 40\nfused_k = 50\n')
    out = tmp_path / "tuned.toml"
    assert main(["tune", "--data", str(tiny_shop), "--trials", "2", "--config", str(base), "--out", str(out),
                 "--max-users", "80"]) == 0
    tuned = load_config(out, environ={})
    trials = json.loads(out.with_suffix(".trials.json").read_text())
    assert len(trials["trials"]) == 2 and 0 <= trials["best_value"] <= 1
    assert tuned.two_tower.dim == trials["best_params"]["two_tower.dim"]
    assert tuned.two_tower.epochs == 2 and tuned.pipeline.fused_k == 50  # the base config is kept
    assert "best validation NDCG@10" in out.read_text()


def test_tune_rejects_zero_trials(tiny_shop, capsys):
    assert main(["tune", "--data", str(tiny_shop), "--trials", "0"]) == 2
    assert "--trials must be >= 1" in capsys.readouterr().err
