"""The label-efficiency report: stage JSONs -> ``report.json`` (fixed schema), ``report.md``, ``report.html``, plots.

:func:`run_report` runs the stages (kNN, linear probe, optionally fine-tune) for the export and its baselines,
and with ``detection`` settings the detection stage (:mod:`evaluation.detection`), then :func:`build_report`
aggregates ``OUT/{knn,linear,finetune,detection}.json`` (a ``detection.json`` may also come from
``selfsup-eval detect`` or another tool) into mean ± std over seeds and renders it. The schema is
``evaluation/report_schema.json``.
"""

from __future__ import annotations

import base64
import datetime
import html
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from evaluation.detection import METRICS as DETECTION_METRICS, PLOT_FILE as DETECTION_PLOT
from evaluation.models import model_sources
from evaluation.plots import plot_accuracy_vs_fraction, plot_pretraining_curves
from evaluation.stages import prepare_data, run_finetune, run_knn, run_linear, summarise
from selfsup.model_card import METRICS_FILE, read_metrics

SCHEMA_PATH = Path(__file__).with_name("report_schema.json")
SCHEMA_VERSION = 1
STAGE_NAMES = {"knn": "kNN", "linear": "linear probe", "finetune": "fine-tune"}


def run_report(*, weights: str, train: str, val: str, out: str | Path, label_fractions: list[float],
               seeds: int = 3, finetune: bool = False, max_train: int | None = None, max_val: int | None = None,
               batch_size: int = 128, num_workers: int = 0, device: str = "auto", img_size: int | None = None,
               baseline_timm: str | None = None, finetune_steps: int = 100, finetune_lr: float = 5e-4,
               command: str = "", allow_pipe: bool = False, visual: bool = True, projection: str = "auto",
               robustness: bool = False, corruptions: list[str] | None = None, severities: list[int] | None = None,
               robustness_max_val: int | None = None, detection: dict[str, Any] | None = None,
               pretrain_shards: str | None = None) -> dict[str, Any]:
    """Run every stage for the export and its baselines and write the report into ``out``; returns report.json.

    ``visual`` adds maps, retrieval and the 2D embedding (``projection``); ``robustness`` the corruption section
    (:mod:`evaluation.visual_report`); ``detection`` (the detection settings, ``data=`` included: keyword arguments
    of :func:`evaluation.detection.transfer.run_detection`) the detection stage, on the same models, label
    fractions and seeds. Every stage checks val against train (and ``pretrain_shards``) first
    (:mod:`evaluation.data_check`)."""
    out = Path(out)
    data = prepare_data(train=train, val=val, out=out, label_fractions=label_fractions, seeds=seeds,
                        max_train=max_train, max_val=max_val, allow_pipe=allow_pipe, pretrain_shards=pretrain_shards)
    from evaluation.deploy import DEPLOY_FILE, deploy_sources, split_weights, write_deploy

    several = len(split_weights(weights)) > 1  # several exports: compare them and their ONNX files, no random init
    baseline = [baseline_timm.removeprefix("local-dir:")] if baseline_timm else []
    sources = (deploy_sources(split_weights(weights) + baseline) if several
               else model_sources(weights=weights, baseline_timm=baseline_timm))
    kw = dict(out=out, img_size=img_size, num_workers=num_workers, device=device)
    run_knn(data, sources, batch_size=batch_size, **kw)
    run_linear(data, sources, batch_size=batch_size, **kw)
    stale = out / "finetune.json"
    if finetune:
        run_finetune(data, sources, batch_size=min(batch_size, 64), steps=finetune_steps, lr=finetune_lr, **kw)
    elif stale.exists():
        stale.unlink()  # a fine-tune from an earlier call would not match these settings
    if detection:  # a detection.json from `selfsup-eval detect` is kept otherwise, and shown
        from evaluation.detection.transfer import run_detection

        run_detection([s for s in sources if s.kind != "onnx"], out=out, fractions=label_fractions,
                      seeds=data.seeds, device=device, command=command, **detection)
    if several:  # the cost/accuracy table of `selfsup-eval deploy`, shown in the report
        write_deploy(out, sources, fractions=label_fractions, img_size=img_size, threads=torch.get_num_threads(),
                     repeats=5, command=command)
    elif (out / DEPLOY_FILE).exists():
        (out / DEPLOY_FILE).unlink()  # from an earlier several-weights report: not these models
    from evaluation.visual_report import run_sections

    run_sections(data, sources, out=out, visual=visual, projection=projection, robustness=robustness,
                 corruptions=corruptions, severities=severities, robustness_max_val=robustness_max_val,
                 batch_size=batch_size, img_size=img_size, num_workers=num_workers, device=device)
    return build_report(out, command=command)


def _load(out: Path, stage: str) -> dict[str, Any] | None:
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
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    raw = doc if isinstance(doc, list) else next((doc[k] for k in ("rows", "results", "runs") if k in doc), [])
    return detection_rows([r for r in raw if isinstance(r, dict)])


def detection_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, label fraction): ``{model, label_fraction, [n_images, seeds,] <metric>: {mean, std}}``.

    A metric given as a number is one seed's value: the values of a model and fraction get mean, sample std
    (:func:`evaluation.stages.summarise`, as every stage) and ``values``. One given as a ``{"mean", "std"}`` dict
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


def _pct(mean: float, std: float | None) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if std is not None else f"{100 * mean:.1f}"


def _num(mean: float, std: float | None) -> str:
    return f"{mean:.4g} ± {std:.2g}" if std is not None else f"{mean:.4g}"


def _evaluation_name(r: dict[str, Any]) -> str:
    metric = "top-1" if r["metric"] == "top1" else "top-5"
    k = f" k={r['k']}" if r.get("k") is not None else ""
    return f"{STAGE_NAMES[r['stage']]}{k} {metric}"


def result_table(results: list[dict[str, Any]], fractions: list[float]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (evaluation, model, one mean ± std cell per fraction) of the main table."""
    n_labels = {r["label_fraction"]: r["n_labels"] for r in results}
    header = ["evaluation", "model"] + [f"{100 * f:g}% ({n_labels.get(f, '?')} labels)" for f in fractions]
    cells: dict[tuple[str, str], dict[float, str]] = defaultdict(dict)
    for r in results:
        cells[(_evaluation_name(r), r["model"])][r["label_fraction"]] = _pct(r["mean"], r["std"])
    rows = [[ev, model] + [c.get(f, "") for f in fractions] for (ev, model), c in cells.items()]
    return header, rows


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


READING = """\
- **kNN**: DINO's weighted k-nearest-neighbour vote on the frozen, L2-normalised features (T = 0.07): no training
  at all, so it measures how well the feature space already groups the classes.
- **linear probe**: one linear layer on the frozen features; lr and weight decay are picked on a held-out part of
  the labelled training subset (never on val) and listed below.
- **fine-tune**: the whole network plus a linear head, AdamW with layer-wise lr decay, a short fixed schedule.
- **label fraction**: the share of each class's training labels used (stratified, at least one per class); the
  subsets are saved in `label_subsets.json` and are the same for every model.
- **mean ± std**: accuracy in % on the val set, averaged over seeds (a different label subset per seed);
  std is the sample standard deviation over seeds.
- **random_init**: the same architecture with random weights, the floor the pretraining has to beat; a
  `timm:` row is a supervised or other local timm checkpoint."""


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
    stages = {s: _load(out, s) for s in ("knn", "linear", "finetune")}
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
    detection = read_detection(out / "detection.json")
    deployment = _load(out, "deploy")

    panels = []
    if stages["knn"]:
        k_plot = 20 if 20 in stages["knn"]["settings"]["ks"] else stages["knn"]["settings"]["ks"][0]
        panels.append((f"kNN k={k_plot}", [r for r in results if r["stage"] == "knn" and r["k"] == k_plot
                                           and r["metric"] == "top1"]))
    for s in ("linear", "finetune"):
        if stages[s]:
            panels.append((STAGE_NAMES[s], [r for r in results if r["stage"] == s and r["metric"] == "top1"]))
    plots = [plot_accuracy_vs_fraction(panels, out / "accuracy_vs_fraction.png").name]
    if detection and (out / DETECTION_PLOT).is_file():
        plots.append(DETECTION_PLOT)  # written by the detection stage
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
        "visual": _load(out, "visual"),
        "robustness": _load(out, "robustness"),
        "data_check": _load(out, "data_check"),
    }
    (out / "report.json").write_text(json.dumps(report, indent=1))
    md, body = render(report)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_html_page(body, out, plots))
    return report


def _random_label(model: dict[str, Any]) -> str:
    return f"none (random init, seed {model.get('init_seed')})"


def render(report: dict[str, Any]) -> tuple[str, list[tuple[str, Any]]]:
    """``report.md`` text, and the same content as ``(kind, payload)`` blocks for the HTML page."""
    d = report["data"]
    blocks: list[tuple[str, Any]] = [("h1", "Label-efficiency report")]
    what = [f"weights: `{m['weights'] or _random_label(m)}` as **{m['name']}**, `{m['architecture']}` "
            f"({m['num_features']}-d features, input {m['input_size'][1]}x{m['input_size'][2]})"
            + (f", {m['selfsup'].get('method', '?')} step {m['selfsup'].get('step', '?')}" if m.get("selfsup") else "")
            for m in report["models"]]
    what += [f"train: `{d['train']}` ({d['num_train']} images" + (f", max {d['max_train']}" if d["max_train"] else "")
             + f"), val: `{d['val']}` ({d['num_val']} images" + (f", max {d['max_val']}" if d["max_val"] else "")
             + f"), {d['num_classes']} classes",
             f"label fractions {report['settings']['label_fractions']}, seeds {report['settings']['seeds']}"]
    if report["command"]:
        what.append(f"command: `{report['command']}`")
    from evaluation.data_check import check_blocks

    blocks += [("h2", "What was run"), ("list", what)] + check_blocks(report.get("data_check"))
    blocks += [("h2", "Results (val accuracy %, mean ± std over seeds)"),
               ("table", result_table(report["results"], report["settings"]["label_fractions"]))]
    if report["linear_hparams"]:
        rows = [[h["model"], f"{100 * h['label_fraction']:g}%", h["seed"], f"{h['lr']:g}", f"{h['wd']:g}",
                 "" if h["holdout_top1"] is None else f"{100 * h['holdout_top1']:.1f}", h["selection"]]
                for h in report["linear_hparams"]]
        blocks += [("h2", "Linear probe: chosen hyper-parameters"),
                   ("table", (["model", "fraction", "seed", "lr", "wd", "held-out top-1", "chosen on"], rows))]
    if report["settings"]["finetune"]:
        blocks += [("h2", "Fine-tune settings"),
                   ("list", [f"{k}: {v}" for k, v in report["settings"]["finetune"].items()])]
    if report["detection"] is not None:
        metrics = [m for m in DETECTION_METRICS if any(m in r for r in report["detection"])]
        rows = [[r["model"], "" if r["label_fraction"] is None else f"{100 * r['label_fraction']:g}%"]
                + [_num(r[m]["mean"], r[m]["std"]) if m in r else "" for m in metrics] for r in report["detection"]]
        blocks += [("h2", "Detection"), ("table", (["model", "label fraction"] + metrics, rows))]
    if report.get("deployment"):
        from evaluation.deploy import deploy_notes

        dep = report["deployment"]
        blocks += [("h2", "Deployment: cost and accuracy"), ("list", deploy_notes(dep)),
                   ("table", (dep["table"]["header"], dep["table"]["rows"]))]
    from evaluation.visual_report import section_blocks

    blocks += section_blocks(report)  # maps, retrieval, embedding, robustness (when they were run)
    blocks += [("h2", "Plots"), ("plots", report["plots"]), ("h2", "How to read this report"), ("text", READING)]
    md: list[str] = []
    for kind, payload in blocks:
        if kind == "h1":
            md.append(f"# {payload}\n")
        elif kind == "h2":
            md.append(f"## {payload}\n")
        elif kind == "list":
            md.append("\n".join(f"- {x}" for x in payload) + "\n")
        elif kind == "table":
            md.append(_md_table(*payload) + "\n")
        elif kind in ("plots", "images"):
            md.append("\n".join(f"![{p}]({p})" for p in payload) + "\n")
        else:
            md.append(payload + "\n")
    return "\n".join(md), blocks


def _html_page(blocks: list[tuple[str, Any]], out: Path, plots: list[str]) -> str:
    parts = []
    for kind, payload in blocks:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(payload)}</{kind}>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in payload) + "</ul>")
        elif kind == "table":
            parts.append(_html_table(*payload))
        elif kind in ("plots", "images"):
            for p in (plots if kind == "plots" else payload):
                data = base64.b64encode((out / p).read_bytes()).decode()
                parts.append(f'<p><img alt="{html.escape(p)}" src="data:image/png;base64,{data}"></p>')
        else:
            parts.append("<pre>" + html.escape(payload) + "</pre>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>selfsup report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
