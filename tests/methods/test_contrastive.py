"""MoCo v3, MoBY and SimCLR on tiny backbones: training steps, paper-reference losses, EMA, queues."""

from __future__ import annotations

import dataclasses
import functools
import math

import pytest
import torch
from timm.layers import DropPath
from torch import nn

from selfsup.build import build_method
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.methods._moby_model import MoBY
from selfsup.methods._mocov3_model import MoCoV3
from selfsup.methods._simclr_model import SimCLR
from selfsup.methods.base import Method
from selfsup.methods.moby import MoBYConfig, build_moby
from selfsup.methods.mocov3 import MoCoV3Config
from selfsup.methods.simclr import SimCLRConfig
from selfsup.models.backbone import create_backbone
from selfsup.optim.param_groups import param_groups
from selfsup.registry import get_builder
from tests.conftest import ROOT, TINY_SWIN, TINY_VIT

# One thread: on a shared, loaded 2-core machine two OpenMP threads spin and run ~50x slower.
torch.set_num_threads(1)

HEADS = dict(proj_hidden_dim=64, out_dim=32)
B = 4


def _views(b: int = B, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)]


def _backbone(spec, drop_path_rate: float = 0.0) -> nn.Module:
    return create_backbone(spec["name"], drop_path_rate=drop_path_rate, model_args=spec["model_args"])


def _make(name: str, spec=TINY_VIT, **kw) -> nn.Module:
    torch.manual_seed(0)
    if name == "mocov3":
        return MoCoV3(_backbone(spec), **dataclasses.asdict(MoCoV3Config(pred_hidden_dim=64, **HEADS, **kw)))
    if name == "moby":
        moby = dataclasses.asdict(MoBYConfig(pred_hidden_dim=64, queue_size=16, **HEADS, **kw))
        del moby["target_drop_path_rate"]  # a builder argument: the target backbone is made here
        return MoBY(_backbone(spec), _backbone(spec), **moby)
    return SimCLR(_backbone(spec), **dataclasses.asdict(SimCLRConfig(**HEADS, **kw)))


def _float_params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in module.named_parameters()}


# --- independent references, written from the papers' pseudo-code -------------------------------------


def _unit(x: torch.Tensor) -> torch.Tensor:
    x = x.double()
    return x / x.norm(dim=1, keepdim=True)


def mocov3_ctr_reference(q: torch.Tensor, k: torch.Tensor, tau: float) -> torch.Tensor:
    """MoCo v3 Algorithm 1: ``logits = mm(q, k.t()); labels = range(N); 2 * tau * CE(logits / tau, labels)``."""
    q, k = _unit(q), _unit(k)
    n = q.shape[0]
    total = 0.0
    for i in range(n):
        sims = [float(q[i] @ k[j]) / tau for j in range(n)]
        total += -sims[i] + math.log(sum(math.exp(s) for s in sims))
    return torch.tensor(2 * tau * total / n)


def simclr_ntxent_reference(z_a: torch.Tensor, z_b: torch.Tensor, tau: float) -> torch.Tensor:
    """SimCLR Algorithm 1: views 2k-1 and 2k of image k; ``l(i, j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t)``,
    ``L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``."""
    n = z_a.shape[0]
    z = [None] * (2 * n)
    for i in range(n):  # interleave: image i -> positions 2i and 2i + 1
        z[2 * i], z[2 * i + 1] = z_a[i], z_b[i]
    z = _unit(torch.stack(z))
    sim = lambda i, j: float(z[i] @ z[j]) / tau  # noqa: E731

    def l(i: int, j: int) -> float:  # noqa: E743
        return -math.log(math.exp(sim(i, j)) / sum(math.exp(sim(i, m)) for m in range(2 * n) if m != i))

    return torch.tensor(sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n)) / (2 * n))


def moby_reference(p: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float) -> torch.Tensor:
    """MoBY / MoCo InfoNCE: ``-log exp(q.k+/t) / (exp(q.k+/t) + sum_queue exp(q.k-/t))``, mean over the batch."""
    p, k, queue = _unit(p), _unit(k), _unit(queue)
    total = 0.0
    for i in range(p.shape[0]):
        pos = math.exp(float(p[i] @ k[i]) / tau)
        neg = sum(math.exp(float(p[i] @ n) / tau) for n in queue)
        total += -math.log(pos / (pos + neg))
    return torch.tensor(total / p.shape[0])


# --- tests -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,spec", [("mocov3", TINY_VIT), ("moby", TINY_SWIN), ("moby", TINY_VIT),
                                       ("simclr", TINY_VIT), ("simclr", TINY_SWIN)])
def test_trains_a_few_steps(name, spec):
    m = _make(name, spec).train()
    assert isinstance(m, Method) and m.export_encoder == "online"
    opt = torch.optim.AdamW(param_groups(m), lr=1e-3)
    before = _float_params(m.backbone)
    for step in range(3):
        ctx = m.step_context(step, steps_per_epoch=2, total_steps=6)
        out = m(_views(seed=step), ctx)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        assert {"embed_std", "embed_std_healthy"} <= set(out.logs)
        assert 0 < float(out.logs["embed_std"]) and math.isclose(float(out.logs["embed_std_healthy"]),
                                                                  1 / math.sqrt(m.backbone.num_features), rel_tol=1e-6)
        out.loss.backward()
        m.before_optimizer_step(ctx)
        opt.step()
        m.after_optimizer_step(ctx)
        opt.zero_grad(set_to_none=True)
    after = _float_params(m.backbone)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert m.export_backbone() is m.backbone


def test_mocov3_loss_matches_paper_pseudocode():
    m = _make("mocov3").train()
    views = _views()
    out = m(views, m.step_context(0, 10, 100))
    with torch.no_grad():
        q1, q2 = (m.prediction_head(m.projection_head(m.backbone(x))) for x in views)
        k1, k2 = (m.momentum_projection_head(m.momentum_backbone(x)) for x in views)
    expected = mocov3_ctr_reference(q1, k2, 0.2) + mocov3_ctr_reference(q2, k1, 0.2)
    torch.testing.assert_close(out.loss.double(), expected.double(), atol=1e-5, rtol=1e-5)


def test_simclr_loss_matches_paper_pseudocode():
    m = _make("simclr", temperature=0.5).train()
    views = _views()
    out = m(views, m.step_context(0, 10, 100))
    with torch.no_grad():
        z = m.projection_head(torch.cat([m.backbone(x) for x in views]))  # the head sees the 2N batch
    expected = simclr_ntxent_reference(z[:B], z[B:], 0.5)
    torch.testing.assert_close(out.loss.double(), expected.double(), atol=1e-5, rtol=1e-5)


def test_moby_loss_matches_paper_and_queues_advance():
    m = _make("moby", TINY_SWIN).train()
    views = _views()
    queue1, queue2 = m.queue1.bank.clone(), m.queue2.bank.clone()
    assert m.queue1.ptr == 0 and m.queue2.ptr == 0
    with torch.no_grad():
        p1, p2 = (m.prediction_head(m.projection_head(m.backbone(x))) for x in views)
        k1, k2 = (m.target_projection_head(m.target_backbone(x)) for x in views)
    out = m(views, m.step_context(0, 10, 100))
    expected = moby_reference(p1, k2, queue2, 0.2) + moby_reference(p2, k1, queue1, 0.2)
    torch.testing.assert_close(out.loss.double(), expected.double(), atol=1e-5, rtol=1e-5)
    # the pointer moved by one batch; the new keys replaced the oldest ones; the rest is untouched
    assert m.queue1.ptr == B and m.queue2.ptr == B
    torch.testing.assert_close(m.queue1.bank[:B], nn.functional.normalize(k1, dim=1))
    torch.testing.assert_close(m.queue2.bank[:B], nn.functional.normalize(k2, dim=1))
    assert torch.equal(m.queue1.bank[B:], queue1[B:]) and torch.equal(m.queue2.bank[B:], queue2[B:])
    # the queues are checkpointed
    sd = m.state_dict()
    assert {"queue1.bank", "queue1.bank_ptr", "queue2.bank", "queue2.bank_ptr"} <= set(sd)
    fresh = _make("moby", TINY_SWIN)
    fresh.load_state_dict(sd)
    assert fresh.queue1.ptr == B and torch.equal(fresh.queue2.bank, m.queue2.bank)
    # wrap-around: 16 keys, 4 per step -> back to 0 after 4 steps
    for _ in range(3):
        m(views, m.step_context(0, 10, 100))
    assert m.queue1.ptr == 0
    # eval mode does not enqueue
    m.eval()
    bank = m.queue1.bank.clone()
    m(views, m.step_context(0, 10, 100))
    assert m.queue1.ptr == 0 and torch.equal(m.queue1.bank, bank)


@pytest.mark.parametrize("name", ["mocov3", "moby"])
def test_momentum_encoder_no_grad_and_ema(name):
    m = _make(name).train()
    mom_bb = m.momentum_backbone if name == "mocov3" else m.target_backbone
    mom_head = m.momentum_projection_head if name == "mocov3" else m.target_projection_head
    assert all(not p.requires_grad for p in [*mom_bb.parameters(), *mom_head.parameters()])
    online_before = _float_params(m.backbone)
    torch.testing.assert_close(_float_params(mom_bb), online_before)  # same start as the online encoder
    opt = torch.optim.SGD(param_groups(m), lr=0.5)
    ctx = m.step_context(0, steps_per_epoch=10, total_steps=100)
    assert ctx.momentum == 0.99 and m.step_context(100, 10, 100).momentum == 1.0
    m(_views(), ctx).loss.backward()
    assert all(p.grad is None for p in [*mom_bb.parameters(), *mom_head.parameters()])
    mom_before = _float_params(mom_bb) | {f"h.{k}": v for k, v in _float_params(mom_head).items()}
    opt.step()
    m.after_optimizer_step(ctx)
    online = _float_params(m.backbone) | {f"h.{k}": v for k, v in _float_params(m.projection_head).items()}
    mom_after = _float_params(mom_bb) | {f"h.{k}": v for k, v in _float_params(mom_head).items()}
    for k, t_new in mom_after.items():
        torch.testing.assert_close(t_new, 0.99 * mom_before[k] + 0.01 * online[k])
    assert any(not torch.equal(mom_before[k], mom_after[k]) for k in mom_after)


def test_momentum_branch_follows_train_mode():
    """The documented choice (authors' code): BN in the key projector uses batch statistics in training."""
    m = _make("mocov3").train()
    assert m.momentum_projection_head.training and m.momentum_backbone.training
    m.eval()
    assert not m.momentum_projection_head.training


def test_mocov3_freeze_patch_embed():
    m = _make("mocov3", freeze_patch_embed=True).train()
    frozen = list(m.backbone.patch_embed.parameters())
    assert frozen and all(not p.requires_grad for p in frozen)
    grouped = {id(p) for g in param_groups(m) for p in g["params"]}
    assert not grouped & {id(p) for p in frozen}
    before = [p.detach().clone() for p in frozen]
    opt = torch.optim.AdamW(param_groups(m), lr=1e-2)
    m(_views(), m.step_context(0, 10, 100)).loss.backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, m.backbone.patch_embed.parameters()))
    assert all(p.requires_grad for p in _make("mocov3", freeze_patch_embed=False).backbone.patch_embed.parameters())

    class NoPatchEmbed(nn.Module):
        num_features = 8

    with pytest.raises(ConfigError, match="patch_embed"):
        MoCoV3(NoPatchEmbed(), **dataclasses.asdict(MoCoV3Config(**HEADS)))


def test_moby_asymmetric_drop_path():
    make = functools.partial(create_backbone, TINY_VIT["name"], drop_path_rate=0.2, model_args=TINY_VIT["model_args"])
    torch.manual_seed(0)
    m = build_moby(make_backbone=make, n_global=2,
                   **dataclasses.asdict(MoBYConfig(target_drop_path_rate=0.0, queue_size=16, pred_hidden_dim=64,
                                                   **HEADS)))
    assert any(isinstance(x, DropPath) and x.drop_prob > 0 for x in m.backbone.modules())
    assert not any(isinstance(x, DropPath) for x in m.target_backbone.modules())
    torch.testing.assert_close(_float_params(m.target_backbone), _float_params(m.backbone))


def test_contrastive_views_must_be_two():
    with pytest.raises(ConfigError, match="2 views"):
        _make("simclr")(_views() + [torch.randn(B, 3, 16, 16)], None)


@pytest.mark.parametrize("name,cls", [("mocov3", MoCoV3), ("moby", MoBY), ("simclr", SimCLR)])
def test_registry_and_tiny_configs(name, cls):
    assert get_builder(name).__name__ == f"build_{name}"
    cfg = load_config(ROOT / "configs" / f"{name}_tiny_cpu.yaml")
    assert cfg.method.name == name and cfg.views.n_local == 0 and cfg.train.device == "cpu"
    m = build_method(cfg)
    assert isinstance(m, cls) and isinstance(m, Method)
    x = [torch.randn(2, 3, cfg.views.global_crop_size, cfg.views.global_crop_size) for _ in range(2)]
    assert torch.isfinite(m.train()(x, m.step_context(0, 10, 100)).loss)


@pytest.mark.parametrize("file,name,model", [
    ("mocov3_vit_small.yaml", "mocov3", "vit_small_patch16_224"),
    ("moby_swin_tiny.yaml", "moby", "swin_tiny_patch4_window7_224"),
    ("simclr_vit_small.yaml", "simclr", "vit_small_patch16_224"),
])
def test_paper_configs_load(file, name, model):
    cfg = load_config(ROOT / "configs" / file)
    assert (cfg.method.name, cfg.model.name, cfg.views.n_local, cfg.views.global_crop_size) == (name, model, 0, 224)
    section = getattr(cfg.method, name)
    assert section.temperature == {"mocov3": 0.2, "moby": 0.2, "simclr": 0.1}[name]
    if name == "moby":
        assert (section.queue_size, section.target_drop_path_rate, cfg.model.drop_path_rate) == (4096, 0.0, 0.2)


def test_sync_bn_converts_head_batchnorms_only_under_multi_gpu_ddp():
    """train.sync_bn: every BatchNorm of MoCo v3's heads becomes a SyncBatchNorm under multi-GPU DDP, with the
    same parameters and state-dict keys; elsewhere (CPU, one process) nothing changes."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from selfsup.train.accelerator import sync_batchnorm

    def fake(processes: int, device: str, kind: DistributedType):
        return SimpleNamespace(num_processes=processes, device=torch.device(device), distributed_type=kind,
                               is_main_process=True)

    method = _make("mocov3")
    keys = {k: v.shape for k, v in method.state_dict().items()}
    n_bn = sum(isinstance(m, torch.nn.BatchNorm1d) for m in method.modules())
    assert n_bn > 0
    for acc in (fake(2, "cpu", DistributedType.MULTI_CPU), fake(1, "cuda", DistributedType.NO),
                fake(8, "cuda", DistributedType.FSDP)):
        assert sync_batchnorm(method, acc) == 0
    assert sync_batchnorm(method, fake(8, "cuda", DistributedType.MULTI_GPU)) == n_bn
    assert not any(type(m) is torch.nn.BatchNorm1d for m in method.modules())
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in method.modules()) == n_bn
    assert {k: v.shape for k, v in method.state_dict().items()} == keys


@pytest.mark.parametrize("name", ["dino", "mocov3", "moby", "simclr"])
def test_heads_take_the_pooled_width_of_cnns_with_a_head_layer(name):
    """MobileNetV3's pooled output goes through a 1x1 head conv (576 -> 1024 for the small one): the heads must be
    sized by the pooled width, not by ``num_features``."""
    file = "dino_vit_tiny_cpu.yaml" if name == "dino" else f"{name}_tiny_cpu.yaml"
    cfg = load_config(ROOT / "configs" / file, ["views.n_local=0", "views.global_crop_size=32"])
    cfg.model.name, cfg.model.args = "mobilenetv3_small_100", {}  # the configs' ViT args do not apply to a CNN
    cfg.method.mocov3.freeze_patch_embed = False  # a CNN has no patch embedding
    m = build_method(cfg)
    x = [torch.randn(2, 3, 32, 32) for _ in range(2)]
    assert torch.isfinite(m.train()(x, m.step_context(0, 10, 100)).loss)
