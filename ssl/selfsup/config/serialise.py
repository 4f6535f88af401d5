"""A resolved config as YAML (the run folder's ``config.yaml``), as a dict, and as a short stable hash."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from omegaconf import OmegaConf

from selfsup.config.schema import Config


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Config) -> str:
    """A short, stable hash of the resolved config (recorded in exports and checkpoints): the sorted JSON of
    :func:`to_dict`, so neither the order of the sections nor that of the methods changes it."""
    blob = json.dumps(to_dict(cfg), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def save_config(cfg: Config, run_dir: str | Path) -> Path:
    """Write the resolved config to ``RUN_DIR/config.yaml``."""
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))
    return path
