"""The config schema: one dataclass per section, every default in one place.

The ``method`` section is assembled from the method registry (:mod:`selfsup.registry`): ``method.name`` plus one
``method.NAME`` section per registered method, each the ``config`` dataclass of its spec (defined beside the method,
in ``selfsup/methods/NAME.py``). OmegaConf reads these dataclasses as a structured config
(:mod:`selfsup.config.loading`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from selfsup import registry


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
    max_steps: int | None = None  # stop early at this optimizer step (the schedules still span `epochs`)
    grad_accum: int = 1
    mixed_precision: str = "no"  # no | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False  # torch.compile the backbones
    sync_bn: bool = True  # BatchNorm statistics over the global batch (SyncBatchNorm) under DDP on GPUs
    log_every: int = 10
    save_every: int = 1000  # steps between checkpoints; 0 = only at the end
    keep_last: int = 3
    resume: str | None = None  # null | auto | path to a checkpoint folder
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

    license: str | None = None  # Hub license id (e.g. apache-2.0, cc-by-nc-4.0); null = none stated
    # the export's pooled output, timm's global_pool of a ViT: token (class token) | avg | max | avgmax (patch
    # tokens); null = the backbone's own. The kNN monitor scores the same features; training is not changed.
    global_pool: str | None = None


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
