"""The build configuration: defaults, then a TOML file, then ``TANDEM_*`` environment
variables, then command-line overrides; validated at start-up with messages naming the field.

Sections map to the components' own frozen dataclasses::

    split = "none"                    # top-level BuildConfig fields
    [two_tower]   dim = 64            # retrieval.two_tower.TwoTowerConfig
    [ranker]      epochs = 30         # ranking.ranker.RankerConfig
    ...

An environment variable ``TANDEM_TWO_TOWER__DIM=128`` sets ``two_tower.dim`` (double underscore
between section and field; values parsed as TOML literals, bare strings allowed).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from index_builder.cleaning import CleaningConfig
from ranking.pipeline import PipelineConfig
from ranking.ranker import RankerConfig
from retrieval.ann import AnnConfig
from retrieval.item_cf import ItemCFConfig, UserCFConfig
from retrieval.lexical import LexicalConfig
from retrieval.popularity import PopularityConfig
from retrieval.text_tower import TextEncoderConfig
from retrieval.two_tower import TwoTowerConfig

__all__ = ["BuildConfig", "load_config", "config_to_dict", "ConfigError"]


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

    def __post_init__(self) -> None:
        if self.split not in ("none", "leave-last-out", "temporal"):
            raise ConfigError(f'split: expected "none", "leave-last-out" or "temporal", got {self.split!r}')
        if self.ranker_max_users < 10:
            raise ConfigError(f"ranker_max_users: expected >= 10, got {self.ranker_max_users}")
        if not self.eval_ks or min(self.eval_ks) < 1:
            raise ConfigError(f"eval_ks: expected positive list lengths, got {self.eval_ks}")


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
    return value


def _build(cls: type, values: Mapping[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown setting {prefix}{unknown[0]}; known settings of "
                          f"{where or 'the top level'}: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in values.items():
        path = f"{where}.{name}" if where else name
        kwargs[name] = _coerce(value, hints[name], path)
    defaults = cls()
    merged = {f.name: getattr(defaults, f.name) for f in fields(cls) if f.init}
    for name, value in kwargs.items():
        current = merged[name]
        if is_dataclass(current) and isinstance(value, type(current)):
            # merge a partial section over the current values
            merged[name] = dataclasses.replace(current, **{k: getattr(value, k) for k in values[name]})
        else:
            merged[name] = value
    try:
        return cls(**merged)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from exc


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


def _env_overrides(environ: Mapping[str, str]) -> dict:
    out: dict = {}
    for key, raw in environ.items():
        if not key.startswith("TANDEM_") or key in ("TANDEM_HOME",):
            continue
        parts = key[len("TANDEM_"):].lower().split("__")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = _parse_literal(raw)
    return out


def load_config(path: str | Path | None = None, *, overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> BuildConfig:
    """Defaults <- TOML file <- ``TANDEM_*`` environment <- ``overrides`` (nested dicts)."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    values = _deep_merge(values, _env_overrides(os.environ if environ is None else environ))
    if overrides:
        values = _deep_merge(values, overrides)
    return _build(BuildConfig, values)


def config_to_dict(config: Any) -> Any:
    """A JSON/TOML-able view of a config (for manifests and `tandem tune` output)."""
    if is_dataclass(config):
        return {f.name: config_to_dict(getattr(config, f.name)) for f in fields(config) if f.init}
    if isinstance(config, (tuple, list)):
        return [config_to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: config_to_dict(v) for k, v in config.items()}
    return config
