import dataclasses
import warnings
from pathlib import Path

import pytest

from tandem.index_builder.config import BuildConfig, ConfigError, load_config
from tandem.index_builder.tune import to_toml

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "config.example.toml"


def test_defaults_file_env_overrides_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[build]\nsplit = "leave-last-out"\n[build.two_tower]\ndim = 32\nlayers = 1\n'
                 '[build.ranker]\nhidden = [8, 4]\n[serve]\nport = 7\n')
    env = {"TANDEM_BUILD__TWO_TOWER__DIM": "48", "TANDEM_BUILD__RANKER__LR": "0.01", "HOME": "/root",
           "TANDEM_SERVE__PORT": "8"}
    c = load_config(f, environ=env, overrides={"two_tower": {"layers": 3}})
    assert c.split == "leave-last-out"
    assert c.two_tower.dim == 48 and c.two_tower.layers == 3  # env over file, flag over env
    assert c.ranker.hidden == (8, 4) and c.ranker.lr == 0.01
    assert c.two_tower.dropout == BuildConfig().two_tower.dropout  # untouched fields keep defaults


def test_serve_variables_and_the_token_do_not_disturb_the_build(monkeypatch):
    # docs/operations.md tells operators to export TANDEM_TOKEN; `tandem build` used to fail on it
    # with "unknown setting token"
    monkeypatch.setenv("TANDEM_TOKEN", "s3cret")
    monkeypatch.setenv("TANDEM_SERVE__PORT", "50052")
    monkeypatch.setenv("TANDEM_HOME", "/srv/tandem")
    monkeypatch.setenv("TANDEM_BEAUTY", "data/beauty")  # the benchmarks' data path, not a setting
    assert load_config() == BuildConfig()


def test_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="unknown setting build.two_tower.dimension"):
        load_config(overrides={"two_tower": {"dimension": 3}}, environ={})
    with pytest.raises(ConfigError, match="ranker.epochs: expected an integer, got 'many'"):
        load_config(overrides={"ranker": {"epochs": "many"}}, environ={})
    with pytest.raises(ConfigError, match="split: expected"):
        load_config(overrides={"split": "random"}, environ={})
    with pytest.raises(ConfigError, match=r"build.two_tower.dim: expected an integer, got 'big' \(from "
                                          "TANDEM_BUILD__TWO_TOWER__DIM\\)"):
        load_config(environ={"TANDEM_BUILD__TWO_TOWER__DIM": "big"})
    bad = tmp_path / "bad.toml"
    bad.write_text("split = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad, environ={})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml", environ={})


def test_unknown_keys_list_the_valid_names(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[build.two_tower]\ndimension = 32\n")
    with pytest.raises(ConfigError) as info:
        load_config(f, environ={})
    msg = str(info.value)
    assert str(f) in msg and "unknown setting build.two_tower.dimension" in msg
    valid = ", ".join(sorted(x.name for x in dataclasses.fields(BuildConfig().two_tower)))
    assert valid in msg  # every valid name of the section, sorted
    with pytest.raises(ConfigError) as info:
        load_config(environ={"TANDEM_BUILD__RANKER__EPOCHZ": "3"})
    msg = str(info.value)
    assert "TANDEM_BUILD__RANKER__EPOCHZ" in msg and "unknown setting build.ranker.epochz" in msg
    assert "epochs" in msg and "hidden" in msg
    with pytest.raises(ConfigError, match="unknown setting build.splitt; valid settings of build: .*refit_on_all"):
        load_config(environ={"TANDEM_BUILD__SPLITT": "none"})


def test_a_misspelt_section_is_refused(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("[biuld]\nseed = 3\n")
    with pytest.raises(ConfigError, match=r"unknown section \[biuld\]; the sections are \[build\] and \[serve\]"):
        load_config(f, environ={})
    f.write_text("[build.two_towr]\ndim = 3\n")
    with pytest.raises(ConfigError, match="unknown setting build.two_towr; valid settings of build: .*two_tower"):
        load_config(f, environ={})
    with pytest.raises(ConfigError, match="TANDEM_SEVRE__PORT: unknown section 'sevre'.*TANDEM_BUILD__.*TANDEM_SERVE__"):
        load_config(environ={"TANDEM_SEVRE__PORT": "1"})
    f.write_text("[serve]\nport = 7\n[build]\nseed = 4\n")
    assert load_config(f, environ={}).seed == 4


def test_the_old_layouts(tmp_path):
    # un-namespaced variables still work for the build, with a warning naming the new name
    with pytest.warns(FutureWarning) as record:
        c = load_config(environ={"TANDEM_TWO_TOWER__DIM": "24", "TANDEM_SPLIT": "temporal"})
    assert sorted(str(w.message).split(" (")[0] for w in record) == [
        "TANDEM_SPLIT is deprecated: use TANDEM_BUILD__SPLIT",
        "TANDEM_TWO_TOWER__DIM is deprecated: use TANDEM_BUILD__TWO_TOWER__DIM"]
    assert c.two_tower.dim == 24 and c.split == "temporal"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        both = {"TANDEM_TWO_TOWER__DIM": "24", "TANDEM_BUILD__TWO_TOWER__DIM": "40"}
        assert load_config(environ=both).two_tower.dim == 40  # the namespaced one wins
    # a file of the old layout (build settings at the top level) says where they go now
    f = tmp_path / "old.toml"
    f.write_text('split = "none"\n[two_tower]\ndim = 3\n')
    with pytest.raises(ConfigError, match=r"'split' at the top level: build settings now go under \[build\]"):
        load_config(f, environ={})


def test_toml_roundtrip(tmp_path):
    c = load_config(overrides={"two_tower": {"dim": 32}, "ranker": {"hidden": [16]}}, environ={})
    f = tmp_path / "out.toml"
    f.write_text(to_toml(c, "header line"))
    assert load_config(f, environ={}) == c
    assert "[build.two_tower]" in f.read_text()


def test_example_config_is_the_defaults():
    assert load_config(EXAMPLE, environ={}) == BuildConfig()


def test_example_config_names_every_build_setting():
    text = EXAMPLE.read_text()

    def walk(cls, section):
        assert f"[{section}]" in text, f"docs/config.example.toml lacks the section [{section}]"
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(getattr(cls(), f.name)):
                walk(type(getattr(cls(), f.name)), f"{section}.{f.name}")
            else:
                assert f"\n{f.name} = " in text or f"\n# {f.name} = " in text, f"{section}.{f.name} is not in the example"

    walk(BuildConfig, "build")


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
    from tandem.retrieval.registry import SOURCES

    defaults = BuildConfig()
    for name, entry in SOURCES.items():
        assert isinstance(getattr(defaults, entry.config_field), entry.config_type), name
