"""Distillation (method.name=distill): SEED loss against the paper, frozen teacher, adapter, resume, export."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch

from selfsup.build import build_method
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.export import export
from selfsup.methods._distill_model import Distill, feature_loss, seed_loss
from selfsup.methods.base import Method, StepContext
from selfsup.methods.distill import DistillConfig
from selfsup.models.backbone import create_backbone
from selfsup.models.teacher import FrozenTeacher, load_teacher
from selfsup.optim.param_groups import param_groups
from selfsup.train.checkpoint import latest_checkpoint
from selfsup.train.loop import pretrain
from tests.conftest import ROOT
from tests.fixtures.pipeline import last_weights, make_shards, metrics

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TINY_RESNET = dict(name="resnet18", model_args=dict(channels=[8, 16, 32, 64]))  # 64-d, teacher is 48-d


def _save_teacher(folder: Path, embed_dim: int = 48, seed: int = 0) -> Path:
    """A tiny ViT teacher written the way `selfsup export` writes one (timm save_for_hf, safetensors)."""
    torch.manual_seed(seed)
    model = create_backbone("vit_tiny_patch16_224",
                            model_args=dict(img_size=32, patch_size=8, depth=1, embed_dim=embed_dim, num_heads=2))
    timm.models.save_for_hf(model, str(folder), safe_serialization=True,
                            data_config={"input_size": (3, 32, 32), "mean": MEAN, "std": STD, "crop_pct": 1.0,
                                         "interpolation": "bicubic"})
    return folder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return _save_teacher(tmp_path_factory.mktemp("teacher") / "export")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return make_shards(tmp_path_factory.mktemp("data"))


def _config(run_dir: Path, shards: Path, teacher: Path, *extra: str):
    return load_config(ROOT / "configs" / "distill_cpu.yaml", [
        f"run.dir={run_dir}", f"data.shards={shards}", "data.num_workers=0", "data.shuffle_buffer=16",
        f"method.distill.teacher={teacher}", "method.distill.queue_size=16", "model.name=resnet18",
        "model.args.channels=[8,16,32,64]", "views.global_crop_size=32", "train.batch_size=4", "train.epochs=2",
        "train.log_every=1", "train.progress=false", "train.mixed_precision=no", "optim.warmup_epochs=0.5", *extra,
    ])


# --- the loss, against SEED's formula written out ------------------------------------------------------


def seed_reference(s: torch.Tensor, t: torch.Tensor, queue: torch.Tensor, tau_s: float, tau_t: float):
    """SEED (Fang et al. 2021), Sec. 3.2, per image i over D+ = [current teacher embeddings; queue]:
    ``p^T_j = exp(z^T_i.d_j / tau_T) / sum_d exp(z^T_i.d / tau_T)`` (same for the student with tau_S) and the
    objective ``-sum_i sum_j p^T_j log p^S_j`` (mean over i). Returns (cross-entropy, teacher entropy)."""
    s = s.double() / s.double().norm(dim=1, keepdim=True)
    t = t.double() / t.double().norm(dim=1, keepdim=True)
    d_plus = list(t) + list(queue.double())
    ce, ent = 0.0, 0.0
    for i in range(s.shape[0]):
        zt = [torch.exp(t[i] @ d / tau_t) for d in d_plus]
        zs = [torch.exp(s[i] @ d / tau_s) for d in d_plus]
        p_t = [v / sum(zt) for v in zt]
        p_s = [v / sum(zs) for v in zs]
        ce = ce - sum(pt * torch.log(ps) for pt, ps in zip(p_t, p_s))
        ent = ent - sum(pt * torch.log(pt) for pt in p_t)
    return ce / s.shape[0], ent / s.shape[0]


@pytest.mark.parametrize("tau_s,tau_t", [(0.07, 0.07), (0.2, 0.05)])
def test_seed_loss_is_the_papers_cross_entropy_minus_teacher_entropy(tau_s, tau_t):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 8, generator=g, dtype=torch.float64)
    queue = torch.nn.functional.normalize(torch.randn(7, 8, generator=g, dtype=torch.float64), dim=1)
    ours = seed_loss(s, t, queue, student_temp=tau_s, teacher_temp=tau_t)
    ce, ent = seed_reference(s, t, queue, tau_s, tau_t)
    assert torch.allclose(ours.double(), ce - ent, rtol=1e-5, atol=1e-6)
    # the same gradient as SEED's objective (the teacher entropy is a constant of the student)
    (g_ours,) = torch.autograd.grad(ours, s)
    (g_ref,) = torch.autograd.grad(ce, s)
    assert torch.allclose(g_ours.double(), g_ref, rtol=1e-4, atol=1e-6)
    # a student that equals the teacher has zero loss
    assert seed_loss(t, t, queue, student_temp=0.07, teacher_temp=0.07).abs() < 1e-5


def test_feature_losses():
    s, t = torch.randn(4, 6), torch.randn(4, 6)
    cos = sum(1 - float(s[i] @ t[i] / (s[i].norm() * t[i].norm())) for i in range(4)) / 4
    assert abs(float(feature_loss("cosine", s, t)) - cos) < 1e-5
    assert abs(float(feature_loss("mse", s, t)) - float(((s - t) ** 2).sum() / 24)) < 1e-5


# --- the module: frozen teacher, adapter, what is trained and saved ------------------------------------


def _distill(teacher_dir: Path, student=TINY_RESNET, **kw) -> Distill:
    torch.manual_seed(0)
    teacher = load_teacher(str(teacher_dir), view_mean=MEAN, view_std=STD)
    backbone = create_backbone(student["name"], model_args=student["model_args"])
    section = dataclasses.asdict(DistillConfig(queue_size=8, **kw))  # method.distill, teacher loaded above
    return Distill(backbone, teacher, **{k: section[k] for k in ("loss", "queue_size", "student_temp", "teacher_temp")})


def test_teacher_frozen_outside_state_and_optimizer(teacher_dir):
    method = _distill(teacher_dir)
    assert isinstance(method, Method) and method.export_encoder == "student"
    teacher = method.teacher.model
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    # not in the checkpointed state, not in the optimizer
    assert not any(k.startswith("teacher") for k in method.state_dict())
    trained = {id(p) for g in param_groups(method) for p in g["params"]}
    assert not any(id(p) in trained for p in teacher.parameters())
    opt = torch.optim.AdamW(param_groups(method), lr=1e-2)
    method.train()
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        out = method([torch.randn(4, 3, 32, 32, generator=g)], StepContext(step=step, epoch=0.0))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
    assert not teacher.training  # method.train() does not reach it
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k  # bit-equal
    assert int(method.queue.bank_ptr) == 4  # 3 steps x 4 teacher embeddings enqueued into 8 slots: 12 mod 8
    assert {"embed_std", "teacher_cos"} <= set(out.logs)


def test_adapter_only_when_widths_differ(teacher_dir, tmp_path):
    method = _distill(teacher_dir)  # 64-d student, 48-d teacher
    assert isinstance(method.adapter, torch.nn.Linear) and tuple(method.adapter.weight.shape) == (48, 64)
    x = [torch.randn(2, 3, 32, 32)]
    out = method(x, StepContext(step=0, epoch=0.0))
    out.loss.backward()
    assert method.adapter.weight.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.backbone.parameters())
    same = _save_teacher(tmp_path / "t64", embed_dim=64)
    for loss in ("seed", "cosine", "mse"):
        m = _distill(same, loss=loss)
        assert isinstance(m.adapter, torch.nn.Identity) and (m.queue is None) == (loss != "seed")
        assert torch.isfinite(m(x, StepContext(step=0, epoch=0.0)).loss)


def test_teacher_renormalises_and_resizes_views(teacher_dir):
    model = timm.create_model(f"local-dir:{teacher_dir}", pretrained=True, num_classes=0).eval()
    raw = torch.rand(2, 3, 32, 32)  # pixels in [0, 1]
    own = FrozenTeacher(model, view_mean=MEAN, view_std=STD)
    other = FrozenTeacher(model, view_mean=(0.5, 0.5, 0.5), view_std=(0.25, 0.25, 0.25))
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    expected = own((raw - m) / s)
    assert torch.allclose(other((raw - 0.5) / 0.25), expected, atol=1e-5)
    # teacher_size: the views are resized for the teacher (a 32 px view, a 16 px teacher input)
    small = FrozenTeacher(model, view_mean=MEAN, view_std=STD, size=16)
    x = (raw - m) / s
    resized = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", antialias=True)
    with torch.no_grad():
        assert torch.allclose(small(x), model(resized), atol=1e-6)
        assert not torch.allclose(small(x), model(x), atol=1e-3)


@pytest.mark.parametrize("name,args", [
    ("resnet18", {"output_stride": 16}),
    ("poolformer_s12", {}),
    ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 1}),
    ("mobilenetv3_large_100", {}),
])
def test_students_of_the_issue_train_a_step(teacher_dir, name, args):
    method = _distill(teacher_dir, student=dict(name=name, model_args=args))
    out = method([torch.randn(2, 3, 32, 32)], StepContext(step=0, epoch=0.0))
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert sum(p.grad.abs().sum() for p in method.backbone.parameters() if p.grad is not None) > 0


# --- the loop: resume, export, errors -----------------------------------------------------------------


def test_distill_run_resumes_exactly_and_exports_a_timm_student(tmp_path, shards, teacher_dir):
    teacher_bytes = (teacher_dir / "model.safetensors").read_bytes()
    monitor = (f"monitor.data={shards}", "monitor.every=2", "monitor.max_train=16", "monitor.max_val=8")
    full = pretrain(_config(tmp_path / "full", shards, teacher_dir, "train.max_steps=4", "train.save_every=4",
                            *monitor))
    assert full["steps"] == 4 and full["method"] == "distill"
    pretrain(_config(tmp_path / "cut", shards, teacher_dir, "train.max_steps=2", "train.save_every=2", *monitor))
    resumed = pretrain(_config(tmp_path / "cut", shards, teacher_dir, "train.max_steps=4", "train.save_every=2",
                               "train.resume=auto", *monitor))
    assert resumed["steps_this_run"] == 2
    a, b = last_weights(tmp_path / "full"), last_weights(tmp_path / "cut")
    assert a.keys() == b.keys() and not any("teacher" in k for k in a)
    assert {"adapter.weight", "queue.bank", "queue.bank_ptr"} <= set(a)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # bit-identical on the CPU, queue included
    assert int(a["queue.bank_ptr"]) == 0  # 4 steps x 4 keys wrapped the 16-key queue once
    lines = metrics(tmp_path / "full")
    assert {"loss", "teacher_cos", "embed_std"} <= set(lines[-1])
    assert "knn_top1" in lines[-1]  # the kNN monitor scores the student
    assert (teacher_dir / "model.safetensors").read_bytes() == teacher_bytes

    result = export(tmp_path / "full", tmp_path / "student", which="last")  # not the monitor's best
    assert result["encoder"] == "student" and result["module"] == "backbone"
    student = timm.create_model(f"local-dir:{tmp_path / 'student'}", pretrained=True).eval()
    assert student.num_features == 64 and isinstance(student, timm.models.ResNet)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    saved = {k.removeprefix("backbone."): v for k, v in a.items() if k.startswith("backbone.")}
    ref = create_backbone("resnet18", model_args=dict(channels=[8, 16, 32, 64]))
    ref.load_state_dict(saved)
    with torch.no_grad():
        assert torch.allclose(student(x), ref.eval()(x), atol=1e-5)
    assert latest_checkpoint(tmp_path / "full").name == "step_00000004"


@pytest.mark.parametrize("command", ["pretrain", "distill"])
def test_missing_teacher_is_one_line_error(tmp_path, shards, capsys, command):
    code = main([command, str(ROOT / "configs" / "distill_cpu.yaml"), f"data.shards={shards}", "data.num_workers=0",
                 f"run.dir={tmp_path / 'run'}", f"method.distill.teacher={tmp_path / 'nope'}",
                 "train.batch_size=4", "train.progress=false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "method.distill.teacher" in err and "no such folder" in err and str(tmp_path / "nope") in err


def test_teacher_spec_errors(tmp_path, teacher_dir):
    for spec, match in [("", "is empty"), ("not_a_timm_model", "neither a folder nor a timm model"),
                        ("vit_small_patch16_224.nosuchtag", "Invalid pretrained tag")]:
        with pytest.raises(ConfigError, match=match):
            load_teacher(spec, view_mean=MEAN, view_std=STD)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("{}")
    with pytest.raises(ConfigError, match="is a run folder; export it first"):
        load_teacher(str(run), view_mean=MEAN, view_std=STD)
    with pytest.raises(ConfigError, match="bad value for 'method.distill.loss'"):
        build_method(load_config(ROOT / "configs" / "distill_cpu.yaml",
                                 [f"method.distill.teacher={teacher_dir}", "method.distill.loss=l1"]))
