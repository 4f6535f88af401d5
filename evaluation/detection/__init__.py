"""Detection transfer: a timm backbone (exported by selfsup) inside torchvision's Faster R-CNN.

Modules: :mod:`.data` (VOC / COCO readers), :mod:`.sampling` (label fractions), :mod:`.images`
(torch data set), :mod:`.backbone` (ViTDet simple pyramid / hierarchical maps + FPN),
:mod:`.model` (Faster R-CNN), :mod:`.train` (layer-decay AdamW loop, inference), :mod:`.metrics`
(pycocotools COCO AP), :mod:`.transfer` (the experiment), :mod:`.results` (JSON + plot),
:mod:`.cli` (``selfsup-eval detect``).
"""
