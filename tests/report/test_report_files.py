"""report.json follows its schema; report.md / report.html / plots are written; detection and curves included."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from evaluation.report.build import SCHEMA_PATH, build_report
from evaluation.results import aggregate, read_detection

MODELS = [
    {"name": "pretrained", "kind": "export", "weights": "/x/export", "weights_id": "sha256:ab", "architecture": "vit_t",
     "num_features": 8, "model_args": {}, "selfsup": {"method": "dino", "step": 5, "run_dir": None},
     "input_size": [3, 32, 32]},
    {"name": "random_init", "kind": "random_init", "weights": None, "weights_id": "random_init:vit_t", "architecture":
     "vit_t", "num_features": 8, "model_args": {}, "selfsup": None, "input_size": [3, 32, 32]},
]
DATA = {"train": "tr", "val": "va", "num_train": 100, "num_val": 50, "num_classes": 10, "classes": list("abcdefghij"),
        "max_train": None, "max_val": None, "label_subsets": "label_subsets.json"}


def acc(model: str, frac: float, seed: int) -> float:
    return (0.5 if model == "pretrained" else 0.2) + 0.3 * frac + 0.01 * seed


def write_stages(out: Path, run_dir: str | None = None) -> None:
    models = [dict(m) for m in MODELS]
    models[0]["selfsup"] = {"method": "dino", "step": 5, "run_dir": run_dir}
    runs = {"knn": [], "linear": []}
    for m in ("pretrained", "random_init"):
        for f in (0.1, 1.0):
            for s in (0, 1, 2):
                for k in (10, 20):
                    runs["knn"].append({"model": m, "label_fraction": f, "seed": s, "n_labels": int(100 * f), "k": k,
                                        "top1": acc(m, f, s), "top5": min(1.0, acc(m, f, s) + 0.2)})
                runs["linear"].append({"model": m, "label_fraction": f, "seed": s, "n_labels": int(100 * f),
                                       "top1": acc(m, f, s), "top5": 0.9, "lr": 0.01, "wd": 0.0, "holdout_top1": 0.5,
                                       "selection": "held-out 2 of 10 training labels"})
    settings = {"knn": {"ks": [10, 20], "T": 0.07}, "linear": {"steps": 10}}
    for stage, rs in runs.items():
        (out / f"{stage}.json").write_text(json.dumps({"stage": stage, "settings": settings[stage], "data": DATA,
                                                        "models": models, "runs": rs}))


def validate(report: dict) -> None:
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))


def test_aggregate_mean_and_sample_std():
    runs = [{"model": "m", "label_fraction": 0.1, "seed": s, "n_labels": 3, "top1": v} for s, v in enumerate([.2, .4])]
    (row,) = aggregate("linear", runs)
    assert row["mean"] == pytest.approx(0.3) and row["std"] == pytest.approx(0.1414, abs=1e-4)
    assert row["values"] == [0.2, 0.4] and row["k"] is None and row["n_seeds"] == 2


def test_report_validates_and_renders(tmp_path):
    write_stages(tmp_path)
    report = build_report(tmp_path, command="selfsup-eval report ...")
    validate(report)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    validate(on_disk)
    assert on_disk["detection"] is None and on_disk["settings"]["finetune"] is None
    knn20 = [r for r in on_disk["results"] if r["stage"] == "knn" and r["k"] == 20 and r["metric"] == "top1"
             and r["model"] == "pretrained" and r["label_fraction"] == 0.1]
    assert knn20[0]["mean"] == pytest.approx(acc("pretrained", 0.1, 1)) and knn20[0]["values"][2] == acc(
        "pretrained", 0.1, 2)
    md = (tmp_path / "report.md").read_text()
    assert "| kNN k=20 top-1 | pretrained | 54.0 ± 1.0 | 81.0 ± 1.0 |" in md
    assert "linear probe top-5" in md and "Detection" not in md
    png = tmp_path / "accuracy_vs_fraction.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    page = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in page and "<table>" in page
    bad = dict(on_disk, results=[dict(on_disk["results"][0], mean=1.5)])
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


def test_detection_and_pretraining_curves_are_included(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = [json.dumps({"step": i, "loss": 5 - 0.1 * i, "lr": 1e-3, "embed_std": 0.5, "teacher_entropy": 3.0,
                         "teacher_entropy_max": 4.0}) for i in range(20)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines + ["not json"]))
    write_stages(tmp_path, run_dir=str(run_dir))
    (tmp_path / "detection.json").write_text(json.dumps({"rows": [
        {"model": "pretrained", "label_fraction": 1.0, "seed": 0, "mAP": 0.30, "AP50": 0.5, "AP75": 0.2},
        {"model": "pretrained", "label_fraction": 1.0, "seed": 1, "mAP": 0.34, "AP50": 0.6, "AP75": 0.3},
        {"model": "random_init", "label_fraction": 1.0, "mAP": {"mean": 0.1, "std": 0.01}, "AP50_mean": 0.2}]}))
    report = build_report(tmp_path)
    validate(report)
    assert report["pretraining"]["num_records"] == 20 and "pretraining_curves.png" in report["plots"]
    assert (tmp_path / "pretraining_curves.png").stat().st_size > 5000
    det = {r["model"]: r for r in report["detection"]}
    assert det["pretrained"]["mAP"]["mean"] == pytest.approx(0.32) and det["random_init"]["AP50"]["mean"] == 0.2
    md = (tmp_path / "report.md").read_text()
    assert "## Detection" in md and "| random_init | 100% | 0.1 ± 0.01 | 0.2 |" in md


def test_detection_file_absent_gives_none(tmp_path):
    assert read_detection(tmp_path / "detection.json") is None


def test_reading_guide_names_the_folds_the_linear_stage_used(tmp_path):
    write_stages(tmp_path)  # linear settings of an older probe: no fold count recorded
    build_report(tmp_path, command=None)
    assert "picked by cross-validation on the labelled" in (tmp_path / "report.md").read_text()
    linear = json.loads((tmp_path / "linear.json").read_text())
    linear["settings"] = {"probe": "l2_logistic_regression_cv", "steps": 10, "folds": 3}
    (tmp_path / "linear.json").write_text(json.dumps(linear))
    build_report(tmp_path, command=None)
    md = (tmp_path / "report.md").read_text()
    assert "picked by 3-fold cross-validation on the labelled" in md and "5-fold" not in md
