"""SimCLR: a simple framework for contrastive learning (Chen et al. 2020, arXiv 2002.05709).

"A stochastic data augmentation module [...] transforms any given data example randomly resulting in
two correlated views", a base encoder and "a small neural network projection head g(.) that maps
representations to the space where contrastive loss is applied" (one hidden layer with ReLU; BN as in
the authors' code). The loss is NT-Xent: for each of the 2N views, the other view of the same image
is the positive and the 2(N - 1) other views are negatives, "we do not sample negative examples
explicitly". With several processes the negatives come from the global batch (lightly's
``NTXentLoss(gather_distributed=True)``). There is no momentum encoder: the online encoder is exported.

Shapes: b = batch per process, d = backbone dim, k = head output dim.
"""

from __future__ import annotations

import math

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.utils import dist
from torch import Tensor, nn

from selfsup.methods._signals import chance_logs, embed_std_logs
from selfsup.methods._two_views import require_two_views
from selfsup.methods.base import StepContext, StepOutput
from selfsup.models.backbone import embed_dim


class SimCLR(nn.Module):
    """Backbone + projection head + NT-Xent.

    Args:
        backbone: a timm backbone, (n, c, h, w) -> (n, d).
        proj_hidden_dim, out_dim: projection head sizes (paper: 2048 hidden, 128 out).
        temperature: NT-Xent temperature (paper: 0.1 at large batch sizes).
    """

    export_encoder = "online"

    def __init__(
        self, backbone: nn.Module, *, proj_hidden_dim: int, out_dim: int, temperature: float
    ) -> None:
        super().__init__()
        dim = embed_dim(backbone)  # the pooled width (MobileNetV3: head_hidden_size, not num_features)
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(dim, proj_hidden_dim, out_dim, num_layers=2, batch_norm=True)
        self.criterion = NTXentLoss(temperature=temperature, gather_distributed=True)

    def step_context(self, step: int, steps_per_epoch: int, total_steps: int) -> StepContext:
        return StepContext(step=step, epoch=step / steps_per_epoch)

    def forward(self, views: list[Tensor], ctx: StepContext) -> StepOutput:
        require_two_views("simclr", views)
        emb = self.backbone(torch.cat(views))  # (2b, d)
        z0, z1 = self.projection_head(emb).float().chunk(2)  # (b, k) each
        loss = self.criterion(z0, z1)
        n = z0.shape[0] * dist.world_size()  # the global batch: 1 positive among 2n - 1 candidates
        return StepOutput(loss=loss, logs={**embed_std_logs(emb[: views[0].shape[0]]),
                                           **chance_logs(math.log(2 * n - 1))})

    def before_optimizer_step(self, ctx: StepContext) -> None:
        pass

    def after_optimizer_step(self, ctx: StepContext) -> None:
        pass

    def export_backbone(self) -> nn.Module:
        return self.backbone
