"""Faults: non-finite steps are skipped, checkpoint writes never destroy the previous one, pickles that
would run code are refused, and bad CLI input fails early with one line."""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from selfsup.cli import main as cli_main
from selfsup.errors import CheckpointError, TrainingError
from selfsup.methods._dino_model import DINO
from selfsup.train.checkpoint import latest_checkpoint, list_checkpoints
from selfsup.train.loop import pretrain
from tests.fixtures.pipeline import last_weights, make_shards, metrics, tiny_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("fault_data"))


def _nan_at(steps: set[int]):
    """Patch DINO.forward so that the loss is NaN at the given steps."""
    original = DINO.forward

    def forward(self, views, ctx):
        out = original(self, views, ctx)
        if ctx.step in steps:
            out.loss = out.loss * float("nan")
        return out

    return forward


def test_non_finite_step_is_skipped(tmp_path, shards, monkeypatch):
    monkeypatch.setattr(DINO, "forward", _nan_at({2}))
    summary = pretrain(tiny_config(tmp_path / "r", shards, "train.max_steps=3", "train.save_every=1",
                                   "train.keep_last=5"))
    assert summary["bad_steps"] == 1
    steps = list_checkpoints(tmp_path / "r")
    before, after = (load_file(str(steps[i] / "model.safetensors")) for i in (1, 2))  # step 2 -> step 3
    # step index 2 (the third step) was skipped: no optimizer update, no EMA update, no center update
    for k in before:
        assert torch.equal(before[k], after[k]), k


def test_too_many_bad_steps_stop_with_resume_hint(tmp_path, shards, monkeypatch):
    monkeypatch.setattr(DINO, "forward", _nan_at({2, 3, 4}))
    cfg = tiny_config(tmp_path / "r", shards, "train.max_steps=8", "train.save_every=2", "train.max_bad_steps=3")
    with pytest.raises(TrainingError, match=r"3 non-finite steps in a row .*step_00000002.*train.resume=auto"):
        pretrain(cfg)
    assert latest_checkpoint(tmp_path / "r").name == "step_00000002"


def test_failed_checkpoint_write_keeps_previous(tmp_path, shards, monkeypatch):
    run = tmp_path / "r"
    pretrain(tiny_config(run, shards, "train.max_steps=2", "train.save_every=2"))
    good = latest_checkpoint(run)
    from accelerate import Accelerator

    def disk_full(self, output_dir=None, **kw):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Accelerator, "save_state", disk_full)
    with pytest.raises(CheckpointError, match=r"no space left on device while writing checkpoint step 4 .*; the "
                                              r"previous checkpoint step 2 is intact"):
        pretrain(tiny_config(run, shards, "train.max_steps=4", "train.save_every=2", "train.resume=auto"))
    assert latest_checkpoint(run) == good
    assert load_file(str(good / "model.safetensors"))  # still loads
    assert not list((run / "checkpoints").glob(".tmp-*"))


KILL_DURING_SAVE = r"""
import os, signal, sys
from pathlib import Path
from accelerate import Accelerator
from selfsup.train.loop import pretrain
from tests.fixtures.pipeline import tiny_config

real = Accelerator.save_state
def save_then_die(self, output_dir=None, **kw):
    if output_dir.endswith("step_00000004"):
        real(self, output_dir=output_dir, **kw)   # files written, but the folder was never renamed
        os.kill(os.getpid(), signal.SIGKILL)
    return real(self, output_dir=output_dir, **kw)
Accelerator.save_state = save_then_die
pretrain(tiny_config(Path(sys.argv[1]), Path(sys.argv[2]), "train.max_steps=6", "train.save_every=2"))
"""


def test_kill_during_checkpoint_write_keeps_previous(tmp_path, shards):
    run = tmp_path / "r"
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'ssl'}:{ROOT}", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(run), str(shards)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]
    assert list((run / "checkpoints").glob(".tmp-step_00000004"))  # the interrupted save
    assert latest_checkpoint(run).name == "step_00000002"
    # resume=auto picks the complete one and finishes the run
    summary = pretrain(tiny_config(run, shards, "train.max_steps=6", "train.save_every=2", "train.resume=auto"))
    assert summary["steps"] == 6 and summary["steps_this_run"] == 4


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['SELFSUP_PWNED']}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_that_runs_code_is_refused(tmp_path, shards, monkeypatch):
    run = tmp_path / "r"
    pretrain(tiny_config(run, shards, "train.max_steps=2", "train.save_every=2"))
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SELFSUP_PWNED", str(marker))
    ckpt = latest_checkpoint(run)
    with open(ckpt / "optimizer.bin", "wb") as f:
        pickle.dump({"state": _RunsCode()}, f)
    with pytest.raises(CheckpointError, match="refused to load: a file needs arbitrary unpickling"):
        pretrain(tiny_config(run, shards, "train.max_steps=4", "train.resume=auto"))
    assert not marker.exists()


def test_resume_from_other_architecture_lists_keys(tmp_path, shards):
    run = tmp_path / "r"
    pretrain(tiny_config(run, shards, "train.max_steps=2", "train.save_every=2"))
    with pytest.raises(CheckpointError, match=r"does not match .*missing: .*blocks\.2"):
        pretrain(tiny_config(run, shards, "model.args.depth=3", "train.max_steps=4", "train.resume=auto"))


def _fp16_cpu_accelerator(init_scale: float):
    """What accelerate builds for fp16 on a GPU (fp16 autocast + a GradScaler), on the CPU: accelerate itself has
    no fp16 on the CPU (selfsup refuses it there), but torch has both, so the loop's scaler path can be tested."""
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    return accelerator


def test_fp16_overflow_lowers_the_loss_scale_instead_of_counting_bad_steps(tmp_path, shards):
    run = tmp_path / "r"
    # At a loss scale of 1024 the first fp16 backward passes overflow; more overflows in a row than
    # max_bad_steps must not stop the run: the scaler skips those updates and halves the scale.
    summary = pretrain(tiny_config(run, shards, "train.max_steps=6", "train.save_every=6", "train.max_bad_steps=1"),
                       accelerator=_fp16_cpu_accelerator(1024.0))
    logs = metrics(run)
    assert summary["bad_steps"] == 0
    assert not math.isfinite(logs[0]["grad_norm"]) and math.isfinite(logs[-1]["grad_norm"])
    saved_scale = logs[-1]["loss_scale"]
    assert saved_scale < 1024.0 and all(a["loss_scale"] >= b["loss_scale"] for a, b in zip(logs, logs[1:]))
    assert (list_checkpoints(run)[-1] / "scaler.pt").is_file()
    w = last_weights(run)
    assert all(torch.isfinite(v).all() for v in w.values())

    # resume restores the scaler: the scale continues from the checkpoint, not from init_scale
    AcceleratorState._reset_state(reset_partial_state=True)
    pretrain(tiny_config(run, shards, "train.max_steps=7", "train.resume=auto", "train.max_bad_steps=1"),
             accelerator=_fp16_cpu_accelerator(1024.0))
    resumed = metrics(run)[-1]
    assert resumed["step"] == 7 and resumed["loss_scale"] <= saved_scale


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.mixed_precision=fp16", "fp16 needs a GPU"),
        ("data.shards=/nonexistent/shard-{000000..000003}.tar", "/nonexistent"),
        ("views.global_crop_size=36", "not a multiple of the model's patch size 8"),
        ("train.resume=/nonexistent/ckpt", "not a complete checkpoint folder"),
        ("train.batch_size=64", "smaller than one global batch"),
    ],
)
def test_cli_bad_input_one_line_exit_2(tmp_path, shards, capsys, override, fragment):
    config = ROOT / "configs" / "dino_vit_tiny_cpu.yaml"
    if "global_crop_size" in override:  # the patch size is known only by the model, not by model.args
        config = tmp_path / "patch8.yaml"
        config.write_text("model: {name: vit_small_patch8_224, args: {img_size: 32, depth: 1, embed_dim: 48, "
                          "num_heads: 2}}\nviews: {local_crop_size: 16}\ntrain: {device: cpu, batch_size: 4}\n")
    base = [f"run.dir={tmp_path / 'r'}", f"data.shards={shards}", "train.max_steps=1", "train.batch_size=4"]
    key = override.split("=", 1)[0]
    args = ["pretrain", str(config), *[o for o in base if not o.startswith(key + "=")], override]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selfsup: error:") and fragment in err[0], err
    assert not list((tmp_path / "r").glob("checkpoints/*"))


def test_training_over_a_corpus_of_broken_samples(tmp_path, monkeypatch):
    """Broken samples inside the shards (written around the writer's checks): training finishes, counts every
    skip by its reason, and consumes every good sample of the epoch exactly once."""
    from collections import Counter

    import webdataset as wds
    from PIL import Image

    from selfsup.data.decode import REASON_NO_IMAGE
    from tests.fixtures.corpus import BOMB_LIMIT, OK, make_bad_corpus
    from tests.fixtures.pipeline import make_image_folder

    expected = make_bad_corpus(tmp_path / "corpus")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", BOMB_LIMIT)
    good_extra = sorted(make_image_folder(tmp_path / "good", n_per_class=8).rglob("*.jpg"))  # 16 more good images
    (tmp_path / "shards").mkdir()
    with wds.TarWriter(str(tmp_path / "shards" / "shard-000000.tar")) as w:
        for name in sorted(expected):
            stem, ext = name.rsplit(".", 1)
            w.write({"__key__": stem, ext: (tmp_path / "corpus" / name).read_bytes()})
        w.write({"__key__": "label_only", "cls": b"3"})  # a member with no image
        for i, path in enumerate(good_extra):
            w.write({"__key__": f"good{i:02d}", "jpg": path.read_bytes()})
    n_good = sum(o == OK for o in expected.values()) + len(good_extra)
    n_raw = len(expected) + 1 + len(good_extra)
    assert n_good % 4 == 0, n_good  # whole batches of 4

    summary = pretrain(tiny_config(tmp_path / "r", tmp_path / "shards", f"train.max_steps={n_good // 4}",
                                   "data.max_bad_fraction=1.0", "data.samples_per_epoch=1000"))
    want = Counter(o for o in expected.values() if o != OK) + Counter({REASON_NO_IMAGE: 1})
    assert Counter(summary["skipped_samples"]) == want
    # every good sample of epoch 0 was used and nothing from epoch 1: the reader sits at the end of epoch 0
    state = json.loads((latest_checkpoint(tmp_path / "r") / "train_state_0.json").read_text())
    assert state["samples_seen"] == n_good
    assert state["data"]["positions"]["0"] == [0, n_raw]
