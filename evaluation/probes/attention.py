"""DINO attention maps of a ViT: the last block's [CLS] -> patch self-attention, one map per head.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), 2021, Fig. 1 and
``visualize_attention.py``: the attention of the [CLS] query on the patch keys in the last block, per head,
upsampled to the image (nearest, one patch = ``patch x patch`` pixels), and the mask of the patches that
together hold the top 60% of a head's attention mass.

The attention probabilities are timm's own: :class:`timm.utils.AttentionExtract` hooks the last block's
``attn.attn_drop`` module, whose output is the softmaxed attention once the module's fused (SDPA) path is
switched off for the call - nothing of timm's attention is re-implemented here.

Shapes: b = images, H = heads, N = tokens (prefix + h*w), h x w = patch grid, S = image side.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def supports_attention_maps(model: nn.Module) -> bool:
    """True for a timm ViT-like model with a [CLS] token and timm ``Attention`` blocks."""
    blocks = getattr(model, "blocks", None)
    attn = getattr(blocks[-1], "attn", None) if isinstance(blocks, nn.Sequential) and len(blocks) else None
    return (getattr(model, "cls_token", None) is not None and attn is not None
            and hasattr(attn, "attn_drop") and hasattr(attn, "fused_attn") and hasattr(model, "patch_embed"))


@contextlib.contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Turn timm's fused-attention flag off on every attention module for the duration (restored after)."""
    saved = [(m, m.fused_attn) for m in model.modules() if hasattr(m, "fused_attn")]
    for m, _ in saved:
        m.fused_attn = False
    try:
        yield
    finally:
        for m, flag in saved:
            m.fused_attn = flag


def patch_grid(model: nn.Module, x: torch.Tensor) -> tuple[int, int, int]:
    """``(h, w, patch)`` of the patch grid of ``x`` (b, 3, S, S) for a timm ViT."""
    ph, pw = model.patch_embed.patch_size
    return x.shape[-2] // ph, x.shape[-1] // pw, ph


@torch.inference_mode()
def cls_attention(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Last-block [CLS] -> patch attention, renormalised over the patches.

    Args:
        model: a timm ViT (see :func:`supports_attention_maps`), in eval mode.
        x: (b, 3, S, S) normalised images.

    Returns:
        (b, H, h, w) float32, each map summing to 1 over the h*w patches (the [CLS] and register keys are
        dropped, as in DINO's ``attentions[0, :, 0, 1:]``; renormalising does not change the top-mass mask).
    """
    from timm.utils import AttentionExtract

    name = f"blocks.{len(model.blocks) - 1}.attn.attn_drop"
    h, w, _ = patch_grid(model, x)
    with unfused_attention(model):
        extractor = AttentionExtract(model, names=[name], method="fx")
        attn = extractor(x)[name].float()  # (b, H, N, N)
    prefix = attn.shape[-1] - h * w
    cls_to_patch = attn[:, :, 0, prefix:]  # (b, H, h*w)
    cls_to_patch = cls_to_patch / cls_to_patch.sum(-1, keepdim=True)
    return cls_to_patch.reshape(*cls_to_patch.shape[:2], h, w)


def top_mass_mask(attn: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """The patches that hold the top ``mass`` of each map's attention (DINO's ``visualize_attention`` threshold).

    Args:
        attn: (..., h, w) non-negative maps.
        mass: share of the total attention to keep.

    Returns:
        (..., h, w) bool: sorting a map's values in ascending order, a patch is kept when the cumulative share up to
        and including it exceeds ``1 - mass``.
    """
    flat = attn.flatten(-2)
    val, idx = flat.sort(dim=-1)
    val = val / val.sum(-1, keepdim=True)
    keep_sorted = val.cumsum(-1) > (1 - mass)
    keep = torch.zeros_like(keep_sorted).scatter_(-1, idx, keep_sorted)
    return keep.reshape(attn.shape)
