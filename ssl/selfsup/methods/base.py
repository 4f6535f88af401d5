"""What every method provides to the training loop.

A method is composed of backbone(s), head(s) and a loss (and maybe a momentum encoder); there is no
base class to inherit. The loop only calls what :class:`Method` lists, so it never knows which
method runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # the method registry imports this module while a config is read: no torch at import
    from torch import Tensor, nn


@dataclass(frozen=True)
class StepContext:
    """Per-step values from the schedules (pure functions of ``step``)."""

    step: int
    epoch: float  # fractional nominal epoch, step / steps_per_epoch
    momentum: float = 1.0  # EMA momentum of the teacher / momentum encoder
    teacher_temp: float | None = None  # DINO's teacher temperature (None for methods without one)


def ema_step_context(step: int, steps_per_epoch: int, total_steps: int, base_momentum: float,
                     teacher_temp: float | None = None) -> StepContext:
    """The context of a method with a momentum encoder: EMA momentum from ``base_momentum`` at step 0 to 1 at
    the last step, with a half cosine (DINO, MoCo v3, MoBY)."""
    from selfsup.optim.schedules import cosine

    return StepContext(step=step, epoch=step / steps_per_epoch, momentum=cosine(step, total_steps, base_momentum, 1.0),
                       teacher_temp=teacher_temp)


@dataclass
class StepOutput:
    """Loss to back-propagate plus detached scalars to log (collapse signals and friends)."""

    loss: Tensor
    logs: dict[str, Tensor] = field(default_factory=dict)


@runtime_checkable
class Method(Protocol):
    """The interface between a method and the loop."""

    #: which encoder :meth:`export_backbone` returns: ``teacher``, ``momentum``, ``online`` or ``student`` (distill).
    export_encoder: str

    def forward(self, views: list[Tensor], ctx: StepContext) -> StepOutput:
        """Loss for one batch; ``views`` are v tensors (b, c, h, w), global views first."""
        ...

    def step_context(self, step: int, steps_per_epoch: int, total_steps: int) -> StepContext:
        """Schedule values (EMA momentum, temperatures) for ``step``."""
        ...

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Called after backward and clipping, before ``optimizer.step()`` (e.g. freeze a layer)."""
        ...

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Called after ``optimizer.step()`` (e.g. EMA update of the teacher)."""
        ...

    def export_backbone(self) -> nn.Module:
        """The timm backbone to export and evaluate."""
        ...
