"""The root configuration of ``tandem build`` and ``tandem serve``: one TOML file, one set of
environment variables, one loader.

Each command reads its own section of the file into its frozen dataclass, in this order:
defaults, then the file, then ``TANDEM_<SECTION>__...`` environment variables, then the
command's flags; the dataclass validates the result, and errors name the setting::

    [build]                  # BuildConfig (this module)
    split = "none"
    [build.two_tower]        # retrieval.two_tower.TwoTowerConfig
    dim = 64
    [serve]                  # server.service.ServerConfig (the server reads it with load_section)
    port = 50051

``TANDEM_BUILD__TWO_TOWER__DIM=128`` sets ``[build.two_tower] dim`` and ``TANDEM_SERVE__PORT=50052``
sets ``[serve] port`` (double underscores between the parts; values are TOML literals, and a
string setting takes the text as it is). The loader is generic over the fields of the dataclass,
so a field added to a config is settable in the file and the environment at once.

Refused with the valid names listed: an unknown section (``[biuld]``, ``TANDEM_SRVE__PORT``), an
unknown setting, in the file or in a variable. A command checks its own section's settings and
every section's name. ``TANDEM_*`` variables without a double underscore (``TANDEM_TOKEN``,
``TANDEM_HOME``) are not settings, except the old un-namespaced build names below.

Old layouts: build settings at the top level of the file are refused with a message saying where
they go now; the old build variables (``TANDEM_TWO_TOWER__DIM``, ``TANDEM_SPLIT``) still set the
build, with a ``FutureWarning`` naming the new variable (a namespaced one wins over an old one).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
import warnings
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from tandem.index_builder.cleaning import CleaningConfig
from tandem.index_builder.incremental import IncrementalConfig
from tandem.ranking.pipeline import PipelineConfig
from tandem.ranking.ranker import RankerConfig
from tandem.retrieval.ann import AnnConfig
from tandem.retrieval.item_cf import ItemCFConfig, UserCFConfig
from tandem.retrieval.lexical import LexicalConfig
from tandem.retrieval.popularity import PopularityConfig
from tandem.retrieval.text_tower import TextEncoderConfig
from tandem.retrieval.two_tower import TwoTowerConfig

__all__ = ["SECTIONS", "BuildConfig", "ConfigError", "config_to_dict", "load_config", "load_section",
           "read_config_file"]

#: The sections of the root configuration file (and the namespaces of the environment variables).
SECTIONS: tuple[str, ...] = ("build", "serve")
_PREFIX = "TANDEM_"


class ConfigError(ValueError):
    """A configuration value that is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``tandem build`` needs; every section has working defaults."""

    split: str = "none"
    #: For split "none": refit the sources on every event after the ranker was trained on
    #: each user's held-out last items (the two-tower model re-runs its best epoch count).
    refit_on_all: bool = True
    #: At most this many validation users give the ranker its training lists.
    ranker_max_users: int = 50_000
    eval_ks: tuple[int, ...] = (10, 50, 200)
    seed: int = 0
    #: Threads for torch, FAISS and BLAS in each stage: 0 = the cores idle when the stage starts
    #: (an ``OMP_NUM_THREADS`` in the environment wins), N = always N (index_builder/threads.py).
    threads: int = 0
    #: An earlier bundle (a bundle root with CURRENT, or a bundle folder) to build from: its text
    #: vectors are reused by content hash and its two-tower and ranker warm-started (``--from``;
    #: ``[build.incremental]`` says how much to train). Unset: a full build.
    from_bundle: Path | None = None
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    two_tower: TwoTowerConfig = field(default_factory=TwoTowerConfig)
    item_cf: ItemCFConfig = field(default_factory=ItemCFConfig)
    user_cf: UserCFConfig = field(default_factory=UserCFConfig)
    popularity: PopularityConfig = field(default_factory=PopularityConfig)
    lexical: LexicalConfig = field(default_factory=LexicalConfig)
    ann: AnnConfig = field(default_factory=AnnConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    incremental: IncrementalConfig = field(default_factory=IncrementalConfig)

    def __post_init__(self) -> None:
        if self.split not in ("none", "leave-last-out", "temporal"):
            raise ConfigError(f'split: expected "none", "leave-last-out" or "temporal", got {self.split!r}')
        if self.ranker_max_users < 10:
            raise ConfigError(f"ranker_max_users: expected >= 10, got {self.ranker_max_users}")
        if self.threads < 0:
            raise ConfigError(f"threads: expected 0 (idle cores) or a positive count, got {self.threads}")
        if not self.eval_ks or min(self.eval_ks) < 1:
            raise ConfigError(f"eval_ks: expected positive list lengths, got {self.eval_ks}")


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _optional_inner(tp: Any) -> Any:
    """``X | None`` -> ``X``; any other type as it is."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: unsupported value {value!r}")
    if is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table of fields, got {value!r}")
        return _build(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping, typing.Mapping) or tp in (dict,):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, (str, os.PathLike)) or value == "":
            raise ConfigError(f"{where}: expected a path (a string), got {value!r}")
        return Path(value)
    return value


def _settings(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in fields(cls) if f.init}


def _unknown(name: str, where: str, cls: type) -> ConfigError:
    return ConfigError(f"unknown setting {_join(where, name)}; valid settings of {where or 'the top level'}: "
                       f"{', '.join(sorted(_settings(cls)))}")


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _where_to_set(where: str, name: str) -> str:
    if where.split(".")[0] not in SECTIONS:
        return ""
    var = f"{_PREFIX}{where.upper().replace('.', '__')}__{name.upper()}"
    return f" (--{name.replace('_', '-')}, {name} under [{where}] in the config file, or {var})"


def _build(cls: type, values: Mapping[str, Any], where: str = "", base: Any = None) -> Any:
    """``cls`` from a (partial) table of settings over its defaults, or over ``base`` when given.

    A partial sub-table keeps the other fields of that section at their defaults."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a table of settings, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = _settings(cls)
    for name in values:
        if name not in known:
            raise _unknown(name, where, cls)
    kwargs = {}
    for name, value in values.items():
        path, tp = _join(where, name), hints[name]
        if is_dataclass(tp) and isinstance(value, Mapping):
            nested = getattr(base, name) if base is not None else _field_default(known[name])
            kwargs[name] = _build(tp, value, path, None if nested is MISSING else nested)
        else:
            kwargs[name] = _coerce(value, tp, path)
    if base is None:
        for name, f in known.items():
            if name not in kwargs and f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{_join(where, name)} is required{_where_to_set(where, name)}")
    try:
        return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


def _check_keys(cls: type, table: Mapping[str, Any], where: str, origin: str) -> None:
    """Refuse unknown settings in ``table`` (recursively), the message starting with ``origin``."""
    hints = typing.get_type_hints(cls)
    known = _settings(cls)
    for name, value in table.items():
        if name not in known:
            raise ConfigError(f"{origin}{_unknown(name, where, cls)}")
        if is_dataclass(hints[name]) and isinstance(value, Mapping):
            _check_keys(hints[name], value, _join(where, name), origin)


def _deep_merge(base: dict, extra: Mapping[str, Any]) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _parse_literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _env_value(raw: str, tp: Any, where: str, var: str) -> Any:
    """A variable's text as a value of ``tp``: a TOML literal, except that a string or path
    setting takes the text as it is (so ``TANDEM_TOKEN=123456`` stays a string)."""
    if _optional_inner(tp) in (str, Path):
        quoted = _parse_literal(raw) if raw[:1] in "\"'" else None
        value = quoted if isinstance(quoted, str) else raw
    else:
        value = _parse_literal(raw)
    try:
        return _coerce(value, tp, where)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (from {var})") from None


def _env_target(cls: type, parts: list[str], where: str, var: str) -> Any:
    """The type of the setting ``parts`` names inside ``cls``; refuses unknown names."""
    for i, name in enumerate(parts):
        hints, known = typing.get_type_hints(cls), _settings(cls)
        if name not in known:
            raise ConfigError(f"{var}: {_unknown(name, where, cls)}")
        where, tp = _join(where, name), hints[name]
        if i == len(parts) - 1:
            if is_dataclass(tp):
                raise ConfigError(f"{var}: {where} is a section; set its settings one by one "
                                  f"({var}__<SETTING>)")
            return tp
        if not is_dataclass(tp):
            raise ConfigError(f"{var}: {where} is a setting, not a section")
        cls = tp
    raise AssertionError("unreachable")


def _legacy_build_names() -> set[str]:
    return set(_settings(BuildConfig))


def _env_settings(cls: type, section: str, environ: Mapping[str, str], aliases: Mapping[str, str]) -> dict:
    """The settings of ``section`` from ``TANDEM_<SECTION>__...`` variables (nested dicts)."""
    legacy = _legacy_build_names()
    namespaced: dict = {}
    old: dict = {}
    origins: dict[tuple[str, ...], str] = {}
    for var, raw in sorted(environ.items()):
        if not var.startswith(_PREFIX) or var in aliases:
            continue
        name = var[len(_PREFIX):]
        parts = name.lower().split("__")
        if parts[0] in SECTIONS and len(parts) > 1:
            if parts[0] != section:
                continue
            parts, target = parts[1:], namespaced
        elif parts[0] in legacy:  # the build's variables before the sections: TANDEM_TWO_TOWER__DIM
            if section != "build":
                continue
            warnings.warn(f"{var} is deprecated: use {_PREFIX}BUILD__{name} (the variables are namespaced "
                          "by section: TANDEM_BUILD__..., TANDEM_SERVE__...)", FutureWarning, stacklevel=4)
            target = old
        elif len(parts) > 1:
            raise ConfigError(f"{var}: unknown section {parts[0]!r}; settings are "
                              f"{' and '.join(f'{_PREFIX}{s.upper()}__<SETTING>' for s in SECTIONS)} "
                              f"({_and([f'[{s}]' for s in SECTIONS])} of the config file)")
        else:
            continue  # TANDEM_TOKEN, TANDEM_HOME, ...: not a setting
        if not all(parts):
            raise ConfigError(f"{var}: expected {_PREFIX}{section.upper()}__<SETTING>, with __ between the parts")
        tp = _env_target(cls, parts, section, var)
        node = target
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _env_value(raw, tp, _join(section, ".".join(parts)), var)
        if target is namespaced:
            origins[tuple(parts)] = var
    for var, setting in aliases.items():
        raw = environ.get(var)
        if not raw:  # empty: unset, as a shell's `VAR=` means
            continue
        parts = setting.split(".")
        tp = _env_target(cls, parts, section, var)
        value = _env_value(raw, tp, _join(section, setting), var)
        node = namespaced
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        if parts[-1] in node and node[parts[-1]] != value:
            raise ConfigError(f"{var} and {origins[tuple(parts)]} are both set, to different values: "
                              f"they are the same setting ({section}.{setting}); set one")
        node[parts[-1]] = value
    return _deep_merge(old, namespaced)


def read_config_file(path: str | Path) -> dict[str, dict]:
    """The root configuration file: ``{section: table}``. Refuses invalid TOML, unknown sections
    and build settings at the top level (the layout before sections)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, Mapping):
            continue
        if key in _legacy_build_names():
            raise ConfigError(f"{path}: {key!r} at the top level: build settings now go under [build], and its "
                              "sections under [build.<section>] (e.g. [build.two_tower]); see docs/config.example.toml")
        if key in SECTIONS:
            raise ConfigError(f"{path}: {key} must be a section ([{key}]), got {value!r}")
        raise ConfigError(f"{path}: unknown section [{key}]; the sections are {_and([f'[{s}]' for s in SECTIONS])}")
    return data


def load_section(cls: type, section: str, path: str | Path | None = None, *,
                 overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                 aliases: Mapping[str, str] | None = None) -> Any:
    """One section of the root configuration as ``cls`` (a frozen dataclass): its defaults <- the
    ``[section]`` table of the TOML file ``path`` <- ``TANDEM_<SECTION>__*`` variables of
    ``environ`` (default ``os.environ``) <- ``overrides`` (nested dicts, e.g. from flags).

    ``aliases`` maps other variable names to settings (``{"TANDEM_TOKEN": "token"}``); such a
    variable sets the same value as the namespaced one, and the two may not disagree.
    """
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; the sections are {', '.join(SECTIONS)}")
    values: dict = {}
    if path is not None:
        table = read_config_file(path).get(section, {})
        _check_keys(cls, table, section, f"{path}: ")
        values = dict(table)
    values = _deep_merge(values, _env_settings(cls, section, os.environ if environ is None else environ,
                                               aliases or {}))
    if overrides:
        values = _deep_merge(values, overrides)
    return _build(cls, values, section)


def load_config(path: str | Path | None = None, *, overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> BuildConfig:
    """The ``[build]`` section: defaults <- TOML file <- ``TANDEM_BUILD__*`` <- ``overrides``."""
    return load_section(BuildConfig, "build", path, overrides=overrides, environ=environ)


def config_to_dict(config: Any) -> Any:
    """A JSON/TOML-able view of a config (for manifests and `tandem tune` output)."""
    if is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in fields(config) if f.init}
    if isinstance(config, (tuple, list)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: config_to_dict(v) for k, v in config.items()}
    if isinstance(config, Path):
        return str(config)
    return config
