"""COCO box AP (mAP@[.5:.95], AP50, AP75) with pycocotools' ``COCOeval``.

Ground truth comes from :class:`~evaluation.detection.data.DetectionSample` records, predictions are
``{"image_id", "boxes" (n, 4) xyxy pixels, "scores" (n,), "labels" (n,) 0-based class}``. Both are
turned into in-memory COCO objects; the numbers are pycocotools' own (``stats[0:3]``), the protocol
of Lin et al., "Microsoft COCO: Common Objects in Context", ECCV 2014.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from evaluation.detection import METRICS
from evaluation.detection.data import DetectionSample


def coco_ground_truth(samples: Sequence[DetectionSample], classes: Sequence[str]) -> COCO:
    """An in-memory pycocotools ``COCO`` of the samples (category id = class index + 1)."""
    images, annotations = [], []
    for s in samples:
        images.append({"id": s.image_id, "width": s.width, "height": s.height, "file_name": s.path.name})
        ignore = s.ignore or (False,) * len(s.labels)
        for box, label, ign in zip(s.boxes, s.labels, ignore):
            x1, y1, x2, y2 = box
            annotations.append({"id": len(annotations) + 1, "image_id": s.image_id, "category_id": label + 1,
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                                "iscrowd": int(ign)})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations,
                  "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_box_ap(samples: Sequence[DetectionSample], predictions: Sequence[dict[str, Any]],
                classes: Sequence[str]) -> dict[str, float]:
    """``{"mAP", "AP50", "AP75"}`` in ``[0, 1]`` for predictions against the samples' boxes.

    Images without predictions count as misses; no prediction at all gives 0.0.
    """
    gt = coco_ground_truth(samples, classes)
    dets = []
    for p in predictions:
        boxes = np.asarray(p["boxes"], dtype=np.float64).reshape(-1, 4)
        for (x1, y1, x2, y2), score, label in zip(boxes, np.asarray(p["scores"]), np.asarray(p["labels"])):
            dets.append({"image_id": int(p["image_id"]), "category_id": int(label) + 1,
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(score)})
    if not dets:
        return {m: 0.0 for m in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.imgIds = sorted(s.image_id for s in samples)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    # -1 means "no ground truth" in pycocotools; report it as 0 rather than a negative AP.
    return {m: max(0.0, float(v)) for m, v in zip(METRICS, ev.stats[:3])}
