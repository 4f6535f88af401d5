"""Distillation of a frozen teacher into any timm student, as one more method of the pretraining loop.

Default loss: SEED, "Self-supervised Distillation for Visual Representation" (Fang et al., ICLR 2021,
arXiv 2101.04731), in the form of LightlyTrain's distillation v1. Student and teacher embed the same
augmented view; both embeddings are L2-normalised and compared by their similarity distributions over a
set of teacher embeddings ``D+``: the queue of teacher embeddings of earlier batches plus the teacher
embeddings of the current batch ("we append z^T_i to the queue", SEED Sec. 3.2; LightlyTrain enqueues the
current batch before the loss). With ``d_j`` the entries of ``D+``:

    p^T_j(x_i) = exp(z^T_i . d_j / tau^T) / sum_{d in D+} exp(z^T_i . d / tau^T)
    p^S_j(x_i) = exp(z^S_i . d_j / tau^S) / sum_{d in D+} exp(z^S_i . d / tau^S)
    L = 1/b sum_i KL(p^T(x_i) || p^S(x_i))

SEED minimises the cross-entropy ``-sum_j p^T_j log p^S_j``; the KL differs from it by the teacher's entropy,
which has no gradient, and is 0 when the student matches the teacher (a readable loss curve). Both
temperatures default to LightlyTrain's 0.07. When the student and teacher widths differ, a linear adapter
(LightlyTrain: ``Linear`` with a truncated-normal init, std 0.02) maps the student's pooled features to the
teacher's width; it is trained with the student and not exported.

``loss=cosine`` (``1 - cos(adapter(s), t)``) and ``loss=mse`` (mean squared error between ``adapter(s)``
and the raw teacher features, as FitNets' hint loss, Romero et al. 2015) are plain feature losses.

The teacher is frozen and outside the module tree (see :mod:`selfsup.models.teacher`); checkpoints hold
the student, the adapter and the queue (a persistent buffer, so resume is exact). The student is exported.

Shapes: b = batch per process, d = student width, D = teacher width, K = queue size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from selfsup.methods._queue import KeyQueue
from selfsup.methods._signals import embed_std_logs
from selfsup.methods.base import StepContext, StepOutput
from selfsup.models.backbone import embed_dim
from selfsup.models.teacher import FrozenTeacher


def seed_loss(student: Tensor, teacher: Tensor, queue: Tensor, *, student_temp: float, teacher_temp: float) -> Tensor:
    """SEED / LightlyTrain v1: KL between the teacher's and the student's similarity distributions over ``D+``.

    Args:
        student: (b, D) student embeddings (after the adapter), not normalised.
        teacher: (b, D) teacher embeddings, not normalised.
        queue: (K, D) L2-normalised teacher embeddings of earlier batches.
        student_temp, teacher_temp: tau^S and tau^T.

    Returns:
        Scalar loss, the mean over the batch of ``KL(p^T || p^S)``.
    """
    s = nn.functional.normalize(student.float(), dim=1)  # (b, D)
    t = nn.functional.normalize(teacher.float(), dim=1)  # (b, D)
    anchors = torch.cat([t, queue.to(t.dtype)])  # D+, (b + K, D)
    log_p_s = nn.functional.log_softmax(s @ anchors.T / student_temp, dim=1)  # (b, b + K)
    log_p_t = nn.functional.log_softmax(t @ anchors.T / teacher_temp, dim=1)
    return nn.functional.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)


def feature_loss(kind: str, student: Tensor, teacher: Tensor) -> Tensor:
    """``cosine``: mean of ``1 - cos(s, t)``; ``mse``: mean squared difference. Inputs (b, D)."""
    s, t = student.float(), teacher.float()
    if kind == "cosine":
        return (1 - nn.functional.cosine_similarity(s, t, dim=1)).mean()
    return nn.functional.mse_loss(s, t)


class Distill(nn.Module):
    """Student backbone + adapter, trained to match a frozen teacher on the same views.

    Args:
        backbone: the student, a timm backbone (n, c, h, w) -> (n, d).
        teacher: the frozen teacher, (n, c, h, w) -> (n, D).
        loss: ``seed`` (default), ``cosine`` or ``mse``.
        queue_size: K, teacher embeddings kept for ``seed`` (SEED: 65536 on ImageNet; LightlyTrain: 2048-8192
            depending on the dataset size).
        student_temp, teacher_temp: temperatures of ``seed`` (LightlyTrain: 0.07 both).
    """

    export_encoder = "student"

    def __init__(self, backbone: nn.Module, teacher: FrozenTeacher, *, loss: str, queue_size: int,
                 student_temp: float, teacher_temp: float) -> None:
        super().__init__()
        self.loss_kind = loss
        self.student_temp, self.teacher_temp = student_temp, teacher_temp
        self.backbone = backbone
        dim, teacher_dim = embed_dim(backbone), teacher.dim
        self.adapter: nn.Module = nn.Identity()
        if dim != teacher_dim:
            self.adapter = nn.Linear(dim, teacher_dim)
            nn.init.trunc_normal_(self.adapter.weight, std=0.02)
            nn.init.zeros_(self.adapter.bias)
        self.queue = KeyQueue(queue_size, teacher_dim) if loss == "seed" else None
        # Not a sub-module: outside state_dict, the optimizer, DDP/FSDP wrapping and train()/eval().
        object.__setattr__(self, "teacher", teacher)

    def step_context(self, step: int, steps_per_epoch: int, total_steps: int) -> StepContext:
        return StepContext(step=step, epoch=step / steps_per_epoch)

    def forward(self, views: list[Tensor], ctx: StepContext) -> StepOutput:
        """The loss averaged over the views; student and teacher see each view, one view at a time."""
        teacher: FrozenTeacher = self.teacher  # type: ignore[assignment]
        t = [teacher(v) for v in views]  # (b, D) each, no gradient
        feats = [self.backbone(v) for v in views]  # (b, d) each
        s = [self.adapter(f) for f in feats]  # (b, D) each
        if self.queue is not None:
            # The queue before this step, (K, D); every process enqueues its first view's teacher embeddings.
            queue = self.queue.swap(nn.functional.normalize(t[0], dim=1))
            losses = [seed_loss(si, ti, queue, student_temp=self.student_temp, teacher_temp=self.teacher_temp)
                      for si, ti in zip(s, t)]
        else:
            losses = [feature_loss(self.loss_kind, si, ti) for si, ti in zip(s, t)]
        loss = torch.stack(losses).mean()
        with torch.no_grad():
            cos = nn.functional.cosine_similarity(s[0].detach().float(), t[0], dim=1).mean()
        return StepOutput(loss=loss, logs={**embed_std_logs(feats[0]), "teacher_cos": cos})

    def before_optimizer_step(self, ctx: StepContext) -> None:
        pass

    def after_optimizer_step(self, ctx: StepContext) -> None:
        pass

    def export_backbone(self) -> nn.Module:
        return self.backbone
