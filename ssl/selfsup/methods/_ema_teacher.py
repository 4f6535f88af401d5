"""What DINO and DINOv2 share about their EMA teacher: its train/eval mode and its per-step schedule."""

from __future__ import annotations

from torch import nn

from selfsup.methods._dino_head import BATCH_NORMS
from selfsup.methods.base import StepContext, ema_step_context
from selfsup.optim.schedules import linear_warmup


def set_teacher_mode(teachers: tuple[nn.Module, ...], mode: bool) -> None:
    """The teacher stays in eval mode (no drop path) whatever the student does, as in DINOv2, except its BatchNorm
    layers: the EMA moves parameters, not running statistics, so a teacher with BN (a CNN backbone, ``batch_norm``
    heads) normalises with the current batch in training, as in the authors' code."""
    for teacher in teachers:
        teacher.eval()
        for module in teacher.modules():
            if isinstance(module, BATCH_NORMS):
                module.train(mode)


def teacher_step_context(step: int, steps_per_epoch: int, total_steps: int, *, warmup_teacher_temp: float,
                         teacher_temp: float, warmup_teacher_temp_epochs: float,
                         momentum_teacher: float) -> StepContext:
    """Teacher temperature warmed up linearly over ``warmup_teacher_temp_epochs``, EMA momentum cosine to 1."""
    temp = linear_warmup(step, round(warmup_teacher_temp_epochs * steps_per_epoch), warmup_teacher_temp, teacher_temp)
    return ema_step_context(step, steps_per_epoch, total_steps, momentum_teacher, teacher_temp=temp)
