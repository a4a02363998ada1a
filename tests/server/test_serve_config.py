"""`tandem serve` reads the same root configuration as `tandem build`: the [serve] section of the
TOML file, TANDEM_SERVE__* variables (TANDEM_TOKEN as the token's alias), then flags."""

import dataclasses
from pathlib import Path

import pytest

from tandem.index_builder.config import ConfigError, load_section
from tandem.server.cli import build_parser, main
from tandem.server.commands import serve_config
from tandem.server.service import ServerConfig

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "config.example.toml"


def parse(*argv: str):
    return build_parser().parse_args(["serve", *argv])


def test_defaults_file_env_flags_in_order(tmp_path):
    f = tmp_path / "tandem.toml"
    f.write_text(f'[build]\nseed = 3\n[build.two_tower]\ndim = 8\n[serve]\nbundles = "{tmp_path}"\nport = 6000\n'
                 'workers = 3\ngrace_s = 2.5\nhost = "0.0.0.0"\n')
    env = {"TANDEM_SERVE__PORT": "6001", "TANDEM_SERVE__WORKERS": "5", "TANDEM_BUILD__SEED": "9"}
    c = serve_config(parse("--config", str(f), "--port", "6002"), environ=env)
    assert c.port == 6002  # flag over env over file
    assert c.workers == 5  # env over file
    assert c.grace_s == 2.5 and c.host == "0.0.0.0" and c.bundles == tmp_path  # file over defaults
    assert c.compute_slots == ServerConfig(bundles=tmp_path).compute_slots  # untouched: the default
    c = serve_config(parse("--bundles", str(tmp_path)), environ={})
    assert c == ServerConfig(bundles=tmp_path)  # no file, no variables: the defaults
    c = serve_config(parse("--bundles", str(tmp_path), "--grace", "1"), environ={"TANDEM_SERVE__GRACE_S": "4"})
    assert c.grace_s == 1.0


def test_every_config_field_can_be_set_from_the_file_and_the_environment(tmp_path):
    # the loader is generic over ServerConfig's fields: a field added there is configurable at once
    f = tmp_path / "tandem.toml"
    f.write_text(f'[serve]\nbundles = "{tmp_path}"\nwatch_interval_s = 0.25\nmax_message_bytes = 1024\n')
    c = serve_config(parse("--config", str(f)), environ={"TANDEM_SERVE__USER_MEMOS": "12",
                                                         "TANDEM_SERVE__EVENT_LOG": str(tmp_path / "ev.db")})
    assert c.watch_interval_s == 0.25 and c.max_message_bytes == 1024 and c.user_memos == 12
    assert c.event_log == tmp_path / "ev.db"


def test_token_alias(tmp_path):
    args = parse("--bundles", str(tmp_path))
    assert serve_config(args, environ={"TANDEM_TOKEN": "123456"}).token == "123456"  # a string, not a number
    assert serve_config(args, environ={"TANDEM_SERVE__TOKEN": "t0k"}).token == "t0k"
    assert serve_config(args, environ={"TANDEM_TOKEN": ""}).token is None  # empty means unset, as before
    assert serve_config(parse("--bundles", str(tmp_path), "--token", "flag"),
                        environ={"TANDEM_TOKEN": "env"}).token == "flag"
    with pytest.raises(ConfigError, match="TANDEM_TOKEN and TANDEM_SERVE__TOKEN are both set"):
        serve_config(args, environ={"TANDEM_TOKEN": "a", "TANDEM_SERVE__TOKEN": "b"})


def test_errors_name_the_setting_and_list_the_valid_ones(tmp_path):
    f = tmp_path / "tandem.toml"
    f.write_text(f'[serve]\nbundles = "{tmp_path}"\nprot = 6000\n')
    with pytest.raises(ConfigError) as info:
        serve_config(parse("--config", str(f)), environ={})
    msg = str(info.value)
    assert str(f) in msg and "unknown setting serve.prot" in msg
    assert ", ".join(sorted(x.name for x in dataclasses.fields(ServerConfig))) in msg
    with pytest.raises(ConfigError, match="TANDEM_SERVE__WORKRES: unknown setting serve.workres; valid .*workers"):
        serve_config(parse("--bundles", str(tmp_path)), environ={"TANDEM_SERVE__WORKRES": "3"})
    with pytest.raises(ConfigError, match=r"unknown section \[srve\]"):
        f.write_text(f'[srve]\nbundles = "{tmp_path}"\n')
        serve_config(parse("--config", str(f)), environ={})
    with pytest.raises(ConfigError, match="TANDEM_SRVE__PORT: unknown section 'srve'"):
        serve_config(parse("--bundles", str(tmp_path)), environ={"TANDEM_SRVE__PORT": "1"})
    with pytest.raises(ConfigError, match=r"serve.bundles is required .*--bundles.*TANDEM_SERVE__BUNDLES"):
        serve_config(parse(), environ={})
    with pytest.raises(ConfigError, match="serve.port: expected an integer, got 'high'"):
        serve_config(parse("--bundles", str(tmp_path)), environ={"TANDEM_SERVE__PORT": "high"})
    with pytest.raises(ConfigError, match="port must be 0..65535, got 70000"):
        serve_config(parse("--bundles", str(tmp_path)), environ={"TANDEM_SERVE__PORT": "70000"})


def test_build_variables_do_not_disturb_serve(tmp_path):
    env = {"TANDEM_BUILD__TWO_TOWER__DIM": "8", "TANDEM_TWO_TOWER__TIME_BUDGET_S": "120"}  # the latter: old name
    assert serve_config(parse("--bundles", str(tmp_path)), environ=env) == ServerConfig(bundles=tmp_path)


def test_serve_exits_2_naming_a_bad_setting(tmp_path, capsys):
    f = tmp_path / "tandem.toml"
    f.write_text(f'[serve]\nbundles = "{tmp_path}"\nworkers = 0\n')
    assert main(["serve", "--config", str(f)]) == 2
    assert "--workers must be >= 1, got 0" in capsys.readouterr().err


def test_example_config_serve_section_is_the_defaults(tmp_path):
    c = load_section(ServerConfig, "serve", EXAMPLE, overrides={"bundles": tmp_path}, environ={})
    assert c == ServerConfig(bundles=tmp_path)
    text = EXAMPLE.read_text()
    for f in dataclasses.fields(ServerConfig):
        assert f"\n{f.name} = " in text or f"\n# {f.name} = " in text, f"serve.{f.name} is not in the example"


def test_processes_from_flag_file_and_environment_and_its_errors(tmp_path):
    f = tmp_path / "tandem.toml"
    f.write_text(f'[serve]\nbundles = "{tmp_path}"\nprocesses = 3\n')
    assert serve_config(parse("--config", str(f)), environ={}).processes == 3
    assert serve_config(parse("--config", str(f)), environ={"TANDEM_SERVE__PROCESSES": "2"}).processes == 2
    assert serve_config(parse("--config", str(f), "--processes", "1"), environ={}).processes == 1
    assert serve_config(parse("--bundles", str(tmp_path)), environ={}).processes == 1
    with pytest.raises(ValueError, match="--processes must be >= 1, got 0"):
        ServerConfig(bundles=tmp_path, processes=0)
    with pytest.raises(ValueError, match="--experiment runs in one process only"):
        ServerConfig(bundles=tmp_path, processes=2, experiment=tmp_path / "exp.toml")
    # one process refuses to share its port; a group's processes share it
    assert ("grpc.so_reuseport", 0) in ServerConfig(bundles=tmp_path).grpc_options()
    assert ("grpc.so_reuseport", 1) in ServerConfig(bundles=tmp_path, processes=2).grpc_options()
