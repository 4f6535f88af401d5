"""The detection-transfer experiment: backbones x label fractions x seeds -> COCO AP per run.

For one ``(fraction, seed)`` every backbone trains on the same images
(:func:`~evaluation.detection.sampling.sample_label_fraction`), in the same order, with the same
detector-head initialisation seed, and is evaluated on the same evaluation split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from evaluation.detection.data import DetectionDataset
from evaluation.detection.images import DetectionImages, collate
from evaluation.detection.metrics import coco_box_ap
from evaluation.detection.model import build_detector
from evaluation.detection.sampling import sample_label_fraction
from evaluation.detection.train import predict, train_detector
from evaluation.detection.weights import BackboneSource


@dataclass(frozen=True)
class RunResult:
    """One fine-tuning run."""

    model: str
    label_fraction: float
    seed: int
    n_images: int
    mAP: float
    AP50: float
    AP75: float
    final_loss: float
    seconds: float


def run_transfer(dataset: DetectionDataset, sources: Sequence[BackboneSource], *, fractions: Sequence[float],
                 seeds: Sequence[int], steps: int, img_size: int, batch_size: int, lr: float,
                 weight_decay: float = 0.05, layer_decay: float = 0.75, fpn_channels: int = 256,
                 proposals: int = 1000, rois_per_image: int = 256,
                 device: str = "cpu", log: Callable[[str], None] = print, log_every: int = 0) -> list[RunResult]:
    """Fine-tunes and evaluates one detector per (source, fraction, seed).

    Returns:
        One :class:`RunResult` per run, in loop order (fraction, seed, source).
    """
    val_loader = DataLoader(DetectionImages(dataset.val, img_size=img_size, train=False), batch_size=batch_size,
                            shuffle=False, collate_fn=collate)
    by_id = {s.image_id: s for s in dataset.train}
    results: list[RunResult] = []
    for fraction in fractions:
        for seed in seeds:
            ids = sample_label_fraction(list(by_id), fraction=fraction, seed=seed)
            train_set = DetectionImages([by_id[i] for i in ids], img_size=img_size, train=True, seed=seed)
            for source in sources:
                t0 = time.perf_counter()
                body = source.build(seed=seed)
                torch.manual_seed(seed)  # same head init and batch order for every backbone
                detector = build_detector(body, num_classes=len(dataset.classes), img_size=img_size,
                                          fpn_channels=fpn_channels, proposals=proposals,
                                          rois_per_image=rois_per_image)
                train_set.rng = np.random.default_rng(seed)  # same flips too
                loader = DataLoader(train_set, batch_size=min(batch_size, len(train_set)), shuffle=True,
                                    collate_fn=collate, drop_last=True,
                                    generator=torch.Generator().manual_seed(seed))
                log(f"[detect] {source.label} fraction={fraction:g} seed={seed}: {len(ids)} images, {steps} steps")
                losses = train_detector(detector, loader, steps=steps, lr=lr, weight_decay=weight_decay,
                                        layer_decay=layer_decay, device=device, log_every=log_every)
                ap = coco_box_ap(dataset.val, predict(detector, val_loader, device=device), dataset.classes)
                tail = losses[-max(1, len(losses) // 10):]
                r = RunResult(source.label, fraction, seed, len(ids), ap["mAP"], ap["AP50"], ap["AP75"],
                              sum(tail) / len(tail) if tail else float("nan"), time.perf_counter() - t0)
                log(f"[detect] {source.label} fraction={fraction:g} seed={seed}: mAP={r.mAP:.4f} AP50={r.AP50:.4f} "
                    f"AP75={r.AP75:.4f} loss={r.final_loss:.3f} ({r.seconds:.0f}s)")
                results.append(r)
    return results
