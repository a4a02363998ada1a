import pytest

from index_builder.config import BuildConfig, ConfigError, load_config
from index_builder.tune import to_toml


def test_defaults_file_env_overrides_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('split = "leave-last-out"\n[two_tower]\ndim = 32\nlayers = 1\n[ranker]\nhidden = [8, 4]\n')
    env = {"TANDEM_TWO_TOWER__DIM": "48", "TANDEM_RANKER__LR": "0.01", "HOME": "/root"}
    c = load_config(f, environ=env, overrides={"two_tower": {"layers": 3}})
    assert c.split == "leave-last-out"
    assert c.two_tower.dim == 48 and c.two_tower.layers == 3  # env over file, flag over env
    assert c.ranker.hidden == (8, 4) and c.ranker.lr == 0.01
    assert c.two_tower.dropout == BuildConfig().two_tower.dropout  # untouched fields keep defaults


def test_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting two_tower.dimension"):
        load_config(overrides={"two_tower": {"dimension": 3}}, environ={})
    with pytest.raises(ConfigError, match="ranker.epochs: expected an integer, got 'many'"):
        load_config(overrides={"ranker": {"epochs": "many"}}, environ={})
    with pytest.raises(ConfigError, match="split: expected"):
        load_config(overrides={"split": "random"}, environ={})
    bad = tmp_path / "bad.toml"
    bad.write_text("split = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_toml_roundtrip(tmp_path):
    c = load_config(overrides={"two_tower": {"dim": 32}, "ranker": {"hidden": [16]}}, environ={})
    f = tmp_path / "out.toml"
    f.write_text(to_toml(c, "header line"))
    assert load_config(f, environ={}) == c


def test_example_config_is_the_defaults():
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "docs" / "config.example.toml"
    assert load_config(example, environ={}) == BuildConfig()


def test_the_servers_token_variable_is_not_a_build_setting():
    """TANDEM_TOKEN belongs to `tandem serve` and the CLI client; a shell (or container) that has it
    set must still be able to run `tandem build`."""
    assert load_config(environ={"TANDEM_TOKEN": "s3cret"}) == load_config(environ={})
    with pytest.raises(ValueError, match="unknown setting"):
        load_config(environ={"TANDEM_TOKN": "s3cret"})  # other unknown TANDEM_* still fail loudly
