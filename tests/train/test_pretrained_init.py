"""model.pretrained: continue pretraining from timm weights, a selfsup export, a local-dir: folder or a .safetensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from selfsup.build import build_method
from selfsup.errors import CheckpointError, ConfigError
from selfsup.export import export
from selfsup.models.backbone import create_backbone
from selfsup.train.best import read_best
from selfsup.train.checkpoint import read_checkpoint_weights
from selfsup.train.loop import pretrain
from tests.conftest import TINY_VIT
from tests.fixtures.pipeline import make_hard_folder, make_shards, metrics, tiny_config


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """Run A: a few DINO steps, exported."""
    tmp = tmp_path_factory.mktemp("pre")
    shards = make_shards(tmp)
    pretrain(tiny_config(tmp / "a", shards, "train.max_steps=4"))
    export(tmp / "a", tmp / "a_export")
    return tmp, shards


def prefixed(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def test_true_asks_timm_for_its_weights(monkeypatch, tmp_path):
    seen = []
    real = timm.create_model

    def spy(name, pretrained=False, **kwargs):
        seen.append(pretrained)
        return real(name, pretrained=False, **kwargs)  # never download in a test

    monkeypatch.setattr(timm, "create_model", spy)
    cfg = tiny_config(tmp_path, tmp_path, "model.pretrained=true")
    assert cfg.model.pretrained is True  # the dotlist's `true` is the boolean, not a path
    build_method(cfg)
    assert seen and all(p is True for p in seen)
    seen.clear()
    build_method(cfg, pretrained=False)  # resume / export: the checkpoint's weights are loaded instead
    assert seen and not any(seen)


def test_true_without_network_is_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing is downloaded: the hub client only looks in its cache
    monkeypatch.setenv("HF_HOME", "/nonexistent-selfsup-test-cache")
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as e:
        create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"], pretrained=True)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith("model.pretrained=true: timm could not load")
    assert "model.pretrained=PATH" in msg


def test_run_b_starts_from_run_a_export_and_keeps_at_least_its_knn(tmp_path, run_a, monkeypatch):
    tmp, shards = run_a
    exported = load_file(str(tmp / "a_export" / "model.safetensors"))
    labelled = make_hard_folder(tmp_path / "labelled")
    import selfsup.train.loop as loop

    at_start = {}

    def spy(cfg, **kwargs):  # the method run B trains, as built (step 0)
        method = build_method(cfg, **kwargs)
        at_start.update({k: v.clone() for k, v in method.state_dict().items()})
        return method

    monkeypatch.setattr(loop, "build_method", spy)
    run_b = tmp_path / "b"
    pretrain(tiny_config(run_b, shards, f"model.pretrained={tmp / 'a_export'}", f"monitor.data={labelled}",
                         "monitor.every=3", "monitor.max_train=30", "monitor.max_val=18", "train.max_steps=6"))
    # step 0 of run B is run A's export, bit for bit, in the student and in the teacher
    for prefix in ("student_backbone.", "teacher_backbone."):
        got = prefixed(at_start, prefix)
        assert got.keys() == exported.keys()
        assert all(torch.equal(got[k], exported[k]) for k in exported), prefix
    best = read_best(run_b)
    first = metrics(run_b)[0]
    assert first["step"] == 0
    # B trained on: its last weights moved away from A's
    last = prefixed(read_checkpoint_weights(run_b / "checkpoints" / "step_00000006"), "teacher_backbone.")
    assert any(not torch.equal(last[k], exported[k]) for k in exported)

    # B's export (the monitor's best) scores at least A's export on the same held-out images
    from selfsup.config import MonitorConfig
    from selfsup.train.monitor import KnnMonitor

    export(run_b, tmp_path / "b_export")
    mon = KnnMonitor(MonitorConfig(data=str(labelled), max_train=30, max_val=18), size=32,
                     mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], run_dir=tmp_path / "none", seed=0,
                     stop_step=1)
    knn = {name: mon.score(timm.create_model(f"local-dir:{tmp_path / name if name == 'b_export' else tmp / name}",
                                             pretrained=True).eval(), torch.device("cpu"))
           for name in ("a_export", "b_export")}
    assert knn["a_export"] == pytest.approx(first["knn_top1"], abs=1e-6)  # step 0 of B = A
    assert knn["b_export"] >= knn["a_export"]
    assert knn["b_export"] == pytest.approx(best["score"], abs=1e-6)


def test_heads_fresh_and_every_backbone_initialised(tmp_path, run_a):
    tmp, shards = run_a
    exported = load_file(str(tmp / "a_export" / "model.safetensors"))
    a_ckpt = read_checkpoint_weights(tmp / "a" / "checkpoints" / "step_00000004")
    cfg = tiny_config(tmp_path, shards, f"model.pretrained=local-dir:{tmp / 'a_export'}")
    torch.manual_seed(0)
    method = build_method(cfg)
    state = method.state_dict()
    for prefix in ("student_backbone.", "teacher_backbone."):
        assert all(torch.equal(prefixed(state, prefix)[k], exported[k]) for k in exported)
    torch.manual_seed(0)
    fresh = build_method(tiny_config(tmp_path, shards)).state_dict()
    for k in state:  # the heads are a fresh init: those of a run without model.pretrained, not run A's
        if "head" in k:
            assert torch.equal(state[k], fresh[k]), k
    assert any(not torch.equal(state[k], a_ckpt[k]) for k in state if k.startswith("student_head."))


def test_safetensors_file_and_classifier_dropped(tmp_path, run_a):
    tmp, _ = run_a
    state = load_file(str(tmp / "a_export" / "model.safetensors"))
    spec = dict(TINY_VIT["model_args"], depth=2)
    save_file({**state, "head.weight": torch.zeros(10, 192), "head.bias": torch.zeros(10)},
              str(tmp_path / "w.safetensors"))
    model = create_backbone(TINY_VIT["name"], model_args=spec, pretrained=str(tmp_path / "w.safetensors"))
    assert all(torch.equal(model.state_dict()[k], state[k]) for k in state)


@pytest.mark.parametrize("depth,word", [(3, "missing key 'blocks.2."), (1, "unexpected key 'blocks.1.")])
def test_architecture_mismatch_is_one_line_naming_the_key(tmp_path, run_a, depth, word, capsys):
    tmp, shards = run_a
    spec = dict(TINY_VIT["model_args"], depth=depth)
    with pytest.raises(CheckpointError) as e:
        create_backbone(TINY_VIT["name"], model_args=spec, pretrained=str(tmp / "a_export"))
    assert len(str(e.value).splitlines()) == 1 and word in str(e.value) and "model.pretrained=" in str(e.value)
    # and from the command line: exit code 2, one line, nothing written to the run folder
    from selfsup.cli import main

    run = tmp_path / "r"
    code = main(["pretrain", str(Path(__file__).resolve().parents[2] / "configs" / "dino_vit_tiny_cpu.yaml"),
                 f"run.dir={run}", f"data.shards={shards}", "model.args.img_size=32", f"model.args.depth={depth}",
                 "views.global_crop_size=32", "views.local_crop_size=16", f"model.pretrained={tmp / 'a_export'}",
                 "data.num_workers=0", "train.batch_size=4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and word in err[0]
    assert not (run / "checkpoints").exists()


def test_pretrained_value_must_be_a_bool_or_a_path(tmp_path):
    with pytest.raises(ConfigError, match="bad value for 'model.pretrained': 123 .*expected false, true, or the path"):
        tiny_config(tmp_path, tmp_path, "model.pretrained=123")


@pytest.mark.parametrize("value,word", [("nowhere/export", "does not exist"),
                                        ("{tmp}/a/metrics.jsonl", "not a .safetensors"),
                                        ("{tmp}/a", "no model.safetensors")])
def test_bad_paths(run_a, value, word):
    tmp, _ = run_a
    with pytest.raises(ConfigError, match=word):
        create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"], pretrained=value.format(tmp=tmp))
