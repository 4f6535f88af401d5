"""``ema_update_`` gives lightly's ``update_momentum`` result, on a tiny ViT plus a DINO head."""

import copy

import pytest
import torch
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import update_momentum
from torch import nn

from selfsup.models.backbone import create_backbone
from selfsup.models.ema import ema_update_
from tests.conftest import TINY_VIT


def _pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    student = nn.ModuleDict({
        "backbone": create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"]),
        "head": DINOProjectionHead(192, 64, 16, 128, norm_last_layer=False),
    })
    torch.manual_seed(seed + 1)
    teacher = nn.ModuleDict({
        "backbone": create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"]),
        "head": DINOProjectionHead(192, 64, 16, 128, norm_last_layer=False),
    })
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def _clone(module: nn.Module) -> nn.Module:
    clone = _pair()[1]
    clone.load_state_dict(module.state_dict())
    return clone


@pytest.mark.parametrize("m", [0.996, 0.9, 0.5, 0.1])
def test_matches_lightly_update_momentum(m):
    student, teacher = _pair()
    expected = _clone(teacher)
    before = copy.deepcopy(teacher.state_dict())
    for _ in range(3):  # repeated updates: errors would compound
        update_momentum(student, expected, m=m)
        ema_update_(student, teacher, m)
    got, want = dict(teacher.named_parameters()), dict(expected.named_parameters())
    assert got.keys() == want.keys()
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=name)
    assert any(not torch.equal(before[k], v) for k, v in teacher.state_dict().items())


def test_end_points_are_exact():
    student, teacher = _pair()
    before = {k: v.clone() for k, v in teacher.named_parameters()}
    ema_update_(student, teacher, 1.0)
    assert all(torch.equal(p, before[k]) for k, p in teacher.named_parameters())
    ema_update_(student, teacher, 0.0)
    assert all(torch.equal(p, s) for p, s in zip(teacher.parameters(), student.parameters()))


def test_gradients_untouched_and_no_graph():
    student, teacher = _pair()
    student["head"](student["backbone"](torch.randn(2, 3, 32, 32))).sum().backward()
    grads = [p.grad.clone() for p in student.parameters() if p.grad is not None]
    ema_update_(student, teacher, 0.9)
    assert all(not p.requires_grad and p.grad_fn is None for p in teacher.parameters())
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, (p for p in student.parameters() if p.grad is not None)))


def test_mismatched_modules_raise():
    student, _ = _pair()
    with pytest.raises(ValueError, match="do not match"):
        ema_update_(student, nn.Linear(2, 2), 0.9)
