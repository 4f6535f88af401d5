"""The detection stage: backbones x label fractions x seeds -> COCO AP per run -> ``OUT/detection.json``.

For one ``(fraction, seed)`` every backbone trains on the same images
(:func:`evaluation.loading.fractions.nested_subset`), in the same order, with the same detector-head
initialisation seed, and is evaluated on the same evaluation split. The backbones are the report's
(:func:`evaluation.loading.backbones.model_sources`), loaded the same way. ``detection.json`` has the stage layout
(``stage``, ``config``, ``models``, per-seed ``runs``) plus ``rows`` aggregated as the report aggregates
every stage (:func:`evaluation.report.build.detection_rows`); AP values are fractions in ``[0, 1]``. The
format and the flags are in ``docs/detection.md``.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from evaluation.detection import METRICS
from evaluation.detection.backbone import PYRAMID_STRIDES, load_detection_body
from evaluation.detection.data import load_detection_dataset, read_image
from evaluation.detection.images import DetectionImages, collate
from evaluation.detection.metrics import coco_box_ap
from evaluation.detection.model import build_detector
from evaluation.detection.train import predict, train_detector
from evaluation.loading.backbones import ModelSource
from evaluation.loading.features import resolve_device
from evaluation.loading.fractions import nested_subset
from evaluation.results import detection_rows, write_stage
from evaluation.settings import DEFAULTS
from evaluation.stages.data_check import identical_check


def run_detection(sources: list[ModelSource], *, data: str, out: str | Path, fractions: list[float],
                  seeds: list[int], steps: int, img_size: int, batch_size: int, lr: float, weight_decay: float,
                  layer_decay: float, fpn_channels: int, proposals: int, rois_per_image: int,
                  images: str | None = None, val_data: str | None = None, device: str = DEFAULTS.device,
                  log_every: int = 0,
                  command: str = "") -> dict[str, Any]:
    """Fine-tune and evaluate one Faster R-CNN per (source, fraction, seed) on ``data`` (a VOC folder or COCO
    JSON, :func:`~evaluation.detection.data.load_detection_dataset`); writes ``OUT/detection.json`` and returns it
    (the report draws ``detection_map.png`` from it: :func:`evaluation.report.build.plot_detection`)."""
    t0, out, dev = time.perf_counter(), Path(out), resolve_device(device)
    dataset = load_detection_dataset(data, images=images, val_data=val_data)
    print(f"[detect] {dataset.name}: {len(dataset.train)} train / {len(dataset.val)} {dataset.val_split} images, "
          f"classes {list(dataset.classes)}; models {[s.name for s in sources]}; device {dev}", flush=True)
    check = identical_check([(str(s.path), partial(read_image, s.path)) for s in dataset.val],
                            [(str(s.path), partial(read_image, s.path)) for s in dataset.train])
    leaked = check["val_in_train"]
    if leaked["affected"]:
        print(f"[detect] data check: {leaked['affected']} of {leaked['num_val']} {dataset.val_split} images are also "
              f"training images (identical pixels): the mAP may be inflated by them (detection.json: data_check)",
              flush=True)
    val_loader = DataLoader(DetectionImages(dataset.val, img_size=img_size, train=False), batch_size=batch_size,
                            shuffle=False, collate_fn=collate)
    by_id = {s.image_id: s for s in dataset.train}
    runs: list[dict[str, Any]] = []
    infos: dict[str, dict[str, Any]] = {}
    for fraction in fractions:
        for seed in seeds:
            ids = nested_subset(list(by_id), fraction=fraction, seed=seed)
            train_set = DetectionImages([by_id[i] for i in ids], img_size=img_size, train=True, seed=seed)
            for source in sources:
                t_run = time.perf_counter()
                loaded = load_detection_body(source)
                infos.setdefault(source.name, loaded.info)
                set_seed(seed)  # same head init and batch order for every backbone
                detector = build_detector(loaded.model, num_classes=len(dataset.classes), img_size=img_size,
                                          fpn_channels=fpn_channels, proposals=proposals,
                                          rois_per_image=rois_per_image)
                train_set.rng = np.random.default_rng(seed)  # same flips too
                loader = DataLoader(train_set, batch_size=min(batch_size, len(train_set)), shuffle=True,
                                    collate_fn=collate, drop_last=True, generator=torch.Generator().manual_seed(seed))
                print(f"[detect] {source.name} fraction={fraction:g} seed={seed}: {len(ids)} images, {steps} steps",
                      flush=True)
                losses = train_detector(detector, loader, steps=steps, lr=lr, weight_decay=weight_decay,
                                        layer_decay=layer_decay, device=dev, log_every=log_every)
                ap = coco_box_ap(dataset.val, predict(detector, val_loader, device=dev), dataset.classes)
                tail = losses[-max(1, len(losses) // 10):]
                runs.append({"model": source.name, "label_fraction": fraction, "seed": seed, "n_images": len(ids),
                             **ap, "final_loss": sum(tail) / len(tail) if tail else float("nan"),
                             "seconds": round(time.perf_counter() - t_run, 2)})
                print(f"[detect] {source.name} fraction={fraction:g} seed={seed}: "
                      + " ".join(f"{m}={ap[m]:.4f}" for m in METRICS), flush=True)
    rows = detection_rows(runs)
    config = {"steps": steps, "img_size": img_size, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
              "layer_decay": layer_decay, "fpn_channels": fpn_channels, "proposals": proposals,
              "rois_per_image": rois_per_image, "device": str(dev), "detector": "fasterrcnn_fpn",
              "pyramid_strides": list(PYRAMID_STRIDES), "data": str(data), "images": images, "val_data": val_data}
    doc = write_stage(out, "detection", {
        "stage": "detection", "dataset": dataset.name, "classes": list(dataset.classes),
        "val_split": dataset.val_split, "skipped": dataset.skipped, "config": config, "models": list(infos.values()),
        "data_check": check, "command": command, "runs": runs, "rows": rows,
        "seconds": round(time.perf_counter() - t0, 2)})
    for r in rows:
        print(f"{r['model']:>14} fraction={r['label_fraction']:<5g} "
              + " ".join(f"{m}={r[m]['mean']:.4f}±{r[m]['std']:.4f}" for m in METRICS))
    print(f"[detect] wrote {out / 'detection.json'}")
    return doc
