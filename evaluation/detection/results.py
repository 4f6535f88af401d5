"""``detection.json`` and ``detection_map.png``: runs aggregated per (model, label fraction).

``detection.json`` shape (read by the report's "Detection" section)::

    {"dataset": str, "classes": [str], "val_split": str,
     "rows": [{"model": "pretrained" | "random_init" | <timm baseline>, "label_fraction": 0.25,
               "n_images": 43, "seeds": [0, 1], "mAP": {"mean": .., "std": .., "values": [..]},
               "AP50": {...}, "AP75": {...}}],
     "command": str, "config": {...}}

AP values are fractions in ``[0, 1]`` (pycocotools' scale); ``std`` is the population std over seeds.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.detection.metrics import METRICS
from evaluation.detection.transfer import RunResult


def aggregate(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """One row per (model, label fraction), in first-seen model order and ascending fraction."""
    models = list(dict.fromkeys(r.model for r in results))
    rows = []
    for model in models:
        for fraction in sorted({r.label_fraction for r in results if r.model == model}):
            runs = [r for r in results if r.model == model and r.label_fraction == fraction]
            row: dict[str, Any] = {"model": model, "label_fraction": fraction, "n_images": runs[0].n_images,
                                   "seeds": [r.seed for r in runs]}
            for m in METRICS:
                values = np.array([getattr(r, m) for r in runs], dtype=np.float64)
                row[m] = {"mean": float(values.mean()), "std": float(values.std()), "values": values.tolist()}
            row["final_loss"] = float(np.mean([r.final_loss for r in runs]))
            row["seconds"] = float(np.sum([r.seconds for r in runs]))
            rows.append(row)
    return rows


def write_detection_json(path: str | Path, *, dataset: str, classes: Sequence[str], val_split: str,
                         rows: list[dict[str, Any]], command: str, config: dict[str, Any]) -> Path:
    """Writes ``detection.json`` and returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"dataset": dataset, "classes": list(classes), "val_split": val_split, "rows": rows,
           "command": command, "config": config}
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def plot_map(rows: list[dict[str, Any]], path: str | Path, *, title: str = "") -> Path:
    """mAP (mean +- std over seeds) against label fraction, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = sorted((r["label_fraction"], r["mAP"]["mean"], r["mAP"]["std"]) for r in rows if r["model"] == model)
        x, y, e = (np.array(v) for v in zip(*pts))
        ax.errorbar(x * 100, y * 100, yerr=e * 100, marker="o", capsize=3, label=model)
    ax.set_xlabel("labelled training images (%)")
    ax.set_ylabel("box mAP@[.5:.95] (%)")
    ax.set_title(title or "Detection transfer")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
