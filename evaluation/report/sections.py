"""Report blocks of the data check (:mod:`evaluation.stages.data_check`) and of the optional sections: maps,
retrieval and the 2D embedding (:mod:`evaluation.stages.maps`), robustness (:mod:`evaluation.stages.robustness`).

Each stage writes its own JSON into the report folder (``data_check.json``, ``visual.json``,
``robustness.json``), which :func:`evaluation.report.build.build_report` copies into ``report.json``; these
functions turn those dicts into blocks (:func:`evaluation.report.render.blocks_to_markdown`).
"""

from __future__ import annotations

from typing import Any

from evaluation.stages.data_check import CHECK_FILE, LISTED
from evaluation.stages.robustness import EVALUATIONS

CAPTIONS = {
    "attention": "Last-block [CLS] attention per head and the patches holding the top 60% of each head's attention "
                 "(DINO, Caron et al. 2021), on the same val images for every model.",
    "pca": "First three principal components of the last stage's patch features as RGB, background (by the first "
           "component) in black (DINOv2, Oquab et al. 2023); one PCA per model over all shown images.",
    "retrieval": "Top training images by cosine similarity of the pooled features for a few val queries; green = "
                 "same label as the query, red = another label.",
    "projection": "Val embeddings (L2-normalised) projected to 2D, coloured by label.",
}


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


def check_blocks(check: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Report blocks of the data check (``h2``, ``text``, ``list``)."""
    if check is None:
        return []
    t = check["val_in_train"]
    blocks: list[tuple[str, Any]] = [("h2", "Data check: val images in train")]
    how = (f"Checked by the SHA-256 of the decoded pixels (identical) and by the `{check['model']}` features "
           f"(near-duplicates: {check['rule']}).")
    if t["affected"]:
        blocks.append(("text", f"**{t['affected']} of {t['num_val']} val images ({100 * t['share']:.1f}%) are also in "
                               f"train** ({t['identical']} identical, {t['near']} near-duplicates): every val accuracy "
                               f"in this report may be inflated by up to {100 * t['share']:.1f} points. Remove them "
                               f"from train or val for a clean number. {how}"))
        blocks.append(("list", [f"`{p['val']}` = `{p['reference']}` ({p['kind']}, cosine {p['similarity']:.3f}, "
                                f"hash distance {p['hash_distance']})" for p in t["pairs"][:LISTED]]
                       + ([f"... {len(t['pairs']) - LISTED} more pairs in {CHECK_FILE}"]
                          if len(t["pairs"]) > LISTED else [])))
    else:
        blocks.append(("text", f"No val image is in train ({t['num_val']} val against {t['num_reference']} train "
                               f"images). {how}"))
    pre = check["val_in_pretraining"]
    if pre is not None:
        blocks.append(("h2", "Data check: val images in the pretraining images (information)"))
        blocks.append(("text", f"{pre['affected']} of {pre['num_val']} val images ({100 * pre['share']:.1f}%) are "
                               f"also among the {pre['num_reference']} pretraining images of `{pre['shards']}` "
                               f"({pre['identical']} identical, {pre['near']} near-duplicates). Pretraining without "
                               "labels on val images is legitimate, but the features have seen them."))
        if pre["pairs"]:
            blocks.append(("list", [f"`{p['val']}` = `{p['reference']}` ({p['kind']})" for p in pre["pairs"][:LISTED]]))
    return blocks
