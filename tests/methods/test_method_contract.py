"""The contract every registered method keeps, checked for each spec of :func:`selfsup.registry.specs`.

A new ``selfsup/methods/NAME.py`` with its ``SPEC`` is tested here without an edit: built from a config (through
its spec's ``build_args``, as training builds it) on a tiny ViT at 32 px, with its ``tiny_test_overrides``, it takes
two views to a finite loss whose backward reaches its parameters; the optimizer never moves its frozen (EMA)
parameters and ``after_optimizer_step`` does, where its schedule has an EMA momentum below 1; the backbone it
exports is one of its sub-modules (so its weights are in checkpoints) and reloads into a fresh timm model of the
same name with identical outputs.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from selfsup import registry
from selfsup.build import build_method
from selfsup.config import load_config
from selfsup.methods.base import Method
from selfsup.models.backbone import create_backbone

SPECS = registry.specs()
SIZE, BATCH = 32, 4
TINY = (  # a 2-block, 32-d ViT (dinov2 needs a ViT, mocov3 a patch embedding), two 32 px global views
    "model.name=vit_tiny_patch16_224", f"model.args.img_size={SIZE}", "model.args.patch_size=8",
    "model.args.depth=2", "model.args.embed_dim=32", "model.args.num_heads=2", "model.drop_path_rate=0.0",
    "views.n_global=2", "views.n_local=0", f"views.global_crop_size={SIZE}", "train.device=cpu",
)


def _tiny(name: str, folder: Path):
    cfg = load_config(overrides=[f"method.name={name}", *TINY, *SPECS[name].tiny_test_overrides(folder)])
    torch.manual_seed(0)
    return cfg, build_method(cfg)


def _frozen(method: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in method.named_parameters() if not p.requires_grad}


def test_methods_are_registered():
    assert {"dino", "dinov2", "distill", "moby", "mocov3", "simclr"} <= set(SPECS)
    assert registry.DEFAULT in SPECS


@pytest.mark.parametrize("name", list(SPECS))
def test_spec_names_fields_of_its_section(name):
    spec = SPECS[name]
    fields = {f.name for f in dataclasses.fields(spec.config)}
    assert set(spec.ranges) <= fields and set(spec.choices) <= fields, (set(spec.ranges) | set(spec.choices)) - fields
    assert spec.min_views >= 1
    assert load_config(overrides=[f"method.name={name}", *TINY]).method.name == name  # two views suit every method


@pytest.mark.parametrize("name", list(SPECS))
def test_method_contract(name, tmp_path):
    cfg, method = _tiny(name, tmp_path)
    assert isinstance(method, Method)
    method.train()
    views = [torch.randn(BATCH, 3, SIZE, SIZE) for _ in range(2)]
    ctx = method.step_context(0, 10, 100)
    out = method(views, ctx)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss), out.loss
    assert all(torch.isfinite(v).all() for v in out.logs.values())
    out.loss.backward()
    trainable = [p for p in method.parameters() if p.requires_grad]
    grads = [p.grad for p in trainable if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)

    frozen = _frozen(method)
    method.before_optimizer_step(ctx)
    torch.optim.SGD(trainable, lr=0.1).step()
    assert all(torch.equal(p, frozen[n]) for n, p in _frozen(method).items())  # the optimizer never moves them
    method.after_optimizer_step(ctx)
    moved = [n for n, p in _frozen(method).items() if not torch.equal(p, frozen[n])]
    if ctx.momentum < 1:  # an EMA teacher / momentum encoder follows the trained parameters
        assert moved, f"{name}: after_optimizer_step moved none of {len(frozen)} frozen parameters"
    else:
        assert not moved, f"{name}: no EMA momentum, yet after_optimizer_step moved {moved[:3]}"

    backbone = method.export_backbone()
    assert any(m is backbone for m in method.modules()), "the exported backbone must be a sub-module (checkpoints)"
    fresh = create_backbone(cfg.model.name, model_args=dict(cfg.model.args))
    fresh.load_state_dict(backbone.state_dict(), strict=True)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), backbone.eval()(x))


def test_method_modules_import_without_torch():
    """Every config read imports every method's spec module (the schema is assembled from them): they must leave
    torch, timm and lightly to their builders, or reading a config would cost seconds."""
    code = ("import sys, selfsup.config, selfsup.registry as r; r.specs(); "
            "heavy = sorted(m for m in ('torch', 'timm', 'lightly') if m in sys.modules); "
            "assert not heavy, f'importing selfsup.config imported {heavy}'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
