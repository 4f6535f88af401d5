"""Corruptions (imagecorruptions + the rewritten ones) and the robustness section on a tiny export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.loading.backbones import model_sources
from evaluation.probes.corruptions import COMMON, apply_corruption, fog, glass_blur, imagecorruptions_module
from evaluation.stages.classification import prepare_data
from evaluation.stages.robustness import run_robustness
from selfsup.errors import ConfigError
from tests.fixtures.visual import make_visual_setup

IMAGE = (np.random.default_rng(0).random((40, 36, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize("name", COMMON)
def test_every_common_corruption_runs_is_seeded_and_changes_the_image(name):
    out = apply_corruption(IMAGE, name, 3, seed=5)
    assert out.shape == IMAGE.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - IMAGE).mean() > 1
    assert np.array_equal(out, apply_corruption(IMAGE, name, 3, seed=5))


def test_the_package_release_breaks_where_we_rewrote_it():
    """If a fixed imagecorruptions release appears, this fails: drop the rewrites in
    evaluation/probes/corruptions.py."""
    package = imagecorruptions_module()
    for name in ("glass_blur", "fog"):
        with pytest.raises((TypeError, AttributeError)):
            package.corrupt(IMAGE, corruption_name=name, severity=1)


def test_rewritten_corruptions_grow_with_severity():
    for f in (glass_blur, fog):
        np.random.seed(0)
        weak = np.abs(f(IMAGE, 1) - IMAGE).mean()
        np.random.seed(0)
        strong = np.abs(f(IMAGE, 5) - IMAGE).mean()
        assert strong > weak > 0


def test_unknown_corruption_and_small_images_are_config_errors():
    with pytest.raises(ConfigError, match="unknown corruption 'rain'"):
        run_robustness(None, [], out="unused", corruptions=["rain"], severities=[1])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 32 px"):
        apply_corruption(IMAGE[:16, :16], "fog", 1, seed=0)


def test_robustness_two_corruptions_one_severity(tmp_path):
    setup = make_visual_setup(tmp_path / "data")
    data = prepare_data(train=str(setup / "train"), val=str(setup / "val"), out=tmp_path / "out",
                        label_fractions=[1.0], seeds=1)
    sources = model_sources(weights=str(setup / "export"))
    res = run_robustness(data, sources, out=tmp_path / "out", corruptions=["gaussian_noise", "contrast"],
                         severities=[5], device="cpu", batch_size=8)
    assert json.loads((tmp_path / "out" / "robustness.json").read_text()) == res
    assert (tmp_path / "out" / "robustness.png").read_bytes()[:4] == b"\x89PNG"
    keys = {(r["model"], r["corruption"], r["severity"]) for r in res["rows"]}
    assert keys == {(m, c, s) for m in ("pretrained", "random_init")
                    for c, s in (("clean", 0), ("gaussian_noise", 5), ("contrast", 5))}
    for row in res["summary"]:
        corrupted = [r["knn_top1"] for r in res["rows"] if r["model"] == row["model"] and r["corruption"] != "clean"]
        assert row["mca_knn_top1"] == pytest.approx(np.mean(corrupted))
    # the clean row equals the report's kNN k=20 at 100% labels: the same features, classifier and labels
    from evaluation.stages.classification import run_knn

    knn = run_knn(data, sources, out=tmp_path / "out", ks=(20,), device="cpu", batch_size=8)
    for r in knn["runs"]:
        clean = next(x for x in res["rows"] if x["model"] == r["model"] and x["corruption"] == "clean")
        assert clean["knn_top1"] == pytest.approx(r["top1"])
    # corrupted features are cached: a second call reads them back and gives the same rows
    again = run_robustness(data, sources, out=tmp_path / "out", corruptions=["gaussian_noise", "contrast"],
                           severities=[5], device="cpu", batch_size=8)
    assert again["rows"] == res["rows"]
