"""End to end on the CPU: pretrain a few steps, resume = no interruption, export loads in plain timm."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from selfsup.errors import CheckpointError
from selfsup.export import export
from selfsup.train.checkpoint import list_checkpoints
from selfsup.train.loop import pretrain
from tests.fixtures.pipeline import last_weights, make_shards, metrics, tiny_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("data"))


def test_resume_equals_uninterrupted(tmp_path, shards):
    full = pretrain(tiny_config(tmp_path / "full", shards, "train.max_steps=6", "train.save_every=6"))
    assert full["steps"] == 6
    pretrain(tiny_config(tmp_path / "cut", shards, "train.max_steps=3", "train.save_every=3"))
    resumed = pretrain(tiny_config(tmp_path / "cut", shards, "train.max_steps=6", "train.save_every=3",
                                   "train.resume=auto"))
    assert resumed["steps_this_run"] == 3
    a, b = last_weights(tmp_path / "full"), last_weights(tmp_path / "cut")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical on the CPU
    # the DINO center is part of the state too
    assert "criterion.center" in a and a["criterion.center"].abs().sum() > 0
    lines = metrics(tmp_path / "full")
    assert [x["step"] for x in lines] == list(range(1, 7))
    assert {"loss", "lr", "wd", "momentum", "teacher_temp", "images_per_s", "embed_std",
            "teacher_entropy"} <= set(lines[0])
    assert (tmp_path / "full" / "config.yaml").is_file()


def test_keep_last_and_atomic_names(tmp_path, shards):
    pretrain(tiny_config(tmp_path / "r", shards, "train.max_steps=4", "train.save_every=1", "train.keep_last=2"))
    names = [p.name for p in list_checkpoints(tmp_path / "r")]
    assert names == ["step_00000003", "step_00000004"]
    assert not list((tmp_path / "r" / "checkpoints").glob(".tmp-*"))


def test_export_round_trip_plain_timm(tmp_path, shards):
    run = tmp_path / "run"
    pretrain(tiny_config(run, shards, "train.max_steps=3"))
    result = export(run, tmp_path / "export")
    out = Path(result["out_dir"])
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "metrics.jsonl", "model.safetensors",
                                                     "selfsup_export.json"]
    assert (sorted(json.loads((out / "selfsup_export.json").read_text())["files"])
            == sorted(p.name for p in out.iterdir()))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "vit_tiny_patch16_224" and cfg["selfsup"]["encoder"] == "teacher"
    assert cfg["selfsup"]["step"] == 3 and cfg["pretrained_cfg"]["input_size"] == [3, 32, 32]

    # plain timm, in a fresh interpreter without selfsup on the path, every key matched (strict load)
    code = (
        "import sys, timm, torch; sys.path = [p for p in sys.path if 'ssl' not in p];"
        f"m = timm.create_model('local-dir:{out}', pretrained=True).eval();"
        "x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1));"
        f"torch.save(m(x), '{tmp_path / 'feat.pt'}')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
    feats = torch.load(tmp_path / "feat.pt", weights_only=True)

    # the same features as the project's own teacher backbone
    from selfsup.build import build_method
    from selfsup.config import load_config
    from selfsup.export import load_checkpoint_weights

    method = build_method(load_config(run / "config.yaml"))
    load_checkpoint_weights(method, list_checkpoints(run)[-1])
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = method.teacher_backbone.eval()(x)
    assert (feats - ours).abs().max() < 1e-5

    # and the weights are not a fresh random init
    fresh = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, depth=2,
                              dynamic_img_size=True)
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert any(not torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), loaded.state_dict().values()))


def test_export_refuses_incomplete_and_mismatched(tmp_path, shards):
    run = tmp_path / "run"
    pretrain(tiny_config(run, shards, "train.max_steps=2"))
    # no complete checkpoint -> clear error
    empty = tmp_path / "empty"
    (empty / "checkpoints" / ".tmp-step_00000005").mkdir(parents=True)
    shutil.copy(run / "config.yaml", empty / "config.yaml")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        export(empty, tmp_path / "out")
    # a checkpoint from another architecture -> the mismatched keys are listed
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("depth: 2", "depth: 3"))
    ckpt = list_checkpoints(run)[-1]
    (ckpt / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(CheckpointError, match=r"missing: .*blocks\.2"):
        export(run, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bf16_and_grad_accum_on_cpu(tmp_path, shards):
    summary = pretrain(tiny_config(tmp_path / "r", shards, "train.max_steps=2", "train.mixed_precision=bf16",
                                   "train.grad_accum=2"))
    assert summary["global_batch"] == 8 and summary["steps"] == 2
    assert torch.isfinite(torch.tensor(summary["final"]["loss"]))
    assert list((tmp_path / "r").rglob("events.out.tfevents*"))  # TensorBoard through accelerate's tracker


def test_lightly_view_backend_trains(tmp_path, shards):
    summary = pretrain(tiny_config(tmp_path / "r", shards, "train.max_steps=1", "views.backend=lightly"))
    assert summary["steps"] == 1 and torch.isfinite(torch.tensor(summary["final"]["loss"]))


def test_compiled_backbones_train_like_eager_and_export(tmp_path, shards):
    """train.compile=true (torch.compile on the CPU, inductor + the system C compiler): same keys and, up to
    float rounding, the same weights as the eager run; the export is checked by its plain-timm reload."""
    pretrain(tiny_config(tmp_path / "eager", shards, "train.max_steps=3", "train.save_every=3"))
    pretrain(tiny_config(tmp_path / "compiled", shards, "train.max_steps=3", "train.save_every=3",
                         "train.compile=true"))
    a, b = last_weights(tmp_path / "eager"), last_weights(tmp_path / "compiled")
    assert a.keys() == b.keys()  # compiling in place leaves state-dict keys unchanged (no `_orig_mod.`)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert export(tmp_path / "compiled", tmp_path / "export")["reload_max_abs_diff"] < 1e-5
