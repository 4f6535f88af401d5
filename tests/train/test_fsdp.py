"""FSDP2 with launch/accelerate/fsdp.yaml, two CPU processes over gloo: same training as DDP, exact resume,
sharded checkpoints plus full weights that export reloads with plain timm."""

from __future__ import annotations

import json
import os
import signal

import pytest
import timm
import torch

from selfsup.errors import ConfigError
from selfsup.export import export
from selfsup.optim.adamw_state import init_adamw_state
from selfsup.train.accelerator import enable_fsdp2_on_cpu
from selfsup.train.checkpoint import list_checkpoints
from tests.fixtures.launch import FSDP, ROOT, launch, run, tiny_dino_args, wait_until
from tests.fixtures.pipeline import assert_same_weights, last_weights, make_shards

FSDP_2PROC = {"accel": FSDP, "accel_args": ("--num_processes", "2", "--mixed_precision", "no")}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("fsdp_data"), n_per_class=16, max_per_shard=4)


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory, shards):
    run_dir = tmp_path_factory.mktemp("fsdp") / "run"
    run(*tiny_dino_args(run_dir, shards, "train.save_every=8"), **FSDP_2PROC)
    return run_dir


def test_fsdp_trains_like_ddp_and_writes_sharded_plus_full_checkpoints(tmp_path, shards, fsdp_run):
    assert json.loads((fsdp_run / "summary.json").read_text())["distributed"] == "FSDP"
    ckpt = list_checkpoints(fsdp_run)[-1]
    assert ckpt.name == "step_00000008"
    assert (ckpt / "pytorch_model_fsdp_0").is_dir() and (ckpt / "optimizer_0").is_dir()  # sharded, for resume
    run(*tiny_dino_args(tmp_path / "ddp", shards, "train.save_every=8"))  # same job under DDP
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["distributed"] == "MULTI_CPU"
    a, b = last_weights(fsdp_run), last_weights(tmp_path / "ddp")
    assert set(a) == set(b)
    for k in a:  # same global batch, same data, same init: only reduction order may differ
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs between FSDP and DDP")
    # they are trained weights, not two copies of the init: student and teacher started equal and moved apart
    # by far more than the tolerance above
    drift = max((a[k] - a[k.replace("student_", "teacher_", 1)]).abs().max().item()
                for k in a if k.startswith("student_backbone."))
    assert drift > 1e-5


def test_fsdp_kill_9_mid_epoch_then_resume_equals_uninterrupted(tmp_path, shards, fsdp_run):
    p = launch(*tiny_dino_args(tmp_path / "cut", shards, "train.save_every=1"), **FSDP_2PROC)
    wait_until(p, (tmp_path / "cut" / "checkpoints" / "step_00000003").exists)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    killed_at = list_checkpoints(tmp_path / "cut")[-1].name
    assert killed_at != "step_00000008"
    run(*tiny_dino_args(tmp_path / "cut", shards, "train.save_every=8", "train.resume=auto"), **FSDP_2PROC)
    assert list_checkpoints(tmp_path / "cut")[-1].name == "step_00000008"
    assert_same_weights(fsdp_run, tmp_path / "cut", f"after resuming from {killed_at}")


def test_fsdp_run_exports_to_plain_timm(tmp_path, fsdp_run):
    result = export(fsdp_run, tmp_path / "export")
    assert result["step"] == 8 and result["reload_max_abs_diff"] < 1e-5
    model = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True)
    teacher = {k.removeprefix("teacher_backbone."): v for k, v in last_weights(fsdp_run).items()
               if k.startswith("teacher_backbone.")}
    for k, v in model.state_dict().items():
        assert torch.equal(v, teacher[k]), k


def test_fsdp1_on_cpu_is_refused_with_a_clear_error(monkeypatch):
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ConfigError, match="FSDP_VERSION=1.*fsdp_version: 2"):
        enable_fsdp2_on_cpu(None)  # refused before the accelerator is touched


def test_eager_adamw_state_changes_no_update():
    """A parameter without gradients for the first steps (DINO's frozen last layer) gets the same updates
    whether its AdamW state was created lazily or up front by init_adamw_state."""
    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5))]
    grads = [[torch.randn(4, 3), None if step < 2 else torch.randn(5)] for step in range(5)]
    results = []
    for eager in (False, True):
        params = [torch.nn.Parameter(p.detach().clone()) for p in ref]
        opt = torch.optim.AdamW(params, lr=0.1, weight_decay=0.05)
        if eager:
            assert init_adamw_state(opt) == 2
            assert init_adamw_state(opt) == 0  # idempotent
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = None if g is None else g.clone()
            opt.step()
        results.append([p.detach() for p in params])
    assert not torch.equal(results[0][1], ref[1])  # the late parameter was updated
    for lazy, eager in zip(*results):
        torch.testing.assert_close(lazy, eager, rtol=0, atol=0)


def test_fsdp_checkpoint_resumed_under_ddp_is_refused_in_one_line(tmp_path, shards, fsdp_run):
    ckpt = list_checkpoints(fsdp_run)[-1]
    p = launch(*tiny_dino_args(tmp_path / "ddp", shards, f"train.resume={ckpt}", "train.max_steps=9"))
    out, _ = p.communicate(timeout=300)
    assert p.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("selfsup: error:")]
    assert errors and "written FSDP, cannot be resumed without FSDP" in errors[0], out[-2000:]
    assert not (tmp_path / "ddp" / "checkpoints").exists()  # nothing written


def test_fsdp_moby_swin_wrapping_swin_blocks_trains_like_ddp(tmp_path, shards):
    """The README's Swin row: FSDP2 wrapping `SwinTransformerBlock`, MoBY (online + momentum encoders, queues)."""
    args = ["-m", "selfsup", "pretrain", str(ROOT / "configs" / "moby_tiny_cpu.yaml"), f"data.shards={shards}",
            "data.num_workers=1", "data.shuffle_buffer=8", "train.batch_size=4", "train.epochs=1",
            "train.progress=false", "optim.warmup_epochs=0.5", "views.global_crop_size=32", "model.args.img_size=32",
            "method.moby.queue_size=16", "method.moby.proj_hidden_dim=32", "method.moby.out_dim=16",
            "method.moby.pred_hidden_dim=32", "train.save_every=4"]
    run(*args, f"run.dir={tmp_path / 'fsdp'}", accel=FSDP, accel_args=(
        "--num_processes", "2", "--mixed_precision", "no", "--fsdp_transformer_layer_cls_to_wrap",
        "SwinTransformerBlock"))
    run(*args, f"run.dir={tmp_path / 'ddp'}")
    assert json.loads((tmp_path / "fsdp" / "summary.json").read_text())["distributed"] == "FSDP"
    a, b = last_weights(tmp_path / "fsdp"), last_weights(tmp_path / "ddp")
    assert set(a) == set(b) and any(k.endswith("queue1.bank") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4, msg=f"{k} differs between FSDP and DDP")


def test_fsdp_dinov2_masked_student_trains_like_ddp_and_exports(tmp_path, shards):
    """DINOv2: the masked student (lightly's wrapper around the timm ViT, whose Blocks FSDP2 wraps), its mask token
    in the root unit; the same steps as DDP, and the export is the teacher ViT that timm reloads."""
    extra = ("method.name=dinov2", "method.dinov2.out_dim=64", "method.dinov2.hidden_dim=32",
             "method.dinov2.bottleneck_dim=16", "train.max_steps=4", "train.save_every=4")
    run(*tiny_dino_args(tmp_path / "fsdp", shards, *extra), **FSDP_2PROC)
    run(*tiny_dino_args(tmp_path / "ddp", shards, *extra))
    a, b = last_weights(tmp_path / "fsdp"), last_weights(tmp_path / "ddp")
    assert set(a) == set(b) and "student_backbone.mask_token" in a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between FSDP and DDP")
    export(tmp_path / "fsdp", tmp_path / "export")
    model = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True, num_classes=0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)


def test_fsdp_elastic_resume_reshards_onto_more_processes(tmp_path, shards):
    """Written by 2 FSDP processes (batch 4), resumed by 4 (batch 2, same global batch): torch.distributed.checkpoint
    re-shards model and optimizer; the interrupted epoch restarts."""
    run(*tiny_dino_args(tmp_path / "run", shards, "train.max_steps=5", "train.save_every=5"), **FSDP_2PROC)
    out = run(*tiny_dino_args(tmp_path / "run", shards, "train.batch_size=2", "train.resume=auto",
                              "train.resume_elastic=true"),
              accel=FSDP, accel_args=("--num_processes", "4", "--mixed_precision", "no"))
    assert "resuming on 4 x 1; epoch 1 restarts" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["distributed"] == "FSDP" and summary["steps"] == 8 and summary["steps_this_run"] == 3
    assert summary["global_batch"] == 8
    assert list_checkpoints(tmp_path / "run")[-1].name == "step_00000008"


def test_fsdp_with_compiled_backbones_trains_like_eager_fsdp(tmp_path, shards, fsdp_run):
    run(*tiny_dino_args(tmp_path / "compiled", shards, "train.save_every=8", "train.compile=true"), **FSDP_2PROC)
    a, b = last_weights(fsdp_run), last_weights(tmp_path / "compiled")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{k}: compiled FSDP differs from eager")
