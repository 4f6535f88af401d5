"""The optional report sections of :mod:`evaluation.visual` (maps, retrieval, embedding) and
:mod:`evaluation.robustness`: running them for ``selfsup-eval report`` and rendering them as report blocks.

Each section writes its own JSON into the report folder (``visual.json``, ``robustness.json``), which
:func:`evaluation.report.build_report` copies into ``report.json`` and renders with :func:`section_blocks`.
A section switched off in a later call has its JSON removed, so the report never shows results from other
settings (its images stay, unreferenced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evaluation.corruptions import COMMON, SEVERITIES
from evaluation.models import ModelSource
from evaluation.robustness import EVALUATIONS, ROBUSTNESS_FILE, run_robustness
from evaluation.stages import EvalData
from evaluation.visual import VISUAL_FILE, run_visual

CAPTIONS = {
    "attention": "Last-block [CLS] attention per head and the patches holding the top 60% of each head's attention "
                 "(DINO, Caron et al. 2021), on the same val images for every model.",
    "pca": "First three principal components of the last stage's patch features as RGB, background (by the first "
           "component) in black (DINOv2, Oquab et al. 2023); one PCA per model over all shown images.",
    "retrieval": "Top training images by cosine similarity of the pooled features for a few val queries; green = "
                 "same label as the query, red = another label.",
    "projection": "Val embeddings (L2-normalised) projected to 2D, coloured by label.",
}


def run_sections(data: EvalData, sources: list[ModelSource], *, out: str | Path, visual: bool = True,
                 projection: str = "auto", robustness: bool = False, corruptions: list[str] | None = None,
                 severities: list[int] | None = None, robustness_max_val: int | None = None,
                 **kw: Any) -> None:
    """Run the switched-on sections (``kw``: img_size, batch_size, num_workers, device); drop stale JSONs."""
    out = Path(out)
    if visual:
        run_visual(data, sources, out=out, projection=projection, **kw)
    elif (out / VISUAL_FILE).exists():
        (out / VISUAL_FILE).unlink()
    if robustness:
        run_robustness(data, sources, out=out, corruptions=list(corruptions or COMMON),
                       severities=list(severities or SEVERITIES), max_val=robustness_max_val, **kw)
    elif (out / ROBUSTNESS_FILE).exists():
        (out / ROBUSTNESS_FILE).unlink()


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.1f}"


def section_blocks(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """Report blocks (``h2``, ``text``, ``table``, ``images``) of the visual and robustness sections present."""
    blocks: list[tuple[str, Any]] = []
    visual = report.get("visual")
    if visual:
        blocks.append(("h2", "What the features see"))
        if "attention" not in visual["files"]:
            blocks.append(("text", "No attention maps: they need a ViT with a [CLS] token; the PCA maps work for "
                                   "any backbone."))
        for key in ("attention", "pca", "retrieval"):
            if key in visual["files"]:
                blocks += [("text", CAPTIONS[key]), ("images", [visual["files"][key]])]
        rows = [[r["model"], r["k"], _pct(r["precision_at_1"]), _pct(r["precision_at_k"])] for r in visual["retrieval"]]
        k = visual["retrieval"][0]["k"] if visual["retrieval"] else "k"
        blocks.append(("table", (["model", "k", "precision@1 (%)", f"precision@{k} (%)"], rows)))
        if "projection" in visual["files"]:
            blocks += [("text", CAPTIONS["projection"] + f" Method: {visual['projection']}."),
                       ("images", [visual["files"]["projection"]])]
    rob = report.get("robustness")
    if rob:
        s = rob["settings"]
        blocks += [("h2", "Robustness to common corruptions"),
                   ("text", f"Top-1 (%) on {s['num_val']} val images under {len(s['corruptions'])} corruptions x "
                            f"severities {s['severities']} (Hendrycks & Dietterich 2019), classifiers fitted on clean "
                            f"training features (kNN k={s['knn']['k']}; linear probe on all training labels). mCA = "
                            "mean accuracy over every corruption and severity.")]
        header = ["model"] + [f"{name} {what}" for name in EVALUATIONS.values() for what in ("clean", "mCA")]
        rows = [[r["model"]] + [_pct(r[f"{p}_{e}"]) for e in EVALUATIONS for p in ("clean", "mca")]
                for r in rob["summary"]]
        blocks += [("table", (header, rows)), ("images", [rob["plot"]])]
    return blocks

