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


def test_source_names_are_checked_against_the_registry():
    with pytest.raises(ConfigError, match=r"pipeline.recommend_sources: unknown candidate source 'two_towr'; "
                                          r"known sources: popularity, item_cf, user_cf, lexical, text, two_tower"):
        load_config(overrides={"pipeline": {"recommend_sources": ["two_towr"]}}, environ={})
    with pytest.raises(ConfigError, match="pipeline.similar_sources: unknown candidate source 'bm25'"):
        load_config(overrides={"pipeline": {"similar_sources": ["item_cf", "bm25"]}}, environ={})
    with pytest.raises(ConfigError, match="pipeline.source_weights: unknown candidate source 'txt'"):
        load_config(overrides={"pipeline": {"source_weights": {"txt": 2.0}}}, environ={})
    ok = load_config(overrides={"pipeline": {"recommend_sources": ["user_cf", "popularity"]}}, environ={})
    assert ok.pipeline.recommend_sources == ("user_cf", "popularity")


def test_every_registered_source_has_its_config_section():
    from retrieval.registry import SOURCES

    defaults = BuildConfig()
    for name, entry in SOURCES.items():
        assert isinstance(getattr(defaults, entry.config_field), entry.config_type), name
