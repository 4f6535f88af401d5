"""Faster R-CNN (Ren et al., "Faster R-CNN: Towards Real-Time Object Detection with Region Proposal
Networks", NeurIPS 2015) from torchvision, on a :class:`TimmDetectionBackbone`.

The detector's own transform resizes so that the longer side is ``img_size``, normalises with the
backbone's ``pretrained_cfg`` mean / std, and pads to a multiple of 64 (the coarsest stride, which
also keeps the ViT patch grid and the Swin windows whole).
"""

from __future__ import annotations

import timm
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from evaluation.detection.backbone import PYRAMID_STRIDES, TimmDetectionBackbone


def build_detector(body: nn.Module, *, num_classes: int, img_size: int, fpn_channels: int = 256,
                   proposals: int = 1000, rois_per_image: int = 256) -> FasterRCNN:
    """Faster R-CNN with FPN levels at strides 8-64 over a timm ``body``.

    Args:
        body: A timm model (ViT with ``dynamic_img_size`` or a hierarchical model such as Swin).
        num_classes: Object classes of the data set, without background.
        img_size: Longer image side fed to the backbone.
        fpn_channels: FPN width; the box head's MLP width follows it (``4 * fpn_channels``).
        proposals: RPN proposals kept per image after NMS (training; half of it at test time).
        rois_per_image: Proposals sampled per image for the box-head loss. The box head dominates
            the cost of small backbones; torchvision's COCO defaults are 2000 / 512.

    Returns:
        A ``FasterRCNN``: ``model(images, targets)`` gives losses in train mode, detections in eval mode.
    """
    backbone = TimmDetectionBackbone(body, fpn_channels=fpn_channels)
    cfg = timm.data.resolve_data_config(model=body)  # mean / std of the body's pretrained_cfg
    # Anchors at 4x the level stride (32 px at stride 8) fit objects of images a few hundred px wide.
    anchors = AnchorGenerator(sizes=tuple((4 * s,) for s in PYRAMID_STRIDES),
                              aspect_ratios=((0.5, 1.0, 2.0),) * len(PYRAMID_STRIDES))
    roi_pool = MultiScaleRoIAlign(featmap_names=[str(i) for i in range(len(PYRAMID_STRIDES))], output_size=7,
                                  sampling_ratio=2)
    hidden = 4 * fpn_channels
    return FasterRCNN(
        backbone,
        num_classes=None,  # given by box_predictor
        min_size=img_size,
        max_size=img_size,
        image_mean=list(cfg["mean"]),
        image_std=list(cfg["std"]),
        size_divisible=max(PYRAMID_STRIDES),
        rpn_anchor_generator=anchors,
        box_roi_pool=roi_pool,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, hidden),
        box_predictor=FastRCNNPredictor(hidden, num_classes + 1),  # + 1: background is class 0
        rpn_pre_nms_top_n_train=proposals,
        rpn_post_nms_top_n_train=proposals,
        rpn_pre_nms_top_n_test=max(1, proposals // 2),
        rpn_post_nms_top_n_test=max(1, proposals // 2),
        box_batch_size_per_image=rois_per_image,
        box_detections_per_img=100,
    )
