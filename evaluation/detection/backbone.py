"""A timm backbone as a multi-scale detection backbone (strides 8, 16, 32, 64) with an FPN.

Two kinds of timm models, told apart by asking the model (``feature_info`` reductions), never by
its name:

* **Hierarchical** (Swin, ConvNeXt, ResNet...): the stage maps at strides 8, 16, 32 from
  ``forward_intermediates`` go through an FPN, and a max-pool of the coarsest FPN level gives
  stride 64 (the ``LastLevelMaxPool`` of Lin et al., "Feature Pyramid Networks for Object
  Detection", CVPR 2017).
* **Plain** (ViT): one map at the patch stride from the last block. Following ViTDet (Li et al.,
  "Exploring Plain Vision Transformer Backbones for Object Detection", ECCV 2022), "we build a
  simple feature pyramid from only the last feature map of the plain backbone": strided
  deconvolutions up-sample and max-pooling down-samples it to strides 8, 16, 32, 64, then the FPN.
  The ViT is built with ``dynamic_img_size=True`` so its position embeddings are interpolated to
  the detector's (larger, non-square) inputs.

Shapes: ``b = batch, c = channels, h / w = input height / width, s = stride``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from timm.layers import LayerNorm2d
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from evaluation.loading.backbones import LoadedModel, ModelSource, load_model

PYRAMID_STRIDES = (8, 16, 32, 64)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet simple feature pyramid: one ``(b, c, h/p, w/p)`` map -> one map per target stride.

    Up-sampling by 2 is ``ConvTranspose2d(k=2, s=2)`` (with LayerNorm + GELU between two of them,
    as in ViTDet); down-sampling by ``k`` is ``MaxPool2d(k)``; stride == patch stride is identity.

    Args:
        in_channels: Channels of the ViT map (``num_features``).
        patch_stride: Stride of the ViT map (the patch size).
        strides: Output strides; each must be ``patch_stride * 2**k`` for an integer ``k``.
    """

    def __init__(self, in_channels: int, *, patch_stride: int, strides: tuple[int, ...] = PYRAMID_STRIDES) -> None:
        super().__init__()
        self.strides = strides
        self.out_channels: list[int] = []
        self.levels = nn.ModuleList()
        for s in strides:
            k = math.log2(s / patch_stride)
            if k != int(k):
                raise ValueError(f"stride {s} is not patch stride {patch_stride} times a power of two")
            layers: list[nn.Module] = []
            ch = in_channels
            if k < 0:
                for i in range(int(-k)):
                    out = max(ch // 2, 16)
                    if i > 0:
                        layers += [LayerNorm2d(ch, eps=1e-5), nn.GELU()]  # over the channels of NCHW
                    layers.append(nn.ConvTranspose2d(ch, out, kernel_size=2, stride=2))
                    ch = out
            elif k > 0:
                layers.append(nn.MaxPool2d(kernel_size=2 ** int(k), stride=2 ** int(k), ceil_mode=True))
            self.levels.append(nn.Sequential(*layers))
            self.out_channels.append(ch)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``(b, c, h/p, w/p)`` -> ``[(b, c_s, h/s, w/s) for s in strides]``."""
        return [level(x) for level in self.levels]


class TimmDetectionBackbone(nn.Module):
    """timm model -> ``OrderedDict`` of FPN maps ``"0".."3"`` at strides 8, 16, 32, 64.

    The timm model stays whole and is called through its public ``forward_intermediates``, so its
    parameter names (and ``group_matcher`` for layer-wise lr decay) are those of the exported model.

    Args:
        body: A timm model with ``forward_intermediates`` and ``feature_info``.
        fpn_channels: Channels of every FPN output (``out_channels`` for torchvision detectors).

    Attributes:
        out_channels: ``fpn_channels``.
        plain: True when the model has a single stride (ViT) and the simple pyramid is used.
    """

    def __init__(self, body: nn.Module, *, fpn_channels: int = 256) -> None:
        super().__init__()
        self.body = body
        info = list(getattr(body, "feature_info", None) or [])
        if not info or not hasattr(body, "forward_intermediates"):
            raise ValueError(f"{type(body).__name__} has no feature_info / forward_intermediates")
        reductions = [int(f["reduction"]) for f in info]
        self.plain = len(set(reductions)) == 1
        self.out_channels = fpn_channels
        if self.plain:
            self.indices = [len(info) - 1]
            self.pyramid: nn.Module | None = SimpleFeaturePyramid(int(info[-1]["num_chs"]), patch_stride=reductions[0])
            in_channels = self.pyramid.out_channels
            extra = None
        else:
            wanted = PYRAMID_STRIDES[:-1]
            self.indices = [reductions.index(s) if s in reductions else -1 for s in wanted]
            if -1 in self.indices:
                raise ValueError(f"{type(body).__name__} has feature strides {reductions}; expected 8, 16 and 32")
            self.pyramid = None
            in_channels = [int(info[i]["num_chs"]) for i in self.indices]
            extra = LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork(in_channels, fpn_channels, extra_blocks=extra)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        """``(b, 3, h, w)`` -> ``{"0": (b, c, h/8, w/8), ..., "3": (b, c, h/64, w/64)}``."""
        feats = self.body.forward_intermediates(x, indices=self.indices, intermediates_only=True)
        if self.pyramid is not None:
            feats = self.pyramid(feats[-1])
        out = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return OrderedDict((str(i), f) for i, f in enumerate(out.values()))


def flexible_size_kwargs(model: nn.Module) -> dict[str, bool]:
    """Extra ``create_model`` kwargs that let ``model`` take detector-sized, non-square inputs.

    ViT needs ``dynamic_img_size=True`` (position-embedding interpolation); Swin and other models
    with a strict patch embedding need ``strict_img_size=False``. Asked of the model, not its name.
    """
    kwargs: dict[str, bool] = {}
    if getattr(model, "dynamic_img_size", None) is False:
        kwargs["dynamic_img_size"] = True
    patch_embed = getattr(model, "patch_embed", None)
    if getattr(patch_embed, "strict_img_size", False) and "dynamic_img_size" not in kwargs \
            and getattr(model, "dynamic_img_size", None) is None:
        kwargs["strict_img_size"] = False
    return kwargs


def load_detection_body(source: ModelSource) -> LoadedModel:
    """The timm model of ``source``, loaded as by every evaluation stage
    (:func:`evaluation.loading.backbones.load_model`), rebuilt with :func:`flexible_size_kwargs` when its saved
    arguments fix the input size."""
    loaded = load_model(source)
    extra = flexible_size_kwargs(loaded.model)
    return load_model(source, model_kwargs=extra) if extra else loaded
