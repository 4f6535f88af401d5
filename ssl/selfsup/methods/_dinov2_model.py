"""DINOv2's objective (Oquab et al. 2023, https://arxiv.org/abs/2304.07193), from lightly's pieces.

"We combine the DINO and iBOT losses with the centering of SwAV" (Sec. 4): an EMA teacher and a student as in
DINO, and three terms:

- the image-level DINO loss: the student's class token of every crop predicts the teacher's of the other global
  crops (lightly's ``DINOProjectionHead``; teacher targets centered by Sinkhorn-Knopp or by the mean);
- the iBOT masked-patch loss (Zhou et al. 2022): the student sees its global crops with blocks of patch tokens
  replaced by a learnt mask token (lightly's ``MaskedVisionTransformerTIMM`` and ``random_block_mask``) and
  predicts, at the masked positions only, the teacher's patch tokens of the whole image; its head is the DINO head
  or a separate one (``separate_ibot_head``);
- the KoLeo regulariser (lightly's ``KoLeoLoss``) on the student's class tokens of each global crop.

Patch tokens to mask need a ViT: other backbones are refused with one line (use ``method.name=dino``).
The teacher is exported, as in DINO.

Shapes: b = batch, g = global views, v = views, d = backbone dim, k = prototypes, (h, w) = patch grid of a global
crop, n = h * w patch tokens, p = prefix tokens (class, registers), m = masked tokens of the batch.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import torch
from lightly.loss import DINOLoss, IBOTPatchLoss, KoLeoLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.modules.masked_vision_transformer_timm import MaskedVisionTransformerTIMM
from lightly.models.utils import deactivate_requires_grad, random_block_mask, update_momentum
from timm.models import VisionTransformer
from torch import Tensor, nn

from selfsup.errors import ConfigError
from selfsup.methods._centering import (
    cross_view_entropy,
    entropy,
    masked_patch_entropy,
    mean_centered_targets,
    sinkhorn_knopp_targets,
)
from selfsup.methods._dino_head import head_over_batches
from selfsup.methods._ema_teacher import set_teacher_mode, teacher_step_context
from selfsup.methods._signals import chance_logs, embed_std_logs
from selfsup.methods.base import StepContext, StepOutput
from selfsup.models.backbone import embed_dim
from selfsup.models.multicrop import forward_multicrop

warnings.filterwarnings("ignore", message=r".*torch\.nn\.utils\.weight_norm.*is deprecated", category=FutureWarning)


def require_vit(backbone: nn.Module) -> VisionTransformer:
    """The backbone as a timm ViT, or a one-line error: iBOT masks patch tokens, which only a ViT has."""
    if not isinstance(backbone, VisionTransformer):
        raise ConfigError(
            f"method.name=dinov2 masks patch tokens (iBOT) and needs a timm VisionTransformer (e.g. model.name="
            f"vit_small_patch16_224); {type(backbone).__name__} has none to mask: use method.name=dino for it")
    return backbone


def patch_grid(vit: VisionTransformer, view: Tensor) -> tuple[int, int]:
    """(h, w) patch tokens of a view (b, c, H, W), asked of the model's patch embedding."""
    ph, pw = vit.patch_embed.patch_size
    return view.shape[-2] // ph, view.shape[-1] // pw


class DINOv2(nn.Module):
    """Student/teacher pair with DINO and iBOT heads, DINO + iBOT + KoLeo loss.

    Args:
        backbone: a timm ``VisionTransformer`` (``num_classes=0``); the teacher is a copy of it.
        n_global: number of global views (the first ``n_global``); only they reach the teacher and are masked.
        out_dim, hidden_dim, bottleneck_dim, batch_norm: the DINO head (lightly's ``DINOProjectionHead``, normalised
            last layer as in DINOv2); ``ibot_out_dim`` for a separate iBOT head (``separate_ibot_head``).
        student_temp, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs: temperatures.
        center: ``sinkhorn_knopp`` (DINOv2) or ``mean`` (DINO/iBOT's EMA center, momentum ``center_momentum``).
        momentum_teacher: EMA momentum at step 0, raised to 1 with a cosine.
        freeze_last_layer_epochs: the heads' last layers get no update for this many epochs.
        koleo_weight, ibot_weight: weights of the KoLeo and iBOT terms (the DINO term has weight 1).
        mask_probability: share of the global crops that get masked (DINOv2: 0.5).
        mask_ratio: (min, max) share of a masked crop's patch tokens that are masked (DINOv2: 0.1 to 0.5).
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
        batch_norm: bool,
        separate_ibot_head: bool,
        ibot_out_dim: int,
        student_temp: float,
        warmup_teacher_temp: float,
        teacher_temp: float,
        warmup_teacher_temp_epochs: float,
        center: str,
        center_momentum: float,
        momentum_teacher: float,
        freeze_last_layer_epochs: float,
        koleo_weight: float,
        ibot_weight: float,
        mask_probability: float,
        mask_ratio: tuple[float, float],
    ) -> None:
        super().__init__()
        vit = require_vit(backbone)
        dim = embed_dim(vit)
        self.n_global, self.out_dim = n_global, out_dim
        self.warmup_teacher_temp, self.teacher_temp = warmup_teacher_temp, teacher_temp
        self.warmup_teacher_temp_epochs = warmup_teacher_temp_epochs
        self.momentum_teacher, self.freeze_last_layer_epochs = momentum_teacher, freeze_last_layer_epochs
        self.center, self.student_temp = center, student_temp
        self.koleo_weight, self.ibot_weight = koleo_weight, ibot_weight
        self.mask_probability, self.mask_ratio = mask_probability, (float(mask_ratio[0]), float(mask_ratio[1]))

        # the student wraps the timm ViT to replace masked patch tokens; its weights stay timm's ("skip")
        self.student_backbone = MaskedVisionTransformerTIMM(vit=vit, weight_initialization="skip",
                                                            pos_embed_initialization="skip")
        self.teacher_backbone = copy.deepcopy(vit)

        def head(k: int) -> DINOProjectionHead:
            return DINOProjectionHead(dim, hidden_dim, bottleneck_dim, k, batch_norm=batch_norm, freeze_last_layer=1,
                                      norm_last_layer=True)

        self.student_head = head(out_dim)
        self.teacher_head = head(out_dim)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        # a separate iBOT head pair, or None: the DINO heads serve both (never registered twice: one tensor, one key)
        self.student_patch_head = head(ibot_out_dim) if separate_ibot_head else None
        self.teacher_patch_head = head(ibot_out_dim) if separate_ibot_head else None
        if separate_ibot_head:
            self.teacher_patch_head.load_state_dict(self.student_patch_head.state_dict())
        self.ibot_out_dim = ibot_out_dim if separate_ibot_head else out_dim
        for module in self._teachers:
            deactivate_requires_grad(module)
        self.dino_loss = DINOLoss(output_dim=out_dim, student_temp=student_temp, center_momentum=center_momentum)
        self.ibot_loss = IBOTPatchLoss(output_dim=self.ibot_out_dim, student_temp=student_temp,
                                       center_momentum=center_momentum)
        self.koleo = KoLeoLoss()

    @property
    def student_ibot_head(self) -> DINOProjectionHead:
        return self.student_patch_head or self.student_head

    @property
    def teacher_ibot_head(self) -> DINOProjectionHead:
        return self.teacher_patch_head or self.teacher_head

    @property
    def _teachers(self) -> tuple[nn.Module, ...]:
        return (self.teacher_backbone, self.teacher_head,
                *([self.teacher_patch_head] if self.teacher_patch_head else []))

    def train(self, mode: bool = True) -> DINOv2:
        """The teacher stays in eval mode except its BatchNorm layers (:func:`set_teacher_mode`)."""
        super().train(mode)
        set_teacher_mode(self._teachers, mode)
        return self

    def step_context(self, step: int, steps_per_epoch: int, total_steps: int) -> StepContext:
        return teacher_step_context(step, steps_per_epoch, total_steps, warmup_teacher_temp=self.warmup_teacher_temp,
                                    teacher_temp=self.teacher_temp,
                                    warmup_teacher_temp_epochs=self.warmup_teacher_temp_epochs,
                                    momentum_teacher=self.momentum_teacher)

    def masks(self, global_views: Tensor) -> Tensor:
        """DINOv2's block masks of the global crops (g*b, c, H, W) -> (g*b, h, w) bool, True = masked."""
        h, w = patch_grid(self.student_backbone.vit, global_views)
        # blocks of 4 tokens to half the grid, as DINOv2's MaskingGenerator; smaller blocks on grids too small for 4
        smallest = max(1, min(4, int(h * w * self.mask_ratio[0])))
        return random_block_mask((global_views.shape[0], h, w), batch_mask_ratio=self.mask_probability,
                                 min_image_mask_ratio=self.mask_ratio[0], max_image_mask_ratio=self.mask_ratio[1],
                                 min_num_masks_per_block=smallest, max_num_masks_per_block=max(smallest, h * w // 2),
                                 device=global_views.device)

    def student_tokens(self, images: Tensor, masks: Tensor) -> Tensor:
        """The student's normalised tokens (b, p + n, d) with the patch tokens where ``masks`` (b, h, w) is True
        replaced by the mask token (the prefix tokens are never masked)."""
        vit = self.student_backbone.vit
        prefix = masks.new_zeros(masks.shape[0], vit.num_prefix_tokens)
        return self.student_backbone.encode(images, mask=torch.cat([prefix, masks.flatten(1)], dim=1))

    @staticmethod
    def _heads(head: DINOProjectionHead, patch_head: DINOProjectionHead | None, views: Sequence[Tensor],
               patches: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The DINO head on each view's class tokens (each (b, d)) and the iBOT head on the masked patch tokens
        (m, d), each batch as if it had the head to itself (:func:`head_over_batches`); with a shared head, one pass
        of its last layer over both. Returns (v*b, k) and (m, k') or None."""
        if patches is None:
            return head_over_batches(head, views), None
        if patch_head is not None:
            return head_over_batches(head, views), head_over_batches(patch_head, [patches])
        cls_out, patch_out = head_over_batches(head, [*views, patches]).split([sum(map(len, views)), len(patches)])
        return cls_out, patch_out

    def forward(self, views: list[Tensor], ctx: StepContext) -> StepOutput:
        g, v, b = self.n_global, len(views), views[0].shape[0]
        vit, p = self.student_backbone.vit, self.student_backbone.vit.num_prefix_tokens
        global_views = torch.cat(views[:g])  # (g*b, c, H, W)
        masks = self.masks(global_views)  # (g*b, h, w)
        flat = masks.flatten(1)  # (g*b, n)
        with torch.no_grad():
            t_tok = self.teacher_backbone.forward_features(global_views)  # (g*b, p + n, d)
            t_cls = self.teacher_backbone.forward_head(t_tok, pre_logits=True)  # (g*b, d)
            masked = bool(flat.any())  # False only for tiny crops (a block needs a few tokens) or mask_probability 0
            t_out, t_patch = self._heads(self.teacher_head, self.teacher_patch_head, t_cls.chunk(g),
                                         t_tok[:, p:][flat] if masked else None)  # (g*b, k), (m, k') or None
        s_tok = self.student_tokens(global_views, masks)  # (g*b, p + n, d)
        s_cls = vit.forward_head(s_tok, pre_logits=True)  # (g*b, d)
        s_emb = torch.cat([s_cls, forward_multicrop(vit, views[g:])]) if v > g else s_cls  # (v*b, d)
        s_out, s_patch = self._heads(self.student_head, self.student_patch_head, s_emb.chunk(v),
                                     s_tok[:, p:][flat] if masked else None)  # (v*b, k), (m, k') or None
        temp = ctx.teacher_temp if ctx.teacher_temp is not None else self.teacher_temp
        # the softmaxes and cross-entropies in fp32, as in DINO (autocast would keep them in bf16 on the CPU)
        with torch.autocast(device_type=s_out.device.type, enabled=False):
            student_views = [s.float() for s in s_out.chunk(v)]
            if self.center == "sinkhorn_knopp":
                targets = sinkhorn_knopp_targets(t_out, temp)  # (g*b, k), over every global view at once
                dino = cross_view_entropy(list(targets.chunk(g)), student_views, self.student_temp)
                ibot = (masked_patch_entropy(sinkhorn_knopp_targets(t_patch, temp), s_patch.float(), masks,
                                             self.student_temp) if masked else s_out.new_zeros((), dtype=torch.float32))
            else:
                dino = self.dino_loss([t.float() for t in t_out.chunk(g)], student_views, teacher_temp=temp)
                targets = mean_centered_targets(t_out, self.dino_loss.center, temp)  # for the entropy signal
                ibot = (self.ibot_loss(t_patch.float(), s_patch.float(), masks, teacher_temp=temp) if masked
                        else s_out.new_zeros((), dtype=torch.float32))
            loss = dino + self.ibot_weight * ibot
            if self.koleo_weight:  # one term per global view, each over the (b, d) batch, as DINO's
                koleo = sum(self.koleo(e) for e in s_cls.float().chunk(g))
                loss = loss + self.koleo_weight * koleo
        # the part with a chance level: DINO + iBOT (each ln(prototypes) for a student that predicts nothing)
        chance = math.log(self.out_dim) + (self.ibot_weight * math.log(self.ibot_out_dim) if masked else 0.0)
        logs = {"objective_loss": (dino + self.ibot_weight * ibot).detach(), "dino_loss": dino.detach(),
                "ibot_loss": ibot.detach(), **({"koleo_loss": koleo.detach()} if self.koleo_weight else {}),
                "masked_tokens": flat.sum().float(),
                **chance_logs(chance),
                **embed_std_logs(s_emb[:b]), "teacher_entropy": entropy(targets.detach()),
                "teacher_entropy_max": torch.tensor(math.log(self.out_dim))}
        return StepOutput(loss=loss, logs=logs)

    def before_optimizer_step(self, ctx: StepContext) -> None:
        epoch = 0 if ctx.epoch < self.freeze_last_layer_epochs else 1
        self.student_head.cancel_last_layer_gradients(epoch)
        if self.student_patch_head is not None:
            self.student_patch_head.cancel_last_layer_gradients(epoch)

    @torch.no_grad()
    def after_optimizer_step(self, ctx: StepContext) -> None:
        update_momentum(self.student_backbone.vit, self.teacher_backbone, m=ctx.momentum)
        update_momentum(self.student_head, self.teacher_head, m=ctx.momentum)
        if self.student_patch_head is not None:
            update_momentum(self.student_patch_head, self.teacher_patch_head, m=ctx.momentum)

    def export_backbone(self) -> nn.Module:
        return self.teacher_backbone
