"""The cost/accuracy table of exports and their ONNX fp32 / int8 files: what a deployed backbone costs and keeps.

``selfsup-eval deploy --weights EXPORT[,EXPORT...] --train TRAIN --val VAL --out DIR`` evaluates, side by side in
one run, every export (torch, ``model.safetensors``) and, when present, its ``model.onnx`` and ``model.int8.onnx``
(onnxruntime on the CPU): kNN and linear probe at the report's label fractions and seeds (the same stages, label
subsets and feature cache as ``selfsup-eval report``), and per variant

- parameters, and MACs per image at the eval size: ``torch.utils.flop_counter.FlopCounterMode`` on the torch
  model, MACs = FLOPs / 2 (it counts matmuls, convolutions and attention; elementwise ops are not counted); an
  int8 file has the same MACs, in int8;
- file size of the weights file;
- CPU latency at batch 1 (ms) and throughput at batch 32 (images/s), each the median of ``repeats`` timed runs
  after warm-up, with ``threads`` CPU threads (torch ``set_num_threads`` / onnxruntime ``intra_op_num_threads``).

This stage writes ``DIR/deploy.json``; the report renders it (``DIR/deploy.md``, ``DIR/accuracy_vs_latency.png``:
:mod:`evaluation.report.cost`). The command is :func:`evaluation.pipeline.run_deploy`.
"""

from __future__ import annotations

import datetime
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from evaluation.loading.backbones import ModelSource, load_model, read_config, weights_file
from evaluation.results import aggregate, load_stage, write_stage
from evaluation.settings import DEFAULTS
from selfsup.errors import ConfigError
from selfsup.onnx_export import INT8_FILE, ONNX_FILE, ort_features, ort_session

DEPLOY_FILE = "deploy.json"
THROUGHPUT_BATCH = 32
KNN_K = DEFAULTS.knn_k
VARIANTS = (("torch", ""), ("onnx fp32", ONNX_FILE), ("onnx int8", INT8_FILE))


def split_weights(weights: str) -> list[str]:
    """``A,B,...`` -> folders (empty items dropped)."""
    return [w for w in (x.strip() for x in weights.split(",")) if w]


def deploy_sources(weights: list[str]) -> list[ModelSource]:
    """Every export, and its ONNX fp32 / int8 files that exist, as evaluation sources named ``LABEL [format]``."""
    for w in weights:
        read_config(w)
    names = [Path(w).resolve().name for w in weights]
    if len(set(names)) < len(names):  # runs/a/export, runs/b/export: name them by parent/name
        names = [f"{Path(w).resolve().parent.name}/{Path(w).resolve().name}" for w in weights]
    if len(set(names)) < len(names):
        raise ConfigError(f"--weights {','.join(weights)}: two exports share the name; expected distinct folders")
    sources = []
    for w, name in zip(weights, names):
        for fmt, file in VARIANTS:
            if not file:
                sources.append(ModelSource(f"{name} [{fmt}]", "export", w))
            elif (Path(w) / file).is_file():
                sources.append(ModelSource(f"{name} [{fmt}]", "onnx", w, file=file))
    return sources


def _median_seconds(fn: Callable[[], Any], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_cost(source: ModelSource, *, img_size: int | None, threads: int, repeats: int) -> dict[str, Any]:
    """Parameters, MACs per image, file size, CPU latency (batch 1) and throughput (batch 32) of one source."""
    torch_model = load_model(ModelSource(source.name, "export", source.path), img_size=img_size)
    c, h, w = torch_model.data_config["input_size"]
    model = torch_model.model.cpu().eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, c, h, w))
    path = Path(source.path) / source.file if source.kind == "onnx" else weights_file(source.path)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if source.kind == "onnx":
            session = ort_session(path, threads=threads)
            run: Callable[[torch.Tensor], Any] = lambda x: ort_features(session, x)  # noqa: E731
        else:
            run = torch.inference_mode()(model)
        x1, x32 = torch.randn(1, c, h, w), torch.randn(THROUGHPUT_BATCH, c, h, w)
        latency = _median_seconds(lambda: run(x1), repeats)
        batch = _median_seconds(lambda: run(x32), max(3, repeats // 2))
    finally:
        torch.set_num_threads(before)
    return {"model": source.name, "format": source.name.rsplit("[", 1)[-1].rstrip("]"), "file": str(path),
            "file_bytes": path.stat().st_size, "params": sum(p.numel() for p in model.parameters()),
            "macs": counter.get_total_flops() / 2, "input_size": [c, h, w], "threads": threads,
            "repeats": repeats, "latency_b1_ms": 1000 * latency, "throughput_b32": THROUGHPUT_BATCH / batch}


def _accuracy(results: list[dict[str, Any]], model: str, stage: str, fraction: float) -> float | None:
    for r in results:
        if (r["model"], r["stage"], r["metric"], r["label_fraction"]) == (model, stage, "top1", fraction) \
                and (stage != "knn" or r["k"] == KNN_K):
            return r["mean"]
    return None


def deploy_rows(costs: list[dict[str, Any]], results: list[dict[str, Any]],
                fractions: list[float]) -> list[dict[str, Any]]:
    """One row per source: its cost and kNN k=20 / linear top-1 (mean over seeds) per label fraction."""
    rows = []
    for c in costs:
        acc = {f"{stage}@{f:g}": _accuracy(results, c["model"], stage, f) for stage in ("knn", "linear")
               for f in fractions}
        rows.append({**c, "accuracy": acc})
    return rows


def write_deploy(out: Path, sources: list[ModelSource], *, fractions: list[float], threads: int, repeats: int,
                 img_size: int | None = None, command: str = "") -> dict[str, Any]:
    """Measure every source, join with ``OUT/knn.json`` + ``OUT/linear.json``; writes and returns ``deploy.json``."""
    results = [row for stage in ("knn", "linear") if (doc := load_stage(out, stage)) is not None
               for row in aggregate(stage, doc["runs"])]
    costs = [measure_cost(s, img_size=img_size, threads=threads, repeats=repeats) for s in sources]
    doc = {"created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": command, "label_fractions": fractions, "threads": threads, "repeats": repeats,
           "throughput_batch": THROUGHPUT_BATCH, "knn_k": KNN_K,
           "macs_note": "MACs = FLOPs / 2 from torch.utils.flop_counter.FlopCounterMode (matmul, conv, attention)",
           "rows": deploy_rows(costs, results, fractions)}
    return write_stage(out, "deploy", doc)
