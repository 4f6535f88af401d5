"""End to end: a tiny timm export + a tiny image folder -> `selfsup-eval report` (and stages) on the CPU."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from evaluation.cli import main
from evaluation.loading.backbones import load_model, model_sources
from evaluation.report.build import SCHEMA_PATH
from tests.fixtures.visual import make_visual_setup


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # the CLI's --threads is process-wide


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_visual_setup(tmp_path_factory.mktemp("e2e"), size=20, img_size=16)


def args(root, out, *extra):
    return ["--weights", str(root / "export"), "--train", str(root / "train"), "--val", str(root / "val"),
            "--out", str(out), "--label-fractions", "0.34,1.0", "--seeds", "2", "--batch-size", "8",
            "--threads", "1", "--device", "cpu", *extra]


def test_export_loads_through_plain_timm_and_baseline_differs(setup):
    pre, rnd = (load_model(s) for s in model_sources(weights=str(setup / "export")))
    assert tuple(pre.data_config["input_size"]) == (3, 16, 16) and pre.info["selfsup"]["step"] == 7
    assert rnd.info["architecture"] == pre.info["architecture"] and rnd.info["selfsup"] is None
    x = torch.randn(2, 3, 16, 16)
    assert not torch.allclose(pre.model(x), rnd.model(x))
    again = load_model(model_sources(weights=str(setup / "export"))[1])
    torch.testing.assert_close(rnd.model(x), again.model(x))  # the random baseline is seeded


def test_report_end_to_end_with_finetune_is_deterministic(setup, tmp_path):
    out_a, out_b = tmp_path / "a", tmp_path / "b"
    assert main(["report", *args(setup, out_a, "--finetune", "--finetune-steps", "2")]) == 0
    report = json.loads((out_a / "report.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    stages = {r["stage"] for r in report["results"]}
    assert stages == {"knn", "linear", "finetune"}
    assert {m["name"] for m in report["models"]} == {"pretrained", "random_init"}
    assert {r["label_fraction"] for r in report["results"]} == {0.34, 1.0}
    assert {r["n_labels"] for r in report["results"] if r["label_fraction"] == 0.34} == {6}  # 2 of 6 per class
    for name in ("report.md", "report.html", "accuracy_vs_fraction.png", "label_subsets.json", "knn.json",
                 "linear.json", "finetune.json"):
        assert (out_a / name).stat().st_size > 0, name
    assert len(list((out_a / "cache").glob("*.safetensors"))) == 4  # 2 models x 2 splits
    assert "random_init" in (out_a / "report.md").read_text()
    linear_settings = report["settings"]["linear"]  # which probe made the numbers (the earlier one wrote no "probe")
    assert linear_settings["probe"] == "l2_logistic_regression_cv" and linear_settings["folds"] == 5
    # 6 images per class: 5 folds; at the 34% fraction 2 per class, so only 2 folds can each hold a row of every class
    assert {h["selection"] for h in report["linear_hparams"]} == {"5-fold cross-validation on 18 training labels",
                                                                   "2-fold cross-validation on 6 training labels"}

    assert main(["report", *args(setup, out_b, "--finetune", "--finetune-steps", "2")]) == 0
    again = json.loads((out_b / "report.json").read_text())
    assert again["results"] == report["results"] and again["linear_hparams"] == report["linear_hparams"]
    assert json.loads((out_b / "label_subsets.json").read_text())["subsets"] == \
        json.loads((out_a / "label_subsets.json").read_text())["subsets"]


def test_knn_stage_alone_and_cache_reuse(setup, tmp_path):
    assert main(["knn", *args(setup, tmp_path)]) == 0
    first = json.loads((tmp_path / "knn.json").read_text())
    assert {r["k"] for r in first["runs"]} == {10, 20, 100, 200} and not (tmp_path / "report.json").exists()
    cached = sorted((tmp_path / "cache").glob("*.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in cached]
    assert main(["knn", *args(setup, tmp_path)]) == 0
    assert [p.stat().st_mtime_ns for p in cached] == stamps  # features were read back, not recomputed
    assert json.loads((tmp_path / "knn.json").read_text())["runs"] == first["runs"]


def test_user_errors_exit_2_with_one_line(setup, tmp_path, capsys):
    bad = args(setup, tmp_path)
    bad[1] = str(tmp_path / "missing_export")
    assert main(["linear", *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "missing_export" in err
    assert main(["knn", *args(setup, tmp_path)[:-8], "--label-fractions", "2"]) == 2
    assert "label-fractions" in capsys.readouterr().err
