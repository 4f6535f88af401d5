"""The cost/accuracy table of ``selfsup-eval deploy`` (``deploy.json`` of :mod:`evaluation.stages.cost`) as
``deploy.md`` and ``accuracy_vs_latency.png``, and as the report's Deployment section."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.report.plots import plot_accuracy_vs_latency
from evaluation.report.tables import md_table
from evaluation.settings import DEFAULTS
from evaluation.stages.cost import KNN_K, THROUGHPUT_BATCH  # the defaults of a deploy.json without them

PLOT_FILE = "accuracy_vs_latency.png"


def deploy_table(rows: list[dict[str, Any]], fractions: list[float],
                 knn_k: int = DEFAULTS.knn_k) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the markdown table."""
    header = ["model", "params (M)", "MACs/img (M)", "file (MiB)", "latency b=1 (ms)", "throughput b=32 (img/s)"]
    header += [f"kNN k={knn_k} {100 * f:g}%" for f in fractions] + [f"linear {100 * f:g}%" for f in fractions]
    cells = []
    for r in rows:
        acc = [r["accuracy"][f"{s}@{f:g}"] for s in ("knn", "linear") for f in fractions]
        cells.append([r["model"], f"{r['params'] / 1e6:.2f}", f"{r['macs'] / 1e6:.1f}",
                      f"{r['file_bytes'] / 2**20:.2f}", f"{r['latency_b1_ms']:.2f}", f"{r['throughput_b32']:.0f}"]
                     + ["" if a is None else f"{100 * a:.1f}" for a in acc])
    return header, cells


def deploy_notes(doc: dict[str, Any]) -> list[str]:
    """How the table was measured (markdown list items)."""
    notes = [f"CPU, {doc['threads']} thread(s); latency = median of {doc['repeats']} runs at batch 1 after warm-up, "
             f"throughput = {doc.get('throughput_batch', THROUGHPUT_BATCH)} / median time of a batch of "
             f"{doc.get('throughput_batch', THROUGHPUT_BATCH)}",
             doc["macs_note"] + "; an int8 file does the same MACs in int8",
             f"accuracy: val top-1 %, mean over seeds, kNN k={doc.get('knn_k', KNN_K)} and linear probe at label "
             f"fractions {doc['label_fractions']}; `[torch]` is model.safetensors run by torch, "
             "`[onnx ...]` by onnxruntime"]
    if doc["command"]:
        notes.append(f"command: `{doc['command']}`")
    return notes


def write_deploy_report(out: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """``deploy.md`` and the latency plot from ``deploy.json``; returns the report's ``deployment`` entry (the
    document with its ``table`` and ``plot``)."""
    fractions, rows, k = doc["label_fractions"], doc["rows"], doc.get("knn_k", KNN_K)
    header, cells = deploy_table(rows, fractions, k)
    top = max(fractions)
    points = {f"kNN k={k}, {100 * top:g}% labels": [(r["model"], r["latency_b1_ms"], r["accuracy"][f"knn@{top:g}"])
                                                   for r in rows],
              f"linear probe, {100 * top:g}% labels": [(r["model"], r["latency_b1_ms"],
                                                        r["accuracy"][f"linear@{top:g}"]) for r in rows]}
    plot_accuracy_vs_latency(points, out / PLOT_FILE, xlabel=f"CPU latency, batch 1, {doc['threads']} thread(s) (ms)")
    (out / "deploy.md").write_text("\n".join(
        ["# Deployment: cost and accuracy\n", "\n".join(f"- {n}" for n in deploy_notes(doc)), "",
         md_table(header, cells), "", f"![{PLOT_FILE}]({PLOT_FILE})", ""]))
    return {**doc, "table": {"header": header, "rows": cells}, "plot": PLOT_FILE}
