"""Detection transfer, an evaluation stage: a timm backbone (exported by selfsup) inside torchvision's Faster R-CNN.

Modules: :mod:`.data` (VOC / COCO readers, hold-out split, checked image decoding), :mod:`.images` (torch data
set), :mod:`.backbone` (ViTDet simple pyramid / hierarchical maps + FPN), :mod:`.model` (Faster R-CNN),
:mod:`.train` (layer-decay AdamW loop, inference), :mod:`.metrics` (pycocotools COCO AP), :mod:`.transfer` (the
stage: ``OUT/detection.json``). Models, label fractions, seeds, results and plots are the other stages'
(:mod:`evaluation.loading.backbones`, :mod:`evaluation.loading.fractions`, :mod:`evaluation.report.build`,
:mod:`evaluation.report.plots`); the command line is ``selfsup-eval detect`` or
``selfsup-eval report --detection-data`` (:mod:`evaluation.cli`).
"""

METRICS = ("mAP", "AP50", "AP75")  # COCO box AP@[.5:.95], AP@.5, AP@.75
PLOT_FILE = "detection_map.png"  # box mAP against label fraction, next to detection.json
