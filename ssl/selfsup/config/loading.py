"""From files and overrides to a typed :class:`~selfsup.config.schema.Config`: defaults, YAML, CLI dotlist.

A YAML file under ``configs/`` overrides a few defaults, optionally on top of another file named by ``base:``;
``key=value`` pairs from the command line come last (DINOv2 style: ``merge(defaults, file, cli)``). Every omegaconf
error becomes one line naming the source, the key and what was expected. Nothing below the CLI imports omegaconf:
:func:`load_config` returns dataclass objects that are turned into keyword arguments at the edge.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from selfsup.config.safe_yaml import read_config_yaml
from selfsup.config.schema import Config
from selfsup.config.validation import validate
from selfsup.errors import ConfigError


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict]]:
    """Read a YAML file and the chain of ``base:`` files it names, base first: (source, data) pairs."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' forms a cycle")
    data = read_config_yaml(path)
    base = data.pop("base", None)
    chain: list[tuple[str, dict]] = []
    if base is not None:
        chain = _read_yaml((path.parent / str(base)), seen + (path.resolve(),))
    return chain + [(str(path), data)]


def _valid_keys(node: Any) -> str:
    if dataclasses.is_dataclass(node):
        return ", ".join(f.name for f in dataclasses.fields(node))
    return ""


def _explain(e: OmegaConfBaseException, source: str) -> ConfigError:
    """Turn an omegaconf error into one line that names the key and what was expected."""
    key = getattr(e, "full_key", None) or "?"
    if isinstance(e, ConfigKeyError):
        parent, _, leaf = key.rpartition(".")
        node: Any = Config()
        for part in parent.split(".") if parent else []:
            node = getattr(node, part, None)
        valid = _valid_keys(node) or "(none)"
        where = parent or "top level"
        return ConfigError(f"{source}: unknown config key '{key}' (valid keys in {where}: {valid})")
    if isinstance(e, ValidationError):
        msg = str(e).splitlines()[0]
        return ConfigError(f"{source}: bad value for '{key}': {msg}")
    return ConfigError(f"{source}: {str(e).splitlines()[0]} (key '{key}')")


def _merge(base: DictConfig, data: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, data)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise _explain(e, source) from None


def load_config(files: list[str | Path] | str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Merge the schema defaults, YAML files (each with its ``base:`` chain) and ``key=value`` overrides.

    Raises:
        ConfigError: unknown key, wrong type, or a value outside its choices, in one line.
    """
    if files is None:
        files = []
    elif isinstance(files, (str, Path)):
        files = [files]
    cfg: DictConfig = OmegaConf.structured(Config)
    for f in files:
        for source, data in _read_yaml(Path(f)):
            cfg = _merge(cfg, data, source)
    given: dict[str, str] = {}  # key -> the override that set it
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value, e.g. optim.lr=1e-4")
        key = item.split("=", 1)[0].strip()
        if key in given:
            raise ConfigError(f"override '{item}': '{key}' is already set by '{given[key]}'; give each key once")
        given[key] = item
        try:
            dot = OmegaConf.from_dotlist([item])
        except OmegaConfBaseException as e:
            raise ConfigError(f"override '{item}': {str(e).splitlines()[0]}") from None
        cfg = _merge(cfg, dot, f"override '{item}'")
    # YAML 1.1 reads a bare `no` as false; `train.mixed_precision=no` means the string "no".
    if str(cfg.train.mixed_precision).lower() == "false":
        cfg.train.mixed_precision = "no"
    try:
        obj: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise _explain(e, "config") from None
    validate(obj)
    return obj
