"""The frozen teacher of distillation: a timm model loaded from an export folder or by name, never trained.

A config key names it (distillation's ``method.distill.teacher``; errors name that key), in one of three forms:

- a folder written by ``selfsup export`` (or any timm ``save_for_hf`` folder): ``runs/x/export``;
- the same with timm's prefix: ``local-dir:runs/x/export``;
- a timm model name whose pretrained weights timm can load (``vit_small_patch14_dinov2.lvd142m``,
  ``hf-hub:org/name``): read from the local Hugging Face cache, nothing is downloaded during a test.

The teacher is kept outside the method's module tree (:class:`FrozenTeacher` is not an ``nn.Module``): its
weights are not in ``state_dict()``, so checkpoints hold only what training changes, strict key checks on
resume and export compare only the student side, DDP/FSDP never wrap or shard it, ``method.train()`` never
flips it out of eval mode, and the optimizer never sees it.

Shapes: b = batch, c = 3 channels, s = view size, S = ``size`` (the teacher's input side), D = teacher width.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.models.backbone import embed_dim

EXPECTED = "expected a `selfsup export` folder, local-dir:FOLDER, or a timm model name with pretrained weights"


def teacher_name(spec: str, key: str = "teacher") -> str:
    """The ``timm.create_model`` name for ``spec``, or a one-line :class:`ConfigError` naming ``key`` (the config key
    that gave ``spec``)."""
    spec = spec.strip()
    if not spec:
        raise ConfigError(f"'{key}' is empty ({EXPECTED})")
    if spec.startswith("hf-hub:") or spec.startswith("timm/"):
        return spec
    is_local = spec.startswith("local-dir:")
    path = Path(spec.removeprefix("local-dir:"))
    if path.is_dir():
        if (path / "config.json").is_file():
            return f"local-dir:{path.resolve()}"
        if (path / "config.yaml").is_file():  # a run folder, not its export
            raise ConfigError(f"'{key}': {path} is a run folder; export it first (selfsup export {path} OUT) and "
                              f"pass OUT")
        raise ConfigError(f"'{key}': {path} has no config.json ({EXPECTED})")
    if is_local or "/" in spec or spec.startswith("."):
        raise ConfigError(f"'{key}': no such folder: {path} ({EXPECTED})")
    if not timm.is_model(spec):
        raise ConfigError(f"'{key}': {spec} is neither a folder nor a timm model name ({EXPECTED})")
    try:
        pcfg = timm.models.get_pretrained_cfg(spec)
    except RuntimeError as e:  # a wrong pretrained tag
        raise ConfigError(f"'{key}': {e}") from None
    if pcfg is None or not (pcfg.hf_hub_id or pcfg.url or pcfg.file):  # timm would silently use a random init
        raise ConfigError(f"'{key}': timm has no pretrained weights for {spec} ({EXPECTED})")
    return spec


class FrozenTeacher:
    """A timm model in eval mode without gradients, re-normalising the student's views to its own input.

    Args:
        model: the timm model, ``num_classes=0`` (pooled features).
        view_mean, view_std: the normalisation of the views the student sees.
        size: square input side for the teacher; 0 = the views as they come.
        source: what the config key said (for messages).
    """

    def __init__(self, model: nn.Module, *, view_mean: Sequence[float], view_std: Sequence[float], size: int = 0,
                 source: str = "") -> None:
        self.model = model.eval().requires_grad_(False)
        self.source = source
        self.size = int(size)
        self.dim = embed_dim(model)
        cfg = timm.data.resolve_data_config({}, model=model)
        t_mean, t_std = torch.tensor(cfg["mean"]), torch.tensor(cfg["std"])
        v_mean, v_std = torch.tensor(list(view_mean)), torch.tensor(list(view_std))
        # (x * v_std + v_mean - t_mean) / t_std == x * scale + shift; None when the two agree.
        self._affine: tuple[Tensor, Tensor] | None = None
        if not (torch.allclose(t_mean, v_mean) and torch.allclose(t_std, v_std)):
            self._affine = ((v_std / t_std).view(1, 3, 1, 1), ((v_mean - t_mean) / t_std).view(1, 3, 1, 1))

    def _follow(self, x: Tensor) -> None:
        """Move the teacher to the device of the views the first time they arrive there."""
        p = next(self.model.parameters(), None)
        if p is not None and p.device != x.device:
            self.model.to(x.device)
            if self._affine is not None:
                self._affine = (self._affine[0].to(x.device), self._affine[1].to(x.device))

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Teacher features (b, D) in float32 for views (b, c, s, s) normalised as the student's."""
        self._follow(x)
        if self._affine is not None:
            x = x * self._affine[0] + self._affine[1]
        if self.size and x.shape[-1] != self.size:
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                          antialias=True)  # (b, c, S, S)
        return self.model(x).float()


def load_teacher(spec: str, *, view_mean: Sequence[float], view_std: Sequence[float], size: int = 0,
                 model_args: dict[str, Any] | None = None, key: str = "teacher") -> FrozenTeacher:
    """Build the teacher named by ``spec`` (see the module docstring) with its weights.

    The global RNG is left untouched (timm draws a random init before loading the weights), so the student's
    initialisation does not depend on which teacher is used.

    Raises:
        ConfigError: in one line, when ``spec`` names nothing loadable.
    """
    name = teacher_name(spec, key)
    try:
        with torch.random.fork_rng(devices=[]):
            model = timm.create_model(name, pretrained=True, num_classes=0, **dict(model_args or {}))
    except (RuntimeError, OSError, ValueError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(f"'{key}': timm cannot load {spec} with its weights ({first})") from None
    return FrozenTeacher(model, view_mean=view_mean, view_std=view_std, size=size, source=spec)
