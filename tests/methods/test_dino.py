"""One DINO step on a tiny ViT and a tiny Swin."""

import dataclasses
from collections import Counter

import pytest
import torch
from lightly.models.modules import DINOProjectionHead

import selfsup.methods._dino_model as dino_module
from selfsup.methods._dino_head import head_over_batches
from selfsup.methods._dino_model import DINO
from selfsup.methods.base import Method
from selfsup.methods.dino import DINOConfig
from selfsup.models.backbone import create_backbone
from selfsup.models.multicrop import forward_multicrop, group_by_resolution
from selfsup.optim.param_groups import param_groups
from tests.fixtures.heads import one_head_call_per_batch


def _views(b=4, n_local=2):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(b, 3, 32, 32, generator=g) for _ in range(2)] + [
        torch.randn(b, 3, 16, 16, generator=g) for _ in range(n_local)
    ]


def _dino(spec, **overrides):
    torch.manual_seed(0)
    heads = DINOConfig(out_dim=256, hidden_dim=64, bottleneck_dim=32, freeze_last_layer_epochs=1, **overrides)
    return DINO(create_backbone(spec["name"], model_args=spec["model_args"]), n_global=2, **dataclasses.asdict(heads))


def test_multicrop_groups_and_matches_per_view(tiny_backbone_spec):
    views = _views()
    assert group_by_resolution(views) == [(0, 2), (2, 4)]
    bb = create_backbone(tiny_backbone_spec["name"], model_args=tiny_backbone_spec["model_args"]).eval()
    batched = forward_multicrop(bb, views)
    single = torch.cat([bb(v) for v in views])
    assert batched.shape == (4 * 4, bb.num_features)
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_one_dino_step(tiny_backbone_spec):
    m = _dino(tiny_backbone_spec)
    assert isinstance(m, Method)
    teacher_before = {k: v.clone() for k, v in m.teacher_backbone.state_dict().items()}
    last_before = m.student_head.last_layer.weight_v.detach().clone()
    opt = torch.optim.AdamW(param_groups(m), lr=1e-2)
    ctx = m.step_context(0, steps_per_epoch=10, total_steps=100)
    out = m(_views(), ctx)
    assert torch.isfinite(out.loss) and out.loss.ndim == 0
    assert {"embed_std", "teacher_entropy", "teacher_entropy_max"} <= set(out.logs)
    out.loss.backward()
    # the teacher is not touched by backward
    assert all(p.grad is None for p in m.teacher_backbone.parameters())
    assert all(not p.requires_grad for p in m.teacher_head.parameters())
    m.before_optimizer_step(ctx)  # epoch 0 < 1: last layer frozen
    assert m.student_head.last_layer.weight_v.grad is None
    opt.step()
    m.after_optimizer_step(ctx)
    assert torch.equal(m.student_head.last_layer.weight_v, last_before)
    # the teacher moved by EMA: t = m*t + (1-m)*s
    s_state = m.student_backbone.state_dict()
    for k, t_new in m.teacher_backbone.state_dict().items():
        if t_new.dtype.is_floating_point:
            expected = ctx.momentum * teacher_before[k] + (1 - ctx.momentum) * s_state[k]
            torch.testing.assert_close(t_new, expected)
    assert any(not torch.equal(teacher_before[k], v) for k, v in m.teacher_backbone.state_dict().items())


def test_last_layer_trains_after_freeze_epochs():
    from tests.conftest import TINY_VIT

    m = _dino(TINY_VIT)
    ctx = m.step_context(10, steps_per_epoch=10, total_steps=100)  # epoch 1.0
    m(_views(), ctx).loss.backward()
    m.before_optimizer_step(ctx)
    assert m.student_head.last_layer.weight_v.grad is not None


def test_schedule_values_follow_paper():
    from tests.conftest import TINY_VIT

    m = _dino(TINY_VIT)
    assert m.step_context(0, 10, 100).momentum == 0.996
    assert m.step_context(100, 10, 100).momentum == 1.0
    assert m.step_context(0, 10, 1000).teacher_temp == 0.04
    assert abs(m.step_context(300, 10, 1000).teacher_temp - 0.07) < 1e-9


def test_teacher_stays_in_eval_mode():
    from tests.conftest import TINY_VIT

    m = _dino(TINY_VIT).train()
    assert m.student_backbone.training and not m.teacher_backbone.training and not m.teacher_head.training


def test_teacher_batchnorm_uses_batch_statistics_in_training():
    """The EMA moves parameters only, so the teacher's BN layers (batch_norm head) must normalise with the batch:
    with stale running statistics (mean 0, var 1) its output for a shifted batch would not be centred."""
    from tests.conftest import TINY_VIT

    torch.manual_seed(0)
    heads = DINOConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16, batch_norm=True)
    m = DINO(create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"]), n_global=2,
             **dataclasses.asdict(heads)).train()
    bns = [x for x in m.teacher_head.modules() if isinstance(x, torch.nn.BatchNorm1d)]
    assert bns and all(bn.training for bn in bns) and not m.teacher_backbone.training
    first_bn_in = m.teacher_head.layers[0](torch.randn(8, m.student_head.layers[0].in_features) + 5.0)
    out = bns[0](first_bn_in)
    assert out.mean(0).abs().max() < 1e-4  # batch statistics, not the running ones
    m.eval()
    assert not any(bn.training for bn in bns)


def test_batchnorm_heads_normalise_each_view_with_its_own_batch(monkeypatch):
    """Teacher and student heads see one view at a time: changing the second global view changes nothing the heads
    produce for the first (a head run on all views at once would mix their BN statistics)."""
    from tests.conftest import TINY_VIT

    torch.manual_seed(0)
    heads = DINOConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16, batch_norm=True)
    m = DINO(create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"]), n_global=2,
             **dataclasses.asdict(heads)).train()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    loss_forward = m.criterion.forward

    def spy(teacher_out, student_out, **kwargs):
        seen.append((teacher_out[0].detach().clone(), student_out[0].detach().clone()))
        return loss_forward(teacher_out, student_out, **kwargs)

    monkeypatch.setattr(m.criterion, "forward", spy)
    views = _views(b=6, n_local=1)
    other = [views[0], views[1] * 3.0 + 1.0, views[2]]
    ctx = m.step_context(0, steps_per_epoch=10, total_steps=100)
    with torch.no_grad():
        m(views, ctx)
        m(other, ctx)
    (t_a, s_a), (t_b, s_b) = seen
    torch.testing.assert_close(t_a, t_b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(s_a, s_b, atol=1e-5, rtol=1e-4)


def test_loss_is_fp32_under_bf16_autocast():
    from tests.conftest import TINY_VIT

    m = _dino(TINY_VIT)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(_views(), m.step_context(0, 10, 100))
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.student_backbone.parameters() if p.grad is not None)


def test_koleo_term_is_the_dinov2_formula_per_global_view():
    """``koleo_weight`` adds w * sum over global views of KoLeo (Sablayrolles et al. 2019, DINOv2's koleo_loss.py):
    -mean_i log ||x_i - x_nn(i)|| over L2-normalised student embeddings, nn(i) = the nearest other sample."""
    from tests.conftest import TINY_VIT

    def model(weight: float) -> DINO:
        torch.manual_seed(0)
        heads = DINOConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16, koleo_weight=weight)
        return DINO(create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"]), n_global=2,
                    **dataclasses.asdict(heads)).train()

    views = _views(b=6, n_local=1)
    plain, koleo = model(0.0), model(0.25)
    ctx = plain.step_context(0, steps_per_epoch=10, total_steps=100)
    expected = 0.0
    for v in views[:2]:
        x = torch.nn.functional.normalize(plain.student_backbone(v).detach(), dim=1)  # (b, d)
        dist = torch.cdist(x, x) + torch.diag(torch.full((len(x),), float("inf")))
        expected += -torch.log(dist.min(dim=1).values).mean()
    diff = koleo(views, ctx).loss - plain(views, ctx).loss
    torch.testing.assert_close(diff, 0.25 * expected, atol=1e-4, rtol=1e-4)
    assert abs(float(expected)) > 1e-3  # the term is not vacuous on this batch


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batchnorm"])
def test_head_over_batches_gives_the_outputs_and_gradients_of_one_head_call_per_view(batch_norm):
    def make_head():
        torch.manual_seed(0)
        return DINOProjectionHead(24, 32, 16, 64, batch_norm=batch_norm, norm_last_layer=False).train()

    head, per_view = make_head(), make_head()
    views = [torch.randn(6, 24) * (i + 1) + i for i in range(3)]  # views with different statistics
    out, expected = head_over_batches(head, views), one_head_call_per_batch(per_view, views)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    for (name, p), q in zip(head.named_parameters(), per_view.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
    if batch_norm:  # not vacuous: one BN call over every view mixes their statistics and gives other outputs
        assert not torch.allclose(per_view(torch.cat(views)), expected, atol=1e-3)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batchnorm"])
def test_dino_step_runs_each_last_layer_once_and_the_mlp_per_view_only_with_batchnorm(batch_norm):
    """The weight-normalised last layer (a (k, bottleneck) weight rebuilt at each call) runs once per head and step;
    the MLP runs once per view only where BatchNorm makes a view's output depend on the other rows of its call."""
    from tests.conftest import TINY_VIT

    m = _dino(TINY_VIT, batch_norm=batch_norm).train()
    calls: Counter[str] = Counter()
    for name in ("student_head", "teacher_head"):
        head = getattr(m, name)
        head.last_layer.register_forward_hook(lambda *_, key=f"{name}.last_layer": calls.update([key]))
        head.layers.register_forward_hook(lambda *_, key=f"{name}.layers": calls.update([key]))
    views = _views(n_local=3)  # 2 global + 3 local
    m(views, m.step_context(0, steps_per_epoch=10, total_steps=100))
    mlp_student, mlp_teacher = (5, 2) if batch_norm else (1, 1)
    assert calls == {"student_head.last_layer": 1, "teacher_head.last_layer": 1,
                     "student_head.layers": mlp_student, "teacher_head.layers": mlp_teacher}


@pytest.mark.parametrize("center", ["mean", "sinkhorn_knopp"])
def test_dino_loss_and_gradients_equal_those_of_one_head_call_per_view_without_batchnorm(monkeypatch, center):
    from tests.conftest import TINY_VIT

    fast, per_view = _dino(TINY_VIT, center=center).train(), _dino(TINY_VIT, center=center).train()
    views, ctx = _views(n_local=2), fast.step_context(0, steps_per_epoch=10, total_steps=100)
    out = fast(views, ctx)
    out.loss.backward()
    monkeypatch.setattr(dino_module, "head_over_batches", one_head_call_per_batch)
    expected = per_view(views, ctx)
    expected.loss.backward()
    torch.testing.assert_close(out.loss, expected.loss, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.criterion.center, per_view.criterion.center)
    for (name, p), q in zip(fast.named_parameters(), per_view.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)
