"""MoCo v3: an empirical study of training self-supervised ViTs (Chen, Xie, He 2021, arXiv 2104.02057).

"We take two crops for each image under random data augmentation. They are encoded by two encoders,
f_q and f_k, with output vectors q and k." f_q is backbone + projection head + prediction head, f_k is
backbone + projection head, a moving average of f_q's (momentum 0.99 raised to 1 with a cosine). The
loss is the paper's Algorithm 1, symmetrised: ``ctr(q1, k2) + ctr(q2, k1)`` with InfoNCE at temperature
0.2 whose negatives are the keys of the whole (all-process) batch, multiplied by ``2 * tau``.

Heads follow the paper and the authors' code (``moco/builder.py``): "The projection head is a 3-layer
MLP. The prediction head is a 2-layer MLP. The hidden layers of both MLPs are 4096-d [...] the output
layers of both MLPs are 256-d [...]. In MoCo v3, all layers in both MLPs have BN" (the projector's last
BN has no affine parameters, linear layers have no bias, the predictor's output has no BN).

Stability: "we propose to freeze the patch projection layer [...] we use a fixed random patch
projection" (Sec. 4.1): ``freeze_patch_embed`` keeps the backbone's random ``patch_embed``.

Choices, as in the authors' code:
- The momentum branch runs in the same train/eval mode as the online one, so the BN layers of its
  projector normalise keys with the statistics of the current batch (its running statistics are its
  own, not averaged). ViTs have no BN; their train mode only matters for drop path, which MoCo v3 does
  not use (``model.drop_path_rate: 0`` in the configs).
- Heads see one view at a time (BN statistics per view), the backbone sees both views at once.
- The exported encoder is the online one: the authors' ``convert_to_deit.py`` converts
  ``module.base_encoder`` for linear probing and fine-tuning.

Shapes: b = batch per process, w = processes, d = backbone dim, k = head output dim.
"""

from __future__ import annotations

import copy
import math

import torch
from lightly.models.modules.heads import ProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.utils import dist
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.methods._signals import chance_logs, embed_std_logs
from selfsup.methods._two_views import require_two_views
from selfsup.methods.base import StepContext, StepOutput, ema_step_context
from selfsup.models.backbone import embed_dim


def mocov3_projector(input_dim: int, hidden_dim: int, output_dim: int) -> ProjectionHead:
    """3-layer MLP, BN after every linear layer, ReLU on the hidden ones, no affine on the last BN."""
    return ProjectionHead([
        (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(), False),
        (hidden_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(), False),
        (hidden_dim, output_dim, nn.BatchNorm1d(output_dim, affine=False), None, False),
    ])


def mocov3_predictor(input_dim: int, hidden_dim: int, output_dim: int) -> ProjectionHead:
    """2-layer MLP, BN + ReLU on the hidden layer, a plain linear output (no bias, as the authors' code)."""
    return ProjectionHead([
        (input_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(), False),
        (hidden_dim, output_dim, None, None, False),
    ])


def contrastive_loss(q: Tensor, k: Tensor, temperature: float) -> Tensor:
    """MoCo v3's ``ctr(q, k)``: InfoNCE of each query against the keys of the global batch, times 2 tau.

    The positive of query i is key i of this process; every other key of every process is a negative.
    Keys are gathered from all processes (lightly's autograd-aware ``gather``; keys carry no gradient
    in MoCo v3, queries stay local), so with w processes the mean of the w losses equals the loss of
    one process on the concatenated batch.

    Args:
        q: (b, k) queries (not normalised).
        k: (b, k) keys (not normalised).
        temperature: tau.

    Returns:
        Scalar loss.
    """
    q = nn.functional.normalize(q.float(), dim=1)
    k = nn.functional.normalize(k.float(), dim=1)
    b = q.shape[0]
    if dist.world_size() > 1:
        k = torch.cat(dist.gather(k.contiguous()))  # (w*b, k)
    logits = q @ k.T / temperature  # (b, w*b)
    labels = torch.arange(b, device=q.device) + dist.rank() * b
    return nn.functional.cross_entropy(logits, labels) * (2 * temperature)


def freeze_patch_embedding(backbone: nn.Module) -> None:
    """Freeze the backbone's ``patch_embed`` module (requires_grad False on all its parameters)."""
    patch_embed = getattr(backbone, "patch_embed", None)
    if not isinstance(patch_embed, nn.Module):
        raise ConfigError(
            f"method.mocov3.freeze_patch_embed=true: model {type(backbone).__name__} has no 'patch_embed' "
            f"module (expected a timm ViT or Swin; set method.mocov3.freeze_patch_embed=false)"
        )
    deactivate_requires_grad(patch_embed)


class MoCoV3(nn.Module):
    """Online encoder (backbone + projector + predictor) and momentum encoder (backbone + projector).

    Args:
        backbone: a timm backbone, (n, c, h, w) -> (n, d); the momentum backbone is a copy of it.
        proj_hidden_dim, out_dim, pred_hidden_dim: head sizes (paper: 4096, 256, 4096).
        temperature: InfoNCE temperature (paper: 0.2).
        momentum: EMA momentum at step 0, raised to 1 with a half cosine (paper: 0.99).
        freeze_patch_embed: keep the random patch projection frozen (paper, Sec. 4.1).
    """

    export_encoder = "online"

    def __init__(
        self,
        backbone: nn.Module,
        *,
        proj_hidden_dim: int,
        out_dim: int,
        pred_hidden_dim: int,
        temperature: float,
        momentum: float,
        freeze_patch_embed: bool,
    ) -> None:
        super().__init__()
        dim = embed_dim(backbone)  # the pooled width (MobileNetV3: head_hidden_size, not num_features)
        if freeze_patch_embed:
            freeze_patch_embedding(backbone)
        self.temperature = temperature
        self.momentum = momentum
        self.backbone = backbone
        self.projection_head = mocov3_projector(dim, proj_hidden_dim, out_dim)
        self.prediction_head = mocov3_predictor(out_dim, pred_hidden_dim, out_dim)
        self.momentum_backbone = copy.deepcopy(backbone)
        self.momentum_projection_head = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.momentum_backbone)
        deactivate_requires_grad(self.momentum_projection_head)

    def step_context(self, step: int, steps_per_epoch: int, total_steps: int) -> StepContext:
        return ema_step_context(step, steps_per_epoch, total_steps, self.momentum)

    def forward(self, views: list[Tensor], ctx: StepContext) -> StepOutput:
        require_two_views("mocov3", views)
        x = torch.cat(views)  # (2b, c, h, w)
        emb = self.backbone(x)  # (2b, d)
        q1, q2 = (self.prediction_head(self.projection_head(e)) for e in emb.chunk(2))  # (b, k) each
        with torch.no_grad():
            k1, k2 = (self.momentum_projection_head(e) for e in self.momentum_backbone(x).chunk(2))
        loss = contrastive_loss(q1, k2, self.temperature) + contrastive_loss(q2, k1, self.temperature)
        chance = 2 * 2 * self.temperature * math.log(q1.shape[0] * dist.world_size())  # two terms, each x 2 tau
        return StepOutput(loss=loss, logs={**embed_std_logs(emb[: views[0].shape[0]]), **chance_logs(chance)})

    def before_optimizer_step(self, ctx: StepContext) -> None:
        pass

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        update_momentum(self.backbone, self.momentum_backbone, m=ctx.momentum)
        update_momentum(self.projection_head, self.momentum_projection_head, m=ctx.momentum)

    def export_backbone(self) -> nn.Module:
        return self.backbone
