"""Robustness of frozen features to common corruptions: kNN and linear-probe accuracy on corrupted val images.

Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations"
(ICLR 2019): 15 corruptions x 5 severities applied to the val images after the model's resize + center crop
(as ImageNet-C corrupts 224 px center crops). The classifiers are fitted once on the *clean* training features with
all training labels - DINO's kNN (k = 20, T = 0.07) and the linear probe with lr / wd chosen by cross-validation on
the training labels, as in the linear stage - and scored on each corrupted copy of val. Reported per model: clean
accuracy, accuracy per (corruption, severity), and the mean corruption accuracy (mCA, the mean over every corruption
and severity run; ImageNet-C's mCE would need AlexNet's errors on the same data, which do not exist for a user's
dataset). Corrupted features are cached like clean ones (``OUT/cache``).

Shapes: n = train rows, m = val rows, d = feature dim.
"""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.figures.maps import plot_robustness
from evaluation.loading.backbones import ModelSource, load_model
from evaluation.loading.features import Features, cached_features, resolve_device
from evaluation.probes.corruptions import REWRITTEN, apply_corruption, check_names, imagecorruptions_module
from evaluation.probes.linear import DEFAULT_FOLDS, LinearProbe, few_threads, linear_probe, train_linear
from evaluation.settings import DEFAULTS
from evaluation.stages.classification import EvalData
from selfsup.data.eval_transform import normalize_uint8, uint8_eval_transform
from selfsup.data.labelled import LabelledImages
from selfsup.knn import knn_classify, topk_accuracy

ROBUSTNESS_FILE = "robustness.json"
ROBUSTNESS_PLOT = "robustness.png"
KNN_K, KNN_T = DEFAULTS.knn_k, DEFAULTS.knn_temperature
EVALUATIONS = {"knn_top1": f"kNN k={KNN_K}", "linear_top1": "linear probe"}


class CorruptTransform(torch.nn.Module):
    """PIL image -> the model's resize + center crop -> corruption -> normalised (3, S, S) float tensor.

    The corruption's randomness is seeded from the cropped image's bytes, so it does not depend on the order or
    the worker that processes the image."""

    def __init__(self, data_config: dict[str, Any], corruption: str, severity: int) -> None:
        super().__init__()
        self.data_config = data_config
        self.geometry = uint8_eval_transform(data_config)
        self.corruption = corruption
        self.severity = severity

    def forward(self, img: Any) -> torch.Tensor:
        u8 = self.geometry(img).permute(1, 2, 0).contiguous().numpy()  # (S, S, 3) uint8
        out = apply_corruption(u8, self.corruption, self.severity, seed=zlib.crc32(u8.tobytes()))
        x = torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1)[None]  # a writable copy
        return normalize_uint8(x, self.data_config)[0]

    def extra_repr(self) -> str:  # part of the feature-cache key
        return f"{self.geometry!r}, corruption={self.corruption}, severity={self.severity}, " \
               f"mean={tuple(self.data_config['mean'])}, std={tuple(self.data_config['std'])}"


def robustness_val(val: LabelledImages, max_val: int | None, seed: int = 0) -> LabelledImages:
    """The val images robustness runs on: all of them, or a seeded subset of ``max_val``."""
    if max_val is None or max_val >= len(val):
        return val
    keep = np.sort(np.random.default_rng(seed).permutation(len(val))[:max_val])
    return val.subset(keep, tag=f"robustness{max_val}@{seed}")


def run_robustness(data: EvalData, sources: list[ModelSource], *, out: str | Path, corruptions: list[str],
                   severities: list[int], max_val: int | None = None, img_size: int | None = None,
                   batch_size: int = DEFAULTS.batch_size, num_workers: int = DEFAULTS.num_workers,
                   device: str = DEFAULTS.device) -> dict[str, Any]:
    """Clean and corrupted kNN / linear-probe accuracy of every model -> ``OUT/robustness.json`` + heat map."""
    check_names(corruptions, severities)
    if any(c not in REWRITTEN for c in corruptions):
        imagecorruptions_module()  # fail before any work when the package is missing
    out = Path(out)
    t0 = time.perf_counter()
    val = robustness_val(data.val, max_val)
    kw = dict(cache_dir=out / "cache", batch_size=batch_size, num_workers=num_workers, device=resolve_device(device))
    rows: list[dict[str, Any]] = []
    probes: list[dict[str, Any]] = []
    for source in sources:
        loaded = load_model(source, img_size=img_size)
        tr = cached_features(loaded, data.train, **kw)
        clean = cached_features(loaded, val, **kw)
        fitted = linear_probe(tr.feats, tr.labels, clean.feats, clean.labels, num_classes=data.num_classes, seed=0)
        with few_threads(tr.feats.numel()):  # the same refit linear_probe scored (same data, hparams and seed)
            probe = train_linear(tr.feats, tr.labels, num_classes=data.num_classes, lr=fitted.lr, wd=fitted.wd, seed=0)
        probes.append({"model": source.name, "lr": fitted.lr, "wd": fitted.wd, "selection": fitted.selection})

        def score(feats: torch.Tensor, tr: Features = tr, probe: LinearProbe = probe,
                  clean: Features = clean) -> dict[str, float]:
            votes = knn_classify(tr.feats, tr.labels, feats, k=KNN_K, T=KNN_T, num_classes=data.num_classes)
            with torch.no_grad():
                logits = probe(feats)
            return {"knn_top1": topk_accuracy(votes, clean.labels, 1),
                    "linear_top1": topk_accuracy(logits, clean.labels, 1)}

        rows.append({"model": source.name, "corruption": "clean", "severity": 0, **score(clean.feats)})
        for c in corruptions:
            for s in severities:
                feats = cached_features(loaded, val, transform=CorruptTransform(loaded.data_config, c, s), **kw)
                rows.append({"model": source.name, "corruption": c, "severity": s, **score(feats.feats)})
    summary = summarise_robustness(rows)
    grids = {(EVALUATIONS[e], m): np.array([[next(r[e] for r in rows if r["model"] == m and r["corruption"] == c
                                                  and r["severity"] == s) for s in severities] for c in corruptions])
             for e in EVALUATIONS for m in dict.fromkeys(r["model"] for r in rows)}
    plot_robustness(grids, corruptions, severities, out / ROBUSTNESS_PLOT)
    payload = {"settings": {"corruptions": corruptions, "severities": severities, "num_val": len(val),
                            "max_val": max_val, "knn": {"k": KNN_K, "T": KNN_T},
                            "linear": f"all training labels; lr / L2 weight chosen by {DEFAULT_FOLDS}-fold "
                                      "cross-validation on them",
                            "probes": probes},
               "rows": rows, "summary": summary, "plot": ROBUSTNESS_PLOT,
               "seconds": round(time.perf_counter() - t0, 2)}
    out.mkdir(parents=True, exist_ok=True)
    (out / ROBUSTNESS_FILE).write_text(json.dumps(payload, indent=1))
    return payload


def summarise_robustness(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: clean accuracy and mean corruption accuracy (over every corrupted row) of each evaluation."""
    summary = []
    for m in dict.fromkeys(r["model"] for r in rows):
        clean = next(r for r in rows if r["model"] == m and r["corruption"] == "clean")
        corrupted = [r for r in rows if r["model"] == m and r["corruption"] != "clean"]
        row: dict[str, Any] = {"model": m}
        for e in EVALUATIONS:
            row[f"clean_{e}"] = clean[e]
            row[f"mca_{e}"] = float(np.mean([r[e] for r in corrupted])) if corrupted else None
        summary.append(row)
    return summary
