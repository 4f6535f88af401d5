"""The report checks its own data: a val image copied into train is reported with the accuracy inflation bound, a
clean split reports none, and val images found in the pretraining shards are reported as information."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image

from evaluation.cli import main as eval_main
from evaluation.report.build import SCHEMA_PATH, build_report
from tests.fixtures.visual import make_pattern_folder, make_visual_setup


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("check")
    make_visual_setup(root / "solid", n_train=1, n_val=1)  # only for its tiny export
    make_pattern_folder(root / "train", n=5, seed=0)
    make_pattern_folder(root / "val", n=2, seed=1)
    return root


def _stage(split: Path, out: Path, stage: str, train: Path, *extra: str) -> dict:
    assert eval_main([stage, "--weights", str(split / "solid" / "export"), "--train", str(train), "--val",
                      str(split / "val"), "--out", str(out), "--label-fractions", "1.0", "--seeds", "1",
                      "--device", "cpu", "--batch-size", "8", *extra]) == 0
    return json.loads((out / f"{stage}.json").read_text())


def _report(out: Path) -> tuple[dict, str]:
    report = build_report(out)
    jsonschema.validate(report, json.loads(SCHEMA_PATH.read_text()))
    return report, (out / "report.md").read_text()


def test_a_val_image_copied_into_train_is_reported_with_the_inflation_bound(split, tmp_path):
    train = tmp_path / "train"
    shutil.copytree(split / "train", train)
    shutil.copy(split / "val" / "class0" / "1.png", train / "class2" / "leak.png")  # even under another label
    knn = _stage(split, tmp_path / "out", "knn", train)
    counts = knn["data_check"]["val_in_train"]
    assert (counts["affected"], counts["identical"], counts["num_val"]) == (1, 1, 6)
    assert counts["share"] == pytest.approx(1 / 6) and "pairs" not in counts
    report, md = _report(tmp_path / "out")
    (pair,) = report["data_check"]["val_in_train"]["pairs"]
    assert pair["val"].endswith("val/class0/1.png") and pair["reference"].endswith("class2/leak.png")
    assert pair["kind"] == "identical"
    assert "**1 of 6 val images (16.7%) are also in train**" in md and "inflated by up to 16.7 points" in md
    assert "leak.png" in md
    # the linear stage of the same folder carries the same check
    assert _stage(split, tmp_path / "out", "linear", train)["data_check"]["val_in_train"]["affected"] == 1


def test_a_clean_split_reports_no_val_image_in_train(split, tmp_path):
    knn = _stage(split, tmp_path / "out", "knn", split / "train")
    assert knn["data_check"]["val_in_train"]["affected"] == 0 and knn["data_check"]["val_in_pretraining"] is None
    report, md = _report(tmp_path / "out")
    assert report["data_check"]["val_in_train"]["pairs"] == []
    assert "No val image is in train (6 val against 15 train images)" in md and "inflated" not in md


def test_pretrain_shards_holding_val_images_are_reported_as_information(split, tmp_path):
    from selfsup.data.shard_writer import write_shards

    pretrain = tmp_path / "pretrain_images"
    shutil.copytree(split / "train", pretrain / "train")
    shutil.copytree(split / "val" / "class1", pretrain / "val1")  # the two class1 val images
    write_shards(pretrain, tmp_path / "shards", max_per_shard=8, progress=False)
    knn = _stage(split, tmp_path / "out", "knn", split / "train", "--pretrain-shards", str(tmp_path / "shards"))
    pre = knn["data_check"]["val_in_pretraining"]
    assert (pre["affected"], pre["identical"], pre["num_reference"]) == (2, 2, 17)
    assert knn["data_check"]["val_in_train"]["affected"] == 0
    report, md = _report(tmp_path / "out")
    names = sorted(p["val"].rsplit("val/", 1)[1] for p in report["data_check"]["val_in_pretraining"]["pairs"])
    assert names == ["class1/0.png", "class1/1.png"]
    assert "2 of 6 val images (33.3%) are also among the 17 pretraining images" in md
    assert "legitimate" in md and "No val image is in train" in md


def test_detection_data_check_counts_val_images_identical_to_training_images(tmp_path):
    from evaluation.stages.data_check import identical_check

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]
    check = identical_check([("v0", imgs[0]), ("v1", lambda: imgs[3])], [("t0", imgs[0]), ("t1", imgs[1]),
                                                                          ("t2", imgs[2])])
    leaked = check["val_in_train"]
    assert leaked["affected"] == 1 and leaked["share"] == 0.5 and leaked["near"] is None
    assert leaked["pairs"] == [{"val": "v0", "reference": "t0", "kind": "identical", "similarity": 1.0,
                                "hash_distance": 0}]
    assert identical_check([("v", imgs[3])], [("t", imgs[0])])["val_in_train"]["affected"] == 0


def test_rule_tightens_on_look_alike_images_and_keeps_its_limits_on_varied_ones():
    from evaluation.probes.duplicates import Rule

    rng = np.random.default_rng(0)
    varied = rng.integers(-2**62, 2**62, 400)  # random 64-bit hashes: nearest other image ~20 bits away
    assert Rule().calibrated_to(varied) == Rule()
    base = int(rng.integers(-2**62, 2**62))
    bits = rng.integers(0, 62, (400, 3))  # look-alikes: every image 1-3 bits from one pattern
    alike = np.array([base ^ int(sum(1 << int(b) for b in set(row))) for row in bits], dtype=np.int64)
    tight = Rule().calibrated_to(alike)
    assert tight.max_hash_distance < 2 and tight.pixel_correlation > 1  # aligned-pixel test off
    assert "the aligned-pixel test is off" in tight.describe()
