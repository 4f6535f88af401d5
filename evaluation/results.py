"""Stage results: ``OUT/<stage>.json`` written and read, per-seed runs aggregated to mean ± std.

What the stages (:mod:`evaluation.stages`) write and the report (:mod:`evaluation.report`) reads: both import this
module, neither imports the other.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.detection import METRICS as DETECTION_METRICS


def write_stage(out: Path, stage: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Write ``OUT/<stage>.json`` (every stage, detection included) and return ``payload``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stage}.json").write_text(json.dumps(payload, indent=1))
    return payload


def summarise(values: list[float]) -> tuple[float, float]:
    """(mean, sample std) of per-seed values; std is 0 for a single seed."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def load_stage(out: Path, stage: str) -> dict[str, Any] | None:
    """``OUT/<stage>.json`` as a dict, None when the stage did not run."""
    path = out / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def aggregate(stage: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-seed runs -> one result row per (model, k, metric, label fraction) with mean, std and the values."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        for metric in ("top1", "top5"):
            if r.get(metric) is not None:
                groups[(r["model"], r.get("k"), metric, r["label_fraction"])].append(r)
    rows = []
    for (model, k, metric, frac), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        mean, std = summarise([r[metric] for r in rs])
        rows.append({"model": model, "stage": stage, "metric": metric, "k": k, "label_fraction": frac,
                     "n_labels": rs[0]["n_labels"], "mean": mean, "std": std, "n_seeds": len(rs),
                     "values": [r[metric] for r in rs]})
    return rows


def read_detection(path: Path) -> list[dict[str, Any]] | None:
    """Rows of a ``detection.json`` (written by the detection stage or another tool) by :func:`detection_rows`;
    the file is a list of rows or a dict with ``rows`` / ``results`` / ``runs``. None when there is no file."""
    return detection_doc_rows(json.loads(path.read_text())) if path.exists() else None


def detection_doc_rows(doc: list | dict[str, Any]) -> list[dict[str, Any]]:
    """:func:`read_detection` of an already loaded ``detection.json``."""
    raw = doc if isinstance(doc, list) else next((doc[k] for k in ("rows", "results", "runs") if k in doc), [])
    return detection_rows([r for r in raw if isinstance(r, dict)])


def detection_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, label fraction): ``{model, label_fraction, [n_images, seeds,] <metric>: {mean, std}}``.

    A metric given as a number is one seed's value: the values of a model and fraction get mean, sample std
    (:func:`summarise`, as every stage) and ``values``. One given as a ``{"mean", "std"}`` dict
    or as ``<metric>_mean`` / ``<metric>_std`` keys is already aggregated and kept as it is.
    """
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        groups[(str(r.get("model", "?")), r.get("label_fraction"))].append(r)
    order = {m: i for i, m in enumerate(dict.fromkeys(m for m, _ in groups))}
    rows = []  # by model (first seen), then label fraction
    for (model, frac), rs in sorted(groups.items(), key=lambda g: (order[g[0][0]], g[0][1] or 0.0)):
        row: dict[str, Any] = {"model": model, "label_fraction": frac,
                               **{k: rs[0][k] for k in ("n_images", "seeds") if k in rs[0]}}
        if all("seed" in r for r in rs):
            row["seeds"] = [r["seed"] for r in rs]
        for m in DETECTION_METRICS:
            values = [float(r[m]) for r in rs if isinstance(r.get(m), (int, float))]
            if values:
                mean, std = summarise(values)
                row[m] = {"mean": mean, "std": std, "values": values}
            elif stat := next(filter(None, (_aggregated(r, m) for r in rs)), None):
                row[m] = stat
        rows.append(row)
    return rows


def _aggregated(row: dict[str, Any], metric: str) -> dict[str, float | None] | None:
    value = row[metric] if isinstance(row.get(metric), dict) else {k: row.get(f"{metric}_{k}") for k in ("mean", "std")}
    if not isinstance(value.get("mean"), (int, float)):
        return None
    std = value.get("std")
    return {"mean": float(value["mean"]), "std": float(std) if isinstance(std, (int, float)) else None}
