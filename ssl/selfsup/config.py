"""Configuration: typed defaults in one place, YAML overrides, CLI dotlist on top.

Every default lives in the dataclasses below (the schema); the ``method`` section is assembled from the method
registry (:mod:`selfsup.registry`): a ``method.NAME`` section per method, defined in ``selfsup/methods/NAME.py``.
A YAML file under ``configs/`` overrides a few of them, optionally on top of another file named by ``base:``;
``key=value`` pairs from the command line come last (DINOv2 style: ``merge(defaults, file, cli)``). The resolved
config is saved in the run directory. Nothing below the CLI imports omegaconf: :func:`load_config` returns typed
dataclass objects that are turned into keyword arguments at the edge.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from selfsup import registry
from selfsup.config_yaml import read_config_yaml
from selfsup.errors import ConfigError

MIXED_PRECISION = ("no", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
VIEW_BACKENDS = ("fast", "lightly")
ON_COLLAPSE = ("stop", "warn")
ON_PLATEAU = ("warn", "stop")


@dataclass
class RunConfig:
    dir: str = "runs/default"  # output folder: config.yaml, metrics.jsonl, checkpoints/, tensorboard/
    seed: int = 0
    # a new run (no train.resume) in a non-empty run.dir is refused unless true; true removes the previous run's
    # checkpoints/, tensorboard/, config.yaml, metrics.jsonl and summary.json (other files stay)
    overwrite: bool = False


@dataclass
class DataConfig:
    shards: str = ""  # brace pattern, a folder of .tar files, or a text file with one shard per line
    samples_per_epoch: int = 0  # nominal epoch length in samples; 0 = from the shard index, else count the shards
    # shard index with the samples of each shard (docs/launch.md): "" = look beside the shards (selfsup_shards.json,
    # a wids index, img2dataset's *_stats.json); a path or URL = that selfsup_shards.json or wids index; none = count
    shard_index: str = ""
    # Samples (still encoded: a few kB to a few hundred kB each) in each worker's shuffle buffer.
    shuffle_buffer: int = 5000
    shard_interleave: int = 4  # shards each worker reads at once, a sample from each in turn
    num_workers: int = 2
    pin_memory: bool = True
    max_bad_fraction: float = 0.01  # stop when more than this fraction of a window of samples is bad
    bad_window: int = 1000
    draft_decode: bool = True  # decode JPEGs at reduced size when crops are much smaller (Pillow draft)
    # a sample with a member (tar header size) larger than this is skipped and counted, never read into memory
    max_sample_bytes: int = 256 * 2**20
    allow_pipe: bool = False  # accept `pipe:CMD` shard URLs, which run CMD in a shell (a shard list is data otherwise)


@dataclass
class ViewsConfig:
    """Multi-crop views (DINO): ``n_global`` crops of ``global_crop_size`` + ``n_local`` of ``local_crop_size``."""

    backend: str = "fast"  # fast (ours, same ops, ~2-3x faster per core) | lightly (lightly's DINOTransform)
    n_global: int = 2
    global_crop_size: int = 224
    global_crop_scale: list[float] = field(default_factory=lambda: [0.4, 1.0])
    n_local: int = 10
    local_crop_size: int = 96
    local_crop_scale: list[float] = field(default_factory=lambda: [0.05, 0.4])
    # DINO's augmentations: Gaussian blur probability of (first global, other global, local) views, and the
    # solarization probability of the second global view. Small images (CIFAR-size) train better without blur.
    blur_probs: list[float] = field(default_factory=lambda: [1.0, 0.1, 0.5])
    solarize_prob: float = 0.2
    # flips and colour: DINO's defaults; images with no up, down or colour (cells, slides, X-rays, satellite tiles)
    # may take vertical flips and 90-degree turns, and less or no colour jitter
    hflip_prob: float = 0.5
    vflip_prob: float = 0.0
    rot90_prob: float = 0.0  # probability of a 90-degree turn (lightly's RandomRotate); with both flips: all 8 poses
    cj_prob: float = 0.8  # colour jitter: brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, times cj_strength
    cj_strength: float = 1.0
    gray_prob: float = 0.2
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class ModelConfig:
    name: str = "vit_small_patch16_224"  # any timm model name
    drop_path_rate: float = 0.1
    args: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model kwargs (img_size, patch_size...)
    # initial backbone weights: false | true (timm's published weights for `name`, needs a network) | a selfsup
    # export folder, a `local-dir:` folder or a .safetensors file (student and teacher alike; heads start fresh)
    pretrained: Any = False


def method_config() -> type:
    """``MethodConfig``: ``name`` (one of the registered methods, default :data:`selfsup.registry.DEFAULT`) and a
    ``method.NAME`` section per registered method, in the registry's order."""
    specs = registry.specs()
    fields: list[tuple[str, Any, Any]] = [("name", str, field(default=registry.DEFAULT))]
    fields += [(spec.name, spec.config, field(default_factory=spec.config)) for spec in specs.values()]
    cls = dataclasses.make_dataclass("MethodConfig", fields, namespace={
        "__doc__": f"method.name (one of: {', '.join(specs)}) and the section of each method."})
    cls.__module__ = __name__  # make_dataclass's `module` argument needs Python 3.12
    return cls


MethodConfig = method_config()


@dataclass
class OptimConfig:
    lr: float = 5e-4  # base lr for a global batch of 256: lr = lr * global_batch / 256
    min_lr: float = 1e-6
    warmup_epochs: float = 10
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    clip_grad: float = 3.0  # 0 = off
    fused: bool = True  # fused AdamW where the device supports it


@dataclass
class TrainConfig:
    batch_size: int = 64  # per process
    epochs: float = 100  # nominal epochs of data.samples_per_epoch samples
    max_steps: Optional[int] = None  # stop early at this optimizer step (the schedules still span `epochs`)
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the backbones
    sync_bn: bool = True  # BatchNorm statistics over the global batch (SyncBatchNorm) under DDP on GPUs
    log_every: int = 10
    save_every: int = 1000  # steps between checkpoints; 0 = only at the end
    keep_last: int = 3
    resume: Optional[str] = None  # null | auto | path to a checkpoint folder
    resume_elastic: bool = False  # allow resuming on another number of processes/workers (restarts the epoch)
    max_bad_steps: int = 5  # non-finite loss/grad steps in a row before stopping
    collapse_patience: int = 5  # logs in a row with a collapse signal past its threshold (docs/monitor.md)
    on_collapse: str = "stop"  # stop | warn
    # plateau watch (docs/monitor.md): the loss within plateau_tolerance of its chance level (or DINO's teacher entropy
    # of ln(out_dim)) for plateau_steps steps after the warmup is named in one line; 0 = off
    plateau_steps: int = 300
    plateau_tolerance: float = 0.05
    on_plateau: str = "warn"  # warn | stop
    progress: bool = True
    # accelerate trackers the metrics go to (tensorboard, wandb, mlflow, comet_ml, aim, clearml, dvclive, ...)
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])


@dataclass
class ExportConfig:
    """What ``selfsup export`` writes into the shared folder besides the weights (config.json, README.md)."""

    license: Optional[str] = None  # Hub license id (e.g. apache-2.0, cc-by-nc-4.0); null = none stated


@dataclass
class MonitorConfig:
    """kNN monitor of a run (docs/monitor.md): DINO's weighted kNN top-1 of the exported encoder on a held-out split
    of a small labelled set, every ``every`` steps; the best score's weights are kept in ``checkpoints/best/``."""

    data: str = ""  # labelled image folder (ROOT/<class>/<image>) or shards with `cls`; "" = no monitor
    every: int = 500  # steps between evaluations (also at the start of a fresh run and at the last step)
    max_train: int = 1000  # images of the kNN memory bank (a seeded random selection of monitor.data)
    max_val: int = 500  # held-out images scored (disjoint from the bank)
    k: int = 20
    batch_size: int = 256  # feature extraction batch


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    export: ExportConfig = field(default_factory=ExportConfig)


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
    _check_methods(cfg)
    if not isinstance(cfg.model.pretrained, (bool, str)) or cfg.model.pretrained == "":
        raise ConfigError(f"bad value for 'model.pretrained': {cfg.model.pretrained!r} (expected false, true, or the "
                          "path of a selfsup export, a local-dir: folder or a .safetensors file)")
    if cfg.views.backend == "lightly" and cfg.views.n_global != 2:
        raise ConfigError("bad value for 'views.n_global': views.backend=lightly (DINOTransform) makes exactly 2 global views")
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
