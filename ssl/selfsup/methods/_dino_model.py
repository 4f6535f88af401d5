"""DINO: self-distillation with no labels (Caron et al. 2021, https://arxiv.org/abs/2104.14294).

"We train a student network to match the output of a teacher network [...]; the teacher is built
from past iterations of the student" via an exponential moving average. The student sees every crop,
the teacher only the global ones; the teacher output is centered and sharpened to avoid collapse.
Built from lightly's ``DINOProjectionHead``, ``DINOLoss`` and ``update_momentum``.

The backbone sees the crops of one size in one pass; the heads give each view what a call on that view alone
gives, as in lightly's DINO examples (and MoCo v3 here), so a ``batch_norm`` head normalises each view with its own
batch statistics. The authors' code runs the head once on all crops; per-view heads matched the reference loop on
CIFAR-10 where one pass did not (docs/benchmarks.md, the DINO parity table). Without BN the two are the same, and
the head runs once on every crop; with BN only its MLP runs per view, and the weight-normalised last layer always
runs once (:func:`~selfsup.methods._dino_head.head_over_batches`).

Shapes: b = batch, v = views (g global + l local), d = backbone dim, k = head output dim.
"""

from __future__ import annotations

import copy
import math
import warnings

import torch
from lightly.loss import DINOLoss, KoLeoLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import Tensor, nn

from selfsup.methods._centering import cross_view_entropy, entropy, mean_centered_targets, sinkhorn_knopp_targets
from selfsup.methods._dino_head import head_over_batches
from selfsup.methods._ema_teacher import set_teacher_mode, teacher_step_context
from selfsup.methods._signals import chance_logs, embed_std_logs
from selfsup.methods.base import StepContext, StepOutput
from selfsup.models.backbone import embed_dim
from selfsup.models.multicrop import forward_multicrop

# lightly's DINOProjectionHead still uses torch.nn.utils.weight_norm; the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message=r".*torch\.nn\.utils\.weight_norm.*is deprecated", category=FutureWarning)


class DINO(nn.Module):
    """Student/teacher pair with DINO heads and loss.

    Args:
        backbone: a timm backbone, (n, c, h, w) -> (n, d); the teacher is a copy of it.
        n_global: number of global views (the first ``n_global`` of the views); only they reach the teacher.
        out_dim, hidden_dim, bottleneck_dim, norm_last_layer, batch_norm: ``DINOProjectionHead`` settings
            (``batch_norm``: BatchNorm after the hidden linear layers, as lightly's CIFAR-10 benchmark).
        student_temp, center_momentum: ``DINOLoss`` parameters.
        warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs: teacher temperature schedule.
        momentum_teacher: EMA momentum at step 0, raised to 1 with a cosine.
        freeze_last_layer_epochs: the head's last layer gets no update for this many epochs.
        center: how the teacher's outputs are kept from collapsing: ``mean`` (DINO's EMA center, lightly's
            ``DINOLoss``) or ``sinkhorn_knopp`` (DINOv2's teacher: equal use of every prototype in each batch; see
            :mod:`selfsup.methods._centering`).
        koleo_weight: weight of lightly's ``KoLeoLoss`` (Sablayrolles et al. 2019) on the student's backbone
            embedding of each global view, added to the DINO loss as DINOv2 does (Oquab et al. 2023: 0.1); 0 = off.
    """

    export_encoder = "teacher"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        n_global: int,
        out_dim: int,
        hidden_dim: int,
        bottleneck_dim: int,
        norm_last_layer: bool,
        batch_norm: bool,
        student_temp: float,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: float,
        center_momentum: float,
        momentum_teacher: float,
        freeze_last_layer_epochs: float,
        koleo_weight: float,
        center: str = "mean",
    ) -> None:
        super().__init__()
        self.center = center
        self.student_temp = student_temp
        dim = embed_dim(backbone)  # the pooled width (MobileNetV3: head_hidden_size, not num_features)
        self.n_global = n_global
        self.out_dim = out_dim
        self.warmup_teacher_temp = warmup_teacher_temp
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.momentum_teacher = momentum_teacher
        self.freeze_last_layer_epochs = freeze_last_layer_epochs

        self.student_backbone = backbone
        self.student_head = DINOProjectionHead(
            dim, hidden_dim, bottleneck_dim, out_dim, batch_norm=batch_norm, freeze_last_layer=1,
            norm_last_layer=norm_last_layer,
        )
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(
            dim, hidden_dim, bottleneck_dim, out_dim, batch_norm=batch_norm, norm_last_layer=norm_last_layer
        )
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=out_dim, student_temp=student_temp, center_momentum=center_momentum)
        self.koleo_weight = koleo_weight
        self.koleo = KoLeoLoss()
        self.teacher_backbone.eval()
        self.teacher_head.eval()

    def train(self, mode: bool = True) -> DINO:
        """The teacher stays in eval mode except its BatchNorm layers (:func:`set_teacher_mode`)."""
        super().train(mode)
        set_teacher_mode((self.teacher_backbone, self.teacher_head), mode)
        return self

    def step_context(self, step: int, steps_per_epoch: int, total_steps: int) -> StepContext:
        return teacher_step_context(step, steps_per_epoch, total_steps, warmup_teacher_temp=self.warmup_teacher_temp,
                                    teacher_temp=self.teacher_temp,
                                    warmup_teacher_temp_epochs=self.warmup_teacher_temp_epochs,
                                    momentum_teacher=self.momentum_teacher)

    def forward(self, views: list[Tensor], ctx: StepContext) -> StepOutput:
        v, b = len(views), views[0].shape[0]
        with torch.no_grad():
            t_emb = forward_multicrop(self.teacher_backbone, views[: self.n_global])  # (g*b, d)
            t_out = head_over_batches(self.teacher_head, t_emb.chunk(self.n_global))  # (g*b, k)
        s_emb = forward_multicrop(self.student_backbone, views)  # (v*b, d)
        s_out = head_over_batches(self.student_head, s_emb.chunk(v))  # (v*b, k)
        # Under bf16 autocast the heads' outputs are bf16; the softmaxes over k and the cross-entropy einsum run in
        # fp32 (CPU autocast would keep softmax in bf16, and autocast casts the einsum's matmul down).
        with torch.autocast(device_type=s_out.device.type, enabled=False):
            student_views = [s.float() for s in s_out.chunk(v)]
            if self.center == "sinkhorn_knopp":  # over every global view of the batch at once, as DINOv2
                targets = sinkhorn_knopp_targets(t_out, self._teacher_temp(ctx))  # (g*b, k)
                loss = cross_view_entropy(list(targets.chunk(self.n_global)), student_views, self.student_temp)
            else:
                targets = None
                teacher_views = [t.float() for t in t_out.chunk(self.n_global)]
                loss = self.criterion(teacher_views, student_views, teacher_temp=ctx.teacher_temp)
            logs = {"objective_loss": loss.detach(), **chance_logs(math.log(self.out_dim))}
            if self.koleo_weight:  # DINOv2: one KoLeo term per global view, each over the (b, d) batch
                global_emb = s_emb[: self.n_global * b].float().chunk(self.n_global)  # g x (b, d)
                loss = loss + self.koleo_weight * sum(self.koleo(e) for e in global_emb)
        logs.update(self._collapse_signals(s_emb.detach(), t_out.detach(), targets, ctx, b))
        return StepOutput(loss=loss, logs=logs)

    def _teacher_temp(self, ctx: StepContext) -> float:
        return self.criterion.teacher_temp if ctx.teacher_temp is None else ctx.teacher_temp

    @torch.no_grad()
    def _collapse_signals(self, s_emb: Tensor, t_out: Tensor, targets: Tensor | None, ctx: StepContext,
                          b: int) -> dict[str, Tensor]:
        """Two collapse signals: the std of L2-normalised student embeddings of the first view (see
        :func:`embed_std_logs`) and the entropy of the teacher's targets (0 = one-hot collapse, ln(k) = uniform
        collapse)."""
        if targets is None:  # mean centering: the center was just updated by the loss
            targets = mean_centered_targets(t_out, self.criterion.center, self._teacher_temp(ctx))
        return {
            **embed_std_logs(s_emb[:b]),
            "teacher_entropy": entropy(targets),
            "teacher_entropy_max": torch.tensor(math.log(self.out_dim)),
        }

    def before_optimizer_step(self, ctx: StepContext) -> None:
        # lightly's helper drops the last layer's gradients while current_epoch < freeze_last_layer (=1).
        self.student_head.cancel_last_layer_gradients(0 if ctx.epoch < self.freeze_last_layer_epochs else 1)

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        update_momentum(self.student_backbone, self.teacher_backbone, m=ctx.momentum)
        update_momentum(self.student_head, self.teacher_head, m=ctx.momentum)

    def export_backbone(self) -> nn.Module:
        return self.teacher_backbone
