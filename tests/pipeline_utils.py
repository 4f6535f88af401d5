"""Helpers for end-to-end tests: a small generated image folder, its shards, and a tiny run config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.launch_utils import merge_overrides
from selfsup.config import Config, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def make_image_folder(root: Path, n_per_class: int = 12, classes: int = 2, size: int = 40, seed: int = 0) -> Path:
    """Coloured noise images whose class is the dominant colour channel."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 120, (size, size, 3), dtype=np.uint8)
            arr[..., c % 3] += 120
            Image.fromarray(arr).save(d / f"img{i:03d}.jpg", quality=90)
    return root


def make_hard_folder(root: Path, n: int = 48, classes: int = 3, size: int = 32, seed: int = 0, tint: int = 25) -> Path:
    """Labelled images with a weak class cue (a faint tint under strong noise): kNN is neither 0 nor 1."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % classes
        arr = rng.integers(0, 200, (size, size, 3)).astype(np.int16)
        arr[..., c] += tint
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(root / f"c{c}" / f"{i:03d}.png")
    return root


def make_shards(tmp: Path, n_per_class: int = 12, max_per_shard: int = 8) -> Path:
    from selfsup.data.shard_writer import write_shards

    folder = make_image_folder(tmp / "images", n_per_class=n_per_class)
    out = tmp / "shards"
    write_shards(folder, out, max_per_shard=max_per_shard, progress=False)
    return out


def tiny_config(run_dir: Path, shards: Path, *extra: str, method: str = "dino") -> Config:
    """A DINO config small enough for a test: 2-block ViT, 32/16 px crops, batch 4. ``extra`` overrides replace
    the defaults below key by key (the command line refuses a key given twice)."""
    defaults = [
        f"run.dir={run_dir}", f"data.shards={shards}", "data.num_workers=0", "data.shuffle_buffer=16",
        "model.args.img_size=32", "model.args.depth=2", "views.global_crop_size=32", "views.local_crop_size=16",
        "views.n_local=2", "method.dino.out_dim=128", "method.dino.hidden_dim=32", "method.dino.bottleneck_dim=16",
        "train.batch_size=4", "train.epochs=2", "train.log_every=1", "train.progress=false", "train.mixed_precision=no",
        "optim.warmup_epochs=0.5", "method.dino.freeze_last_layer_epochs=0.2", f"method.name={method}",
    ]
    return load_config(CONFIGS / "dino_vit_tiny_cpu.yaml", merge_overrides(*defaults, *extra))


def last_weights(run_dir: Path) -> dict:
    """The model tensors of a run's newest complete checkpoint."""
    from selfsup.train.checkpoint import latest_checkpoint, read_checkpoint_weights

    return read_checkpoint_weights(latest_checkpoint(run_dir))


def assert_same_weights(run_a: Path, run_b: Path, why: str = "") -> None:
    """The newest checkpoints of two runs hold the same tensors, bit for bit (what exact resume promises on the
    CPU)."""
    import torch

    a, b = last_weights(run_a), last_weights(run_b)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs {why}".strip()


def logged_steps(run_dir: Path) -> list[int]:
    """The steps in a run's metrics.jsonl (none before the first is logged)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(x)["step"] for x in path.read_text().splitlines()] if path.is_file() else []


def check_preempted_run(run_dir: Path, output: str, processes: int) -> int:
    """A run stopped by SIGTERM: one line, one checkpoint, at the last logged step and written by every process, no
    temporary folder; returns that step."""
    from selfsup.train.checkpoint import list_checkpoints

    assert sum("pre-empted (SIGTERM): saved " in line for line in output.splitlines()) == 1, output[-3000:]
    reached = logged_steps(run_dir)[-1]
    assert [c.name for c in list_checkpoints(run_dir)] == [f"step_{reached:08d}"], output[-3000:]
    ckpt = list_checkpoints(run_dir)[0]
    assert sorted(p.name for p in ckpt.glob("train_state_*.json")) == [f"train_state_{r}.json" for r in range(processes)]
    assert f"{ckpt} at step {reached}" in output and not list((run_dir / "checkpoints").glob(".tmp-*"))
    return reached
