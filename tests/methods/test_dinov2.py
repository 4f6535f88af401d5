"""DINOv2 (method.name=dinov2) and Sinkhorn-Knopp centering (method.dino.center), against the authors' formulas."""

from __future__ import annotations

import dataclasses
import math
import random

import pytest
import torch
from lightly.loss import DINOLoss, IBOTPatchLoss

import selfsup.methods._dinov2_model as dinov2_module
from selfsup.config import load_config
from selfsup.errors import ConfigError
from selfsup.methods._centering import cross_view_entropy, masked_patch_entropy, sinkhorn_knopp_targets
from selfsup.methods._dino_model import DINO
from selfsup.methods._dinov2_model import DINOv2
from selfsup.methods.dino import DINOConfig
from selfsup.methods.dinov2 import DINOv2Config
from selfsup.models.backbone import create_backbone
from selfsup.train.loop import pretrain
from tests.conftest import TINY_SWIN, TINY_VIT
from tests.fixtures.heads import one_head_call_per_batch
from tests.fixtures.pipeline import CONFIGS, last_weights, make_shards, tiny_config


def dinov2_reference_sinkhorn(teacher_output: torch.Tensor, teacher_temp: float, n_iterations: int = 3):
    """DINOv2's ``DINOLoss.sinkhorn_knopp_teacher`` (dinov2/loss/dino_clstoken_loss.py), one process."""
    Q = torch.exp(teacher_output / teacher_temp).t()
    B, K = Q.shape[1], Q.shape[0]
    Q /= torch.sum(Q)
    for _ in range(n_iterations):
        Q /= torch.sum(Q, dim=1, keepdim=True)
        Q /= K
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B
    Q *= B
    return Q.t()


def test_sinkhorn_knopp_rows_and_columns_sum_to_their_marginals():
    torch.manual_seed(0)
    logits = torch.randn(64, 32) * 0.3 + torch.linspace(0, 1, 32)  # some prototypes favoured by every image
    q = sinkhorn_knopp_targets(logits, temperature=0.1)
    torch.testing.assert_close(q, dinov2_reference_sinkhorn(logits, 0.1))
    torch.testing.assert_close(q.sum(1), torch.ones(64))  # each image: a distribution
    plain = torch.softmax(logits / 0.1, dim=1).sum(0)
    usage = q.sum(0)  # each prototype: n / k = 2 images' worth, much closer than the plain softmax's
    assert (usage - 2).abs().max() < 0.25 * (plain - 2).abs().max()
    many = sinkhorn_knopp_targets(logits, temperature=0.1, iterations=50).sum(0)
    torch.testing.assert_close(many, torch.full((32,), 2.0), atol=1e-3, rtol=0)


def test_sinkhorn_knopp_is_unchanged_by_a_shift_and_finite_for_large_scores():
    logits = torch.randn(16, 8)
    torch.testing.assert_close(sinkhorn_knopp_targets(logits, 0.04), sinkhorn_knopp_targets(logits + 30, 0.04))
    assert torch.isfinite(sinkhorn_knopp_targets(logits * 50, 0.04)).all()  # exp(3000) without the shift


def test_cross_view_entropy_matches_lightly_dino_loss_on_the_same_targets():
    torch.manual_seed(0)
    teacher = [torch.randn(4, 16) for _ in range(2)]
    student = [torch.randn(4, 16) for _ in range(5)]
    reference = DINOLoss(output_dim=16, student_temp=0.1)(teacher, student, teacher_temp=0.05)  # center 0 at first
    probs = [torch.softmax(t / 0.05, dim=-1) for t in teacher]
    torch.testing.assert_close(cross_view_entropy(probs, student, 0.1), reference)


def test_ibot_loss_counts_only_masked_tokens():
    torch.manual_seed(0)
    b, h, w, k = 3, 4, 4, 16
    masks = torch.zeros(b, h, w, dtype=torch.bool)
    masks[0, :2, :2] = True
    masks[2, 1:, 3] = True  # image 1 has no masked token
    t_all, s_all = torch.randn(b, h * w, k), torch.randn(b, h * w, k)
    flat = masks.flatten(1)
    ours = masked_patch_entropy(torch.softmax(t_all[flat] / 0.05, -1), s_all[flat], masks, 0.1)
    reference = IBOTPatchLoss(output_dim=k, student_temp=0.1)(t_all[flat], s_all[flat], masks, teacher_temp=0.05)
    torch.testing.assert_close(ours, reference)
    # the iBOT formula over every token, weighted by the mask: unmasked tokens weigh nothing
    ce = -(torch.softmax(t_all / 0.05, -1) * torch.log_softmax(s_all / 0.1, -1)).sum(-1)  # (b, n)
    manual = ((ce * flat).sum(1) / flat.sum(1).clamp(min=1)).sum() / b
    torch.testing.assert_close(ours, manual)
    s_changed = s_all.clone()
    s_changed[~flat] += 5 * torch.randn_like(s_changed[~flat])
    torch.testing.assert_close(masked_patch_entropy(torch.softmax(t_all[flat] / 0.05, -1), s_changed[flat],
                                                    masks, 0.1), ours)


def small_dinov2(**overrides) -> DINOv2:
    torch.manual_seed(0)
    cfg = DINOv2Config(out_dim=64, hidden_dim=32, bottleneck_dim=16, ibot_out_dim=32, **overrides)
    return DINOv2(create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"]), n_global=2,
                  **dataclasses.asdict(cfg))


def test_masked_student_matches_the_unmasked_timm_forward_where_nothing_is_masked():
    m = small_dinov2().eval()
    x = torch.randn(3, 3, 32, 32)
    vit = m.student_backbone.vit
    none = torch.zeros(3, 4, 4, dtype=torch.bool)
    torch.testing.assert_close(m.student_tokens(x, none), vit.forward_features(x))
    masks = none.clone()
    masks[0, 1:3, 1:3] = True
    seq = torch.cat([torch.zeros(3, vit.num_prefix_tokens, dtype=torch.bool), masks.flatten(1)], 1)
    plain, masked = m.student_backbone.preprocess(x), m.student_backbone.preprocess(x, mask=seq)
    torch.testing.assert_close(masked[~seq], plain[~seq])  # the unmasked tokens are the timm tokens
    pos = vit.pos_embed.expand(3, -1, -1)[seq]
    torch.testing.assert_close(masked[seq], m.student_backbone.mask_token.view(1, -1) + pos)


def test_one_dinov2_step_masks_moves_the_teacher_and_logs_its_terms():
    m = small_dinov2(separate_ibot_head=True).train()
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16) for _ in range(2)]
    ctx = m.step_context(0, steps_per_epoch=10, total_steps=100)
    out = m(views, ctx)
    assert torch.isfinite(out.loss)
    assert out.logs["masked_tokens"] > 0 and out.logs["ibot_loss"] > 0
    torch.testing.assert_close(out.loss, out.logs["dino_loss"] + out.logs["ibot_loss"] + 0.1 * out.logs["koleo_loss"])
    torch.testing.assert_close(out.logs["objective_loss"], out.logs["dino_loss"] + out.logs["ibot_loss"])
    assert float(out.logs["loss_chance"]) == pytest.approx(math.log(64) + math.log(32))  # DINO + separate iBOT head
    out.loss.backward()
    assert m.student_backbone.mask_token.grad is not None and m.student_backbone.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in m.teacher_backbone.parameters())
    before = {k: v.clone() for k, v in m.teacher_backbone.state_dict().items()}
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1).step()
    m.after_optimizer_step(ctx)
    assert any(not torch.equal(before[k], v) for k, v in m.teacher_backbone.state_dict().items())
    assert m.export_backbone() is m.teacher_backbone


@pytest.mark.parametrize("separate", [False, True], ids=["shared_head", "separate_ibot_head"])
def test_dinov2_loss_and_gradients_equal_those_of_one_head_call_per_view_and_for_the_patches(monkeypatch, separate):
    """The heads run over every view and the masked patch tokens at once (one last-layer pass for a shared head),
    and give the loss and gradients of one head call per view plus one on the patch tokens."""
    fast, per_view = (small_dinov2(separate_ibot_head=separate).train() for _ in range(2))
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)] + [torch.randn(4, 3, 16, 16) for _ in range(2)]
    ctx = fast.step_context(0, steps_per_epoch=10, total_steps=100)
    random.seed(1)  # the same masks for both (lightly's random_block_mask draws from Python's random)
    out = fast(views, ctx)
    out.loss.backward()
    monkeypatch.setattr(dinov2_module, "head_over_batches", one_head_call_per_batch)
    random.seed(1)
    expected = per_view(views, ctx)
    expected.loss.backward()
    assert out.logs["masked_tokens"] > 0 and out.logs["ibot_loss"] > 0
    for key in ("dino_loss", "ibot_loss", "masked_tokens"):
        torch.testing.assert_close(out.logs[key], expected.logs[key], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, expected.loss, atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(fast.named_parameters(), per_view.parameters()):
        if p.requires_grad and p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_shared_head_is_one_module_with_one_set_of_keys():
    m = small_dinov2()
    assert m.student_ibot_head is m.student_head
    assert not any(k.startswith(("student_patch_head", "teacher_patch_head")) for k in m.state_dict())


@pytest.mark.parametrize("spec", [TINY_SWIN, dict(name="resnet18", model_args={})], ids=["swin", "cnn"])
def test_dinov2_without_patch_tokens_is_one_line_naming_the_method(spec):
    with pytest.raises(ConfigError) as e:
        DINOv2(create_backbone(spec["name"], model_args=spec["model_args"]), n_global=2,
               **dataclasses.asdict(DINOv2Config(out_dim=16, hidden_dim=8, bottleneck_dim=4)))
    assert len(str(e.value).splitlines()) == 1
    assert "method.name=dinov2" in str(e.value) and "method.name=dino " in str(e.value)


def test_dino_sinkhorn_knopp_center_uses_the_balanced_targets():
    torch.manual_seed(0)
    heads = DINOConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16, center="sinkhorn_knopp")
    m = DINO(create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"]), n_global=2,
             **dataclasses.asdict(heads)).train()
    views = [torch.randn(4, 3, 32, 32) for _ in range(3)]
    ctx = m.step_context(0, 10, 100)
    out = m(views, ctx)
    with torch.no_grad():
        t = torch.cat([m.teacher_head(e) for e in m.teacher_backbone(torch.cat(views[:2])).chunk(2)])
        s = [m.student_head(m.student_backbone(v)) for v in views]
    expected = cross_view_entropy(list(sinkhorn_knopp_targets(t, ctx.teacher_temp).chunk(2)), s, 0.1)
    torch.testing.assert_close(out.logs["objective_loss"], expected)
    assert torch.equal(m.criterion.center, torch.zeros_like(m.criterion.center))  # no EMA center in this mode


@pytest.mark.parametrize("override,word", [("method.dino.center=median", "method.dino.center"),
                                           ("method.dinov2.center=none", "method.dinov2.center"),
                                           ("method.dinov2.mask_ratio=[0.5,0.1]", "method.dinov2.mask_ratio"),
                                           ("method.dinov2.mask_probability=1.5", "method.dinov2.mask_probability")])
def test_bad_center_and_mask_values_are_one_line(override, word):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "dinov2_vit_small.yaml", [override])
    assert len(str(e.value).splitlines()) == 1 and word in str(e.value)


def test_dinov2_pretrains_resumes_exactly_and_exports(tmp_path):
    """Two steps + a resume to four equal four uninterrupted steps (the masks' Python RNG is in the checkpoint);
    the export is the teacher ViT that timm reloads."""
    shards = make_shards(tmp_path)
    extra = ["method.dinov2.out_dim=64", "method.dinov2.hidden_dim=32", "method.dinov2.bottleneck_dim=16",
             "train.save_every=2"]
    pretrain(tiny_config(tmp_path / "full", shards, *extra, "train.max_steps=4", method="dinov2"))
    pretrain(tiny_config(tmp_path / "cut", shards, *extra, "train.max_steps=2", method="dinov2"))
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    pretrain(tiny_config(tmp_path / "cut", shards, *extra, "train.max_steps=4", "train.resume=auto",
                         method="dinov2"))
    full, cut = last_weights(tmp_path / "full"), last_weights(tmp_path / "cut")
    assert full.keys() == cut.keys() and any("mask_token" in k for k in full)
    for k in full:
        assert torch.equal(full[k], cut[k]), k
    import timm

    from selfsup.export import export

    export(tmp_path / "full", tmp_path / "export")
    model = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True, num_classes=0)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, model.num_features)
