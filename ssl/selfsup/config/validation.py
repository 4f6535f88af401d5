"""What the types alone cannot check: choices, numeric ranges, the views a method takes, and combinations.

The sections' ranges are :data:`RANGES`; each method adds its own (``ranges``, ``choices`` and ``check`` of its
:class:`~selfsup.registry.MethodSpec`, keys under ``method.NAME``) and its view rule (``multi_crop``,
``min_views``). Every error is one line naming the key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import Any

from selfsup import registry
from selfsup.config.schema import Config
from selfsup.errors import ConfigError

MIXED_PRECISION = ("no", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
VIEW_BACKENDS = ("fast", "lightly")
ON_COLLAPSE = ("stop", "warn")
ON_PLATEAU = ("warn", "stop")
GLOBAL_POOLS = ("token", "avg", "max", "avgmax")  # export.global_pool: timm's class-token / patch-token pools

# Valid ranges of numeric keys ("[" / "]" include the end, "(" / ")" exclude it); a list's items each. NaN is in
# no range. Keys that must be > 0 are in `positive` in validate(); any other float must at least be finite.
# The methods' ranges are in their specs (all_ranges()).
RANGES = {
    "run.seed": "[0, inf)", "data.samples_per_epoch": "[0, inf)", "data.shuffle_buffer": "[0, inf)",
    "data.shard_interleave": "[1, inf)", "data.num_workers": "[0, inf)", "data.max_bad_fraction": "[0, 1]",
    "data.bad_window": "[1, inf)", "data.max_sample_bytes": "[1, inf)",
    "views.local_crop_size": "[1, inf)", "views.solarize_prob": "[0, 1]", "views.std": "(0, inf)",
    "views.hflip_prob": "[0, 1]", "views.vflip_prob": "[0, 1]", "views.rot90_prob": "[0, 1]", "views.cj_prob": "[0, 1]",
    "views.cj_strength": "[0, inf)", "views.gray_prob": "[0, 1]",
    "model.drop_path_rate": "[0, 1)",
    "optim.min_lr": "[0, inf)", "optim.warmup_epochs": "[0, inf)", "optim.weight_decay": "[0, inf)",
    "optim.weight_decay_end": "[0, inf)", "optim.betas": "[0, 1)", "optim.clip_grad": "[0, inf)",
    "train.epochs": "[0, inf)", "train.max_steps": "[1, inf)", "train.save_every": "[0, inf)",
    "train.max_bad_steps": "[1, inf)", "train.plateau_steps": "[0, inf)", "train.plateau_tolerance": "(0, 1)",
}


def all_ranges() -> dict[str, str]:
    """:data:`RANGES` and every registered method's ranges (``method.NAME.KEY``), in the schema's section order."""
    method = {f"method.{spec.name}.{key}": interval
              for spec in registry.specs().values() for key, interval in spec.ranges.items()}
    out: dict[str, str] = {}
    for section in dataclasses.fields(Config):
        if section.name == "method":
            out.update(method)
        out.update({k: v for k, v in RANGES.items() if k.split(".")[0] == section.name})
    return out


def _choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"bad value for '{key}': '{value}' (expected one of: {', '.join(choices)})")


def _check_range(key: str, value: Any, interval: str) -> None:
    if value is None:  # optional keys (train.max_steps): null = unset
        return
    for v in value if isinstance(value, list) else [value]:
        lo, hi = (float(x) for x in interval[1:-1].split(","))
        if (lo <= v if interval[0] == "[" else lo < v) and (v <= hi if interval[-1] == "]" else v < hi):
            continue
        kind = "an integer" if isinstance(v, int) else "a finite number"
        if hi == math.inf:
            want = f"{kind} {'>=' if interval[0] == '[' else '>'} {lo:g}"
        else:
            want = f"{kind} in {interval}"
        raise ConfigError(f"bad value for '{key}': {v} (expected {want})")


def _floats(node: Any, key: str) -> Iterator[tuple[str, float]]:
    """Every float in the config tree with its dotted key."""
    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            yield from _floats(getattr(node, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _floats(v, f"{key}.{k}")
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from _floats(v, f"{key}[{i}]")
    elif isinstance(node, float):
        yield key, node


def _check_numbers(cfg: Config) -> None:
    """Each key of :func:`all_ranges` in its range, and no NaN or infinity anywhere."""
    for key, interval in all_ranges().items():
        _check_range(key, functools.reduce(getattr, key.split("."), cfg), interval)
    for key, value in _floats(cfg, ""):
        if not math.isfinite(value):
            raise ConfigError(f"bad value for '{key}': {value} (expected a finite number)")


def _check_methods(cfg: Config) -> None:
    """Each registered method's section: its choices, then its own check (every section, whichever method runs)."""
    for spec in registry.specs().values():
        section = getattr(cfg.method, spec.name)
        for key, choices in spec.choices.items():
            _choice(f"method.{spec.name}.{key}", getattr(section, key), choices)
        if spec.check is not None:
            spec.check(section)


def _check_views(cfg: Config, spec: registry.MethodSpec) -> None:
    """The views the method ``spec`` takes, and the shape of the ``views`` lists."""
    v = cfg.views
    if v.n_global < 1 or v.n_local < 0:
        raise ConfigError("bad value for 'views.n_global'/'views.n_local': need n_global >= 1 and n_local >= 0")
    if not spec.multi_crop and (v.n_global != 2 or v.n_local != 0):
        raise ConfigError(
            f"bad value for 'views.n_global'/'views.n_local': {spec.name} takes exactly 2 views "
            f"(views.n_global=2 views.n_local=0), got {v.n_global} + {v.n_local}"
        )
    if v.n_global + v.n_local < spec.min_views:
        raise ConfigError(f"views: {spec.name} needs at least {spec.min_views} views in total "
                          f"(views.n_global + views.n_local >= {spec.min_views})")
    if len(v.blur_probs) != 3 or not all(0 <= p <= 1 for p in v.blur_probs):
        raise ConfigError(f"bad value for 'views.blur_probs': {v.blur_probs} (expected 3 probabilities: "
                          "first global, other global, local views)")
    for key in ("mean", "std"):
        if len(getattr(v, key)) != 3:
            raise ConfigError(f"bad value for 'views.{key}': {getattr(v, key)} (expected 3 values, one per "
                              "RGB channel)")
    for key in ("global_crop_scale", "local_crop_scale"):
        lo, hi = getattr(v, key)
        if not 0 < lo <= hi <= 1:
            raise ConfigError(f"bad value for 'views.{key}': [{lo}, {hi}] (expected 0 < min <= max <= 1)")


def validate(cfg: Config) -> None:
    """Check values that the types alone cannot: choices, ranges and combinations."""
    _check_numbers(cfg)
    spec = registry.get_spec(cfg.method.name)
    _choice("train.mixed_precision", cfg.train.mixed_precision, MIXED_PRECISION)
    _choice("train.device", cfg.train.device, DEVICES)
    _choice("views.backend", cfg.views.backend, VIEW_BACKENDS)
    _choice("train.on_collapse", cfg.train.on_collapse, ON_COLLAPSE)
    _choice("train.on_plateau", cfg.train.on_plateau, ON_PLATEAU)
    if cfg.export.global_pool is not None:
        _choice("export.global_pool", cfg.export.global_pool, GLOBAL_POOLS)
    _check_methods(cfg)
    if not isinstance(cfg.model.pretrained, (bool, str)) or cfg.model.pretrained == "":
        raise ConfigError(f"bad value for 'model.pretrained': {cfg.model.pretrained!r} (expected false, true, or the "
                          "path of a selfsup export, a local-dir: folder or a .safetensors file)")
    if cfg.views.backend == "lightly" and cfg.views.n_global != 2:
        raise ConfigError("bad value for 'views.n_global': views.backend=lightly (DINOTransform) makes exactly 2 "
                          "global views")
    positive = {
        "train.batch_size": cfg.train.batch_size,
        "train.grad_accum": cfg.train.grad_accum,
        "train.log_every": cfg.train.log_every,
        "train.keep_last": cfg.train.keep_last,
        "train.collapse_patience": cfg.train.collapse_patience,
        "monitor.every": cfg.monitor.every,
        "monitor.max_train": cfg.monitor.max_train,
        "monitor.max_val": cfg.monitor.max_val,
        "monitor.k": cfg.monitor.k,
        "monitor.batch_size": cfg.monitor.batch_size,
        "views.global_crop_size": cfg.views.global_crop_size,
        "optim.lr": cfg.optim.lr,
    }
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"bad value for '{key}': {value} (expected a number > 0)")
    if cfg.train.epochs <= 0 and not cfg.train.max_steps:
        raise ConfigError("bad value for 'train.epochs': expected > 0 (or set train.max_steps)")
    _check_views(cfg, spec)
    patch = cfg.model.args.get("patch_size")
    if patch:
        sizes = [("views.global_crop_size", cfg.views.global_crop_size)]
        if cfg.views.n_local:
            sizes.append(("views.local_crop_size", cfg.views.local_crop_size))
        for key, size in sizes:
            if size % int(patch):
                raise ConfigError(
                    f"bad value for '{key}': {size} is not divisible by model.args.patch_size={patch}"
                )
