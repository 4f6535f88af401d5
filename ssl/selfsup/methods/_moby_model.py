"""MoBY: self-supervised learning with Swin Transformers (Xie et al. 2021, arXiv 2105.04553).

"MoBY is a combination of two popular self-supervised learning approaches: MoCo v2 and BYOL. It
inherits the momentum design, the key queue, and the contrastive loss from MoCo v2, and inherits the
asymmetric encoders, asymmetric data augmentations, and the momentum scheduler from BYOL."
The online encoder (backbone + projector + predictor) and the target encoder (backbone + projector,
a moving average of the online one, momentum 0.99 raised to 1 with a cosine) embed two views. The
loss is symmetric: the prediction of view 1 must find the target key of view 2 among the keys in
view 2's queue, and the other way round (InfoNCE, temperature 0.2). Two queues of 4096 keys, one per
view, are filled with the target keys gathered from every process. Drop path is asymmetric: the
online backbone uses ``model.drop_path_rate`` (0.2 for Swin-T in the paper), the target one
``target_drop_path_rate`` (0.0).

Built from lightly's pieces: ``BYOLProjectionHead``/``BYOLPredictionHead`` (the authors' ``MoBYMLP``:
linear 4096 + BN + ReLU + linear 256), ``MemoryBankModule`` (see :mod:`selfsup.methods._queue`),
``update_momentum``.

Choices, as in the authors' code (``Transformer-SSL/models/moby.py``):
- The target branch runs in the same train/eval mode as the online one: its projector's BN normalises
  keys with the current batch statistics and its drop path is ``target_drop_path_rate`` (an eval-mode
  target would ignore that rate).
- Heads see one view at a time (BN statistics per view).
- The exported encoder is the online one: the authors load ``encoder.*`` (not ``encoder_k.*``) for
  linear evaluation and transfer.

Shapes: b = batch per process, K = queue size, d = backbone dim, k = head output dim.
"""

from __future__ import annotations

import copy
import math

import torch
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import Tensor, nn

from selfsup.methods._queue import KeyQueue
from selfsup.methods._signals import chance_logs, embed_std_logs
from selfsup.methods._two_views import require_two_views
from selfsup.methods.base import StepContext, StepOutput, ema_step_context
from selfsup.models.backbone import embed_dim


def moby_contrastive_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE of each query against its key (positive) and the queued keys (negatives).

    Args:
        q: (b, k) online predictions, L2-normalised.
        k: (b, k) target keys of the other view, L2-normalised.
        queue: (K, k) queued keys of that other view, L2-normalised.
        temperature: tau.

    Returns:
        Scalar loss: mean over the batch of ``-log(exp(q.k/tau) / (exp(q.k/tau) + sum_j exp(q.n_j/tau)))``.
    """
    l_pos = (q * k).sum(dim=1, keepdim=True)  # (b, 1)
    l_neg = q @ queue.T  # (b, K)
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # (b, 1 + K)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return nn.functional.cross_entropy(logits, labels)


class MoBY(nn.Module):
    """Online and target encoders, two key queues, symmetric contrastive loss.

    Args:
        backbone: online timm backbone, (n, c, h, w) -> (n, d).
        target_backbone: same architecture (may differ in drop path); its weights are overwritten with
            the online ones.
        proj_hidden_dim, out_dim, pred_hidden_dim: head sizes (paper: 4096, 256, 4096).
        temperature: contrastive temperature (paper: 0.2).
        momentum: EMA momentum at step 0, raised to 1 with a half cosine (paper: 0.99).
        queue_size: keys per queue (paper: 4096).
    """

    export_encoder = "online"

    def __init__(
        self,
        backbone: nn.Module,
        target_backbone: nn.Module,
        *,
        proj_hidden_dim: int,
        out_dim: int,
        pred_hidden_dim: int,
        temperature: float,
        momentum: float,
        queue_size: int,
    ) -> None:
        super().__init__()
        dim = embed_dim(backbone)  # the pooled width (MobileNetV3: head_hidden_size, not num_features)
        self.temperature = temperature
        self.momentum = momentum
        self.backbone = backbone
        self.projection_head = BYOLProjectionHead(dim, proj_hidden_dim, out_dim)
        self.prediction_head = BYOLPredictionHead(out_dim, pred_hidden_dim, out_dim)
        self.target_backbone = target_backbone
        self.target_backbone.load_state_dict(backbone.state_dict())
        self.target_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.target_backbone)
        deactivate_requires_grad(self.target_projection_head)
        self.queue1 = KeyQueue(queue_size, out_dim)  # target keys of view 1
        self.queue2 = KeyQueue(queue_size, out_dim)  # target keys of view 2

    def step_context(self, step: int, steps_per_epoch: int, total_steps: int) -> StepContext:
        return ema_step_context(step, steps_per_epoch, total_steps, self.momentum)

    def forward(self, views: list[Tensor], ctx: StepContext) -> StepOutput:
        require_two_views("moby", views)
        x = torch.cat(views)  # (2b, c, h, w)
        emb = self.backbone(x)  # (2b, d)
        p1, p2 = (nn.functional.normalize(self.prediction_head(self.projection_head(e)).float(), dim=1)
                  for e in emb.chunk(2))  # (b, k) each
        with torch.no_grad():
            k1, k2 = (nn.functional.normalize(self.target_projection_head(e).float(), dim=1)
                      for e in self.target_backbone(x).chunk(2))
        # Negatives are the queues before this step; then this step's keys (all processes) go in.
        queue1 = self.queue1.swap(k1, update=self.training)  # (K, k)
        queue2 = self.queue2.swap(k2, update=self.training)
        loss = (moby_contrastive_loss(p1, k2, queue2, self.temperature)
                + moby_contrastive_loss(p2, k1, queue1, self.temperature))
        chance = 2 * math.log(1 + queue1.shape[0])  # two terms, each 1 positive among 1 + K
        return StepOutput(loss=loss, logs={**embed_std_logs(emb[: views[0].shape[0]]), **chance_logs(chance)})

    def before_optimizer_step(self, ctx: StepContext) -> None:
        pass

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        update_momentum(self.backbone, self.target_backbone, m=ctx.momentum)
        update_momentum(self.projection_head, self.target_projection_head, m=ctx.momentum)

    def export_backbone(self) -> nn.Module:
        return self.backbone
