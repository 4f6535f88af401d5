"""The label-efficiency report: stage JSONs -> ``report.json`` (fixed schema), ``report.md``, ``report.html``, plots.

:func:`build_report` aggregates ``OUT/{knn,linear,finetune,detection,deploy,visual,robustness,data_check}.json``
(a ``detection.json`` may also come from ``selfsup-eval detect`` or another tool) into mean ± std over seeds,
draws the report's plots and renders it (:mod:`evaluation.report.render`). It reads results only: the stages are
run by :mod:`evaluation.pipeline`. The schema is ``evaluation/report/report_schema.json``.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

from evaluation.detection import METRICS as DETECTION_METRICS
from evaluation.detection import PLOT_FILE as DETECTION_PLOT
from evaluation.report.cost import deploy_notes, write_deploy_report
from evaluation.report.plots import plot_accuracy_vs_fraction, plot_pretraining_curves
from evaluation.report.render import blocks_to_markdown, html_page
from evaluation.report.sections import check_blocks, section_blocks
from evaluation.report.tables import STAGE_NAMES, num, result_table
from evaluation.results import aggregate, detection_doc_rows, load_stage
from evaluation.settings import DEFAULTS
from selfsup.model_card import METRICS_FILE, read_metrics

SCHEMA_PATH = Path(__file__).with_name("report_schema.json")
SCHEMA_VERSION = 1


def pretraining_log(models: list[dict[str, Any]]) -> tuple[str | None, Path | None]:
    """The run and the ``metrics.jsonl`` of the first selfsup export among ``models``: the copy ``selfsup export``
    puts into the export folder, else (older exports) the file in the run folder their ``selfsup.run_dir`` named."""
    for m in models:
        sb = m.get("selfsup") or {}
        if m["kind"] != "export" or not sb:
            continue
        run = sb.get("run") or sb.get("run_dir")
        candidates = [Path(d) / METRICS_FILE for d in (m.get("weights"), sb.get("run_dir")) if d]
        return run, next((c for c in candidates if c.is_file()), None)
    return None, None


def build_report(out: str | Path, *, command: str = "") -> dict[str, Any]:
    """Aggregate the stage JSONs in ``out`` into ``report.json``, ``report.md``, ``report.html`` and PNG plots."""
    out = Path(out)
    stages = {s: load_stage(out, s) for s in ("knn", "linear", "finetune")}
    present = {s: d for s, d in stages.items() if d is not None}
    if not present:
        raise FileNotFoundError(f"{out}: no knn.json / linear.json / finetune.json to report")
    first = next(iter(present.values()))
    results = [row for s, d in present.items() for row in aggregate(s, d["runs"])]
    fractions = sorted({r["label_fraction"] for r in results})
    seeds = sorted({r["seed"] for d in present.values() for r in d["runs"]})
    models: dict[str, dict[str, Any]] = {}
    for d in present.values():
        for m in d["models"]:
            models.setdefault(m["name"], m)
    hparams = [{k: r[k] for k in ("model", "label_fraction", "seed", "lr", "wd", "holdout_top1", "selection")}
               for r in (stages["linear"] or {"runs": []})["runs"]]
    detection_doc = load_stage(out, "detection")
    detection = detection_doc_rows(detection_doc) if detection_doc is not None else None
    deploy_doc = load_stage(out, "deploy")
    deployment = write_deploy_report(out, deploy_doc) if deploy_doc else None

    panels = []
    if stages["knn"]:
        ks = stages["knn"]["settings"]["ks"]
        k_plot = DEFAULTS.knn_k if DEFAULTS.knn_k in ks else ks[0]
        panels.append((f"kNN k={k_plot}", [r for r in results if r["stage"] == "knn" and r["k"] == k_plot
                                           and r["metric"] == "top1"]))
    for s in ("linear", "finetune"):
        if stages[s]:
            panels.append((STAGE_NAMES[s], [r for r in results if r["stage"] == s and r["metric"] == "top1"]))
    plots = [plot_accuracy_vs_fraction(panels, out / "accuracy_vs_fraction.png").name]
    if detection and plot_detection(out, detection, detection_title(detection_doc)) is not None:
        plots.append(DETECTION_PLOT)
    run_dir, metrics_file = pretraining_log(list(models.values()))
    n_records = 0
    if metrics_file is not None and metrics_file.exists():
        records = read_metrics(metrics_file)
        n_records = len(records)
        curve = plot_pretraining_curves(records, out / "pretraining_curves.png")
        if curve is not None:
            plots.append(curve.name)

    report = {
        "schema_version": SCHEMA_VERSION,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "data": {k: first["data"][k] for k in ("train", "val", "num_train", "num_val", "num_classes", "classes",
                                                 "max_train", "max_val", "label_subsets")},
        "settings": {"label_fractions": fractions, "seeds": seeds,
                     "knn": stages["knn"]["settings"] if stages["knn"] else None,
                     "linear": stages["linear"]["settings"] if stages["linear"] else None,
                     "finetune": stages["finetune"]["settings"] if stages["finetune"] else None},
        "models": list(models.values()),
        "results": results,
        "linear_hparams": hparams,
        "detection": detection,
        "pretraining": {"run_dir": run_dir, "metrics_file": str(metrics_file) if n_records else None,
                        "num_records": n_records},
        "plots": plots + ([deployment["plot"]] if deployment and (out / deployment["plot"]).is_file() else []),
        "deployment": deployment,
        "visual": load_stage(out, "visual"),
        "robustness": load_stage(out, "robustness"),
        "data_check": load_stage(out, "data_check"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    md = blocks_to_markdown(report_blocks(report))
    (out / "report.md").write_text(md)
    images = list(report["plots"]) + _section_images(report)
    (out / "report.html").write_text(html_page(md, out, [p for p in images if (out / p).is_file()]))
    return report


def _section_images(report: dict[str, Any]) -> list[str]:
    visual, rob = report.get("visual") or {}, report.get("robustness") or {}
    return list((visual.get("files") or {}).values()) + ([rob["plot"]] if rob.get("plot") else [])


def detection_title(doc: list | dict[str, Any]) -> str:
    """The detection plot's title, from its ``detection.json`` (a list of rows from another tool has no data set)."""
    return f"Faster R-CNN on {doc.get('dataset', '?')}" if isinstance(doc, dict) else "detection"


def plot_detection(out: Path, rows: list[dict[str, Any]], title: str) -> Path | None:
    """``OUT/detection_map.png``: box mAP against label fraction per model, from the detection rows (None when
    the rows carry no mAP per label fraction)."""
    panel = [{"model": r["model"], "label_fraction": r["label_fraction"], **r["mAP"]} for r in rows
             if isinstance(r.get("mAP"), dict) and r.get("label_fraction") is not None]
    if not panel:
        return None
    return plot_accuracy_vs_fraction([(title, panel)], out / DETECTION_PLOT, ylabel="box mAP@[.5:.95] (%)")


def random_label(model: dict[str, Any]) -> str:
    """The weights cell of a random-init model."""
    return f"none (random init, seed {model.get('init_seed')})"


def report_blocks(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """The report's content as ``(kind, payload)`` blocks (:func:`evaluation.report.render.blocks_to_markdown`)."""
    d = report["data"]
    blocks: list[tuple[str, Any]] = [("h1", "Label-efficiency report")]
    what = [f"weights: `{m['weights'] or random_label(m)}` as **{m['name']}**, `{m['architecture']}` "
            f"({m['num_features']}-d features, input {m['input_size'][1]}x{m['input_size'][2]})"
            + (f", {m['selfsup'].get('method', '?')} step {m['selfsup'].get('step', '?')}" if m.get("selfsup") else "")
            for m in report["models"]]
    what += [f"train: `{d['train']}` ({d['num_train']} images" + (f", max {d['max_train']}" if d["max_train"] else "")
             + f"), val: `{d['val']}` ({d['num_val']} images" + (f", max {d['max_val']}" if d["max_val"] else "")
             + f"), {d['num_classes']} classes",
             f"label fractions {report['settings']['label_fractions']}, seeds {report['settings']['seeds']}"]
    if report["command"]:
        what.append(f"command: `{report['command']}`")
    blocks += [("h2", "What was run"), ("list", what)] + check_blocks(report.get("data_check"))
    blocks += [("h2", "Results (val accuracy %, mean ± std over seeds)"),
               ("table", result_table(report["results"], report["settings"]["label_fractions"]))]
    if report["linear_hparams"]:
        rows = [[h["model"], f"{100 * h['label_fraction']:g}%", h["seed"], f"{h['lr']:g}", f"{h['wd']:g}",
                 "" if h["holdout_top1"] is None else f"{100 * h['holdout_top1']:.1f}", h["selection"]]
                for h in report["linear_hparams"]]
        blocks += [("h2", "Linear probe: chosen hyper-parameters"),
                   ("table", (["model", "fraction", "seed", "lr", "wd", "cross-validated top-1", "chosen on"], rows))]
    if report["settings"]["finetune"]:
        blocks += [("h2", "Fine-tune settings"),
                   ("list", [f"{k}: {v}" for k, v in report["settings"]["finetune"].items()])]
    if report["detection"] is not None:
        metrics = [m for m in DETECTION_METRICS if any(m in r for r in report["detection"])]
        rows = [[r["model"], "" if r["label_fraction"] is None else f"{100 * r['label_fraction']:g}%"]
                + [num(r[m]["mean"], r[m]["std"]) if m in r else "" for m in metrics] for r in report["detection"]]
        blocks += [("h2", "Detection"), ("table", (["model", "label fraction"] + metrics, rows))]
    if report.get("deployment"):
        dep = report["deployment"]
        blocks += [("h2", "Deployment: cost and accuracy"), ("list", deploy_notes(dep)),
                   ("table", (dep["table"]["header"], dep["table"]["rows"]))]
    blocks += section_blocks(report)  # maps, retrieval, embedding, robustness (when they were run)
    blocks += [("h2", "Plots"), ("plots", report["plots"]),
               ("h2", "How to read this report"), ("text", reading(report))]
    return blocks


def reading(report: dict[str, Any]) -> str:
    """The guide at the end of the report; the linear probe's fold count comes from the report's own settings."""
    folds = (report["settings"].get("linear") or {}).get("folds")
    return READING.replace("{selection}", f"{folds}-fold cross-validation" if folds else "cross-validation")


READING = """\
- **kNN**: DINO's weighted k-nearest-neighbour vote on the frozen, L2-normalised features (T = 0.07): no training
  at all, so it measures how well the feature space already groups the classes.
- **linear probe**: one linear layer on the frozen features (L2-regularised logistic regression); lr and L2 weight
  are picked by {selection} on the labelled training subset (never on val) and listed below.
- **fine-tune**: the whole network plus a linear head, AdamW with layer-wise lr decay, a short fixed schedule.
- **label fraction**: the share of each class's training labels used (stratified, at least one per class); the
  subsets are saved in `label_subsets.json` and are the same for every model.
- **mean ± std**: accuracy in % on the val set, averaged over seeds (a different label subset per seed);
  std is the sample standard deviation over seeds.
- **random_init**: the same architecture with random weights, the floor the pretraining has to beat; a
  `timm:` row is a supervised or other local timm checkpoint."""
