"""Configuration: typed defaults in one place, YAML overrides, CLI dotlist on top.

Every default lives in the dataclasses of the schema (:mod:`selfsup.config.schema`; a method's section beside the
method, ``selfsup/methods/NAME.py``). A YAML file under ``configs/`` overrides a few of them, optionally on top of
another file named by ``base:``; ``key=value`` pairs from the command line come last
(:mod:`selfsup.config.loading`). The result is checked (:mod:`selfsup.config.validation`) and the resolved config
is saved in the run directory (:mod:`selfsup.config.serialise`).

    schema.py      the section dataclasses and Config (the method section assembled from the registry)
    safe_yaml.py   one YAML file read without trusting it
    loading.py     defaults + files (base chains) + dotlist -> Config; omegaconf errors in one line
    validation.py  choices, ranges, view rules and combinations
    serialise.py   to_yaml, to_dict, config_hash, save_config
"""

from selfsup.config.loading import load_config
from selfsup.config.schema import (
    Config,
    DataConfig,
    ExportConfig,
    MethodConfig,
    ModelConfig,
    MonitorConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    ViewsConfig,
)
from selfsup.config.serialise import config_hash, save_config, to_dict, to_yaml
from selfsup.config.validation import RANGES, all_ranges, validate

__all__ = [
    "Config", "DataConfig", "ExportConfig", "MethodConfig", "ModelConfig", "MonitorConfig", "OptimConfig", "RunConfig",
    "TrainConfig", "ViewsConfig", "RANGES", "all_ranges", "config_hash", "load_config", "save_config", "to_dict",
    "to_yaml", "validate",
]
