"""PCA of patch features to RGB, for any timm backbone (ViT, Swin, CNN).

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", 2023, Fig. 1 / Sec. 7.4: a PCA
of the patch features of a set of images; thresholding the first component separates foreground from
background, and a second PCA on the foreground patches maps their first three components to RGB.

Spatial features come from timm's ``forward_intermediates`` (the last stage, NCHW, with the final norm where the
model applies one) or, for models without it, ``forward_features`` reshaped to a grid. The PCA is an exact SVD
of the centred features (``torch.linalg.svd``; scikit-learn is an optional dependency).

Shapes: b = images, C = feature channels, h x w = feature grid, n = b*h*w patches.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.inference_mode()
def spatial_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(b, 3, S, S) -> (b, C, h, w) float32 features of the last stage."""
    if hasattr(model, "forward_intermediates"):
        try:
            feats = model.forward_intermediates(x, indices=1, norm=True, intermediates_only=True)
        except TypeError:  # a model whose forward_intermediates has no `norm` argument
            feats = model.forward_intermediates(x, indices=1, intermediates_only=True)
        return feats[-1].float()
    feats = model.forward_features(x).float()
    if feats.ndim == 4:
        # NHWC (Swin-like: the last dim is the channel count) or NCHW (CNN)
        return feats.permute(0, 3, 1, 2) if feats.shape[-1] == model.num_features else feats
    prefix = getattr(model, "num_prefix_tokens", 0)
    tokens = feats[:, prefix:]  # (b, h*w, C)
    side = int(round(tokens.shape[1] ** 0.5))
    if side * side != tokens.shape[1]:
        raise ValueError(f"cannot arrange {tokens.shape[1]} tokens into a square grid")
    return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, side, side)


def principal_components(x: torch.Tensor, k: int) -> torch.Tensor:
    """(n, C) -> (n, k) projections on the top-k principal directions (exact SVD of the centred rows)."""
    centred = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[:k].T
    # SVD signs are arbitrary: make each direction's largest |projection| positive, so results are reproducible
    sign = torch.sign(proj.gather(0, proj.abs().argmax(0, keepdim=True)))
    return proj * torch.where(sign == 0, torch.ones_like(sign), sign)


def _minmax(x: torch.Tensor) -> torch.Tensor:
    lo, hi = x.min(0, keepdim=True).values, x.max(0, keepdim=True).values
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def foreground_mask(first: torch.Tensor, *, threshold: float = 0.5) -> torch.Tensor:
    """(b, h, w) first-component scores -> (b, h, w) bool foreground, DINOv2's threshold on the min-max scaled
    first component. The component's sign is arbitrary, so the side that holds most of the border patches is
    taken as background (objects are usually centred)."""
    scaled = _minmax(first.reshape(-1, 1)).reshape(first.shape)
    fg = scaled > threshold
    border = torch.zeros_like(fg)
    border[:, 0, :] = border[:, -1, :] = border[:, :, 0] = border[:, :, -1] = True
    if fg[border].float().mean() > 0.5:
        fg = ~fg
    return fg


def pca_rgb(feats: torch.Tensor, *, drop_background: bool = True, threshold: float = 0.5) -> torch.Tensor:
    """Patch features of a set of images -> RGB maps in [0, 1].

    Args:
        feats: (b, C, h, w) features (one PCA over all b images, so colours are comparable between them).
        drop_background: use the first component to drop background (black) as in DINOv2; when fewer than 4
            patches are left, every patch is kept.
        threshold: foreground threshold on the min-max scaled first component.

    Returns:
        (b, h, w, 3) float32 in [0, 1]: the first three principal components of the foreground patches,
        min-max scaled per component; background patches are 0.
    """
    b, c, h, w = feats.shape
    x = feats.float().permute(0, 2, 3, 1).reshape(-1, c)  # (n, C)
    keep = torch.ones(x.shape[0], dtype=torch.bool)
    if drop_background and x.shape[0] > 1:
        fg = foreground_mask(principal_components(x, 1)[:, 0].reshape(b, h, w), threshold=threshold).reshape(-1)
        if int(fg.sum()) >= 4:
            keep = fg
    rgb = torch.zeros(x.shape[0], 3)
    k = min(3, c, int(keep.sum()))
    rgb[keep, :k] = _minmax(principal_components(x[keep], k))
    return rgb.reshape(b, h, w, 3).clamp(0, 1)
