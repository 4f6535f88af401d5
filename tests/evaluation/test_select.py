"""`selfsup-eval select`: the strategies' defining properties, the files it writes, and its one-line refusals."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from evaluation.cli import main as eval_main
from evaluation.loading.fingerprints import hash_distance, perceptual_hash
from evaluation.loading.pool import load_pool
from evaluation.probes.selection import STRATEGIES, select
from tests.fixtures.pipeline import make_shards
from tests.fixtures.visual import make_visual_setup


def _blobs(n_blobs: int = 6, per_blob: int = 40, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated clusters: orthogonal directions plus a little noise (cosine geometry)."""
    rng = np.random.default_rng(seed)
    centres = np.eye(d)[:n_blobs] * 5.0
    x = np.concatenate([c + rng.normal(0, 0.3, (per_blob, d)) for c in centres])
    return x, np.repeat(np.arange(n_blobs), per_blob)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_picks_distinct_images_inside_the_pool(strategy):
    x, _ = _blobs()
    sel = select(x, budget=15, strategy=strategy, seed=3)
    assert len(sel.indices) == 15 and len(set(sel.indices.tolist())) == 15
    assert sel.indices.min() >= 0 and sel.indices.max() < len(x)
    assert sel.scores.shape == (15,) and np.isfinite(sel.scores).all()


def test_typiclust_picks_one_image_per_cluster():
    x, blob = _blobs(n_blobs=6)
    sel = select(x, budget=6, strategy="typiclust", seed=0)
    assert sorted(blob[sel.indices].tolist()) == list(range(6))


def test_typiclust_picks_the_densest_image_of_a_cluster():
    rng = np.random.default_rng(1)
    x, _ = _blobs(n_blobs=1, per_blob=60)
    x[:5] = x[:5] + rng.normal(0, 3.0, (5, x.shape[1]))  # five stragglers: never the typical image
    sel = select(x, budget=1, strategy="typiclust")
    assert sel.indices[0] >= 5


def test_kcenter_max_distance_shrinks_as_the_budget_grows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 8))
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)

    def cover_radius(budget: int) -> float:
        chosen = xn[select(x, budget=budget, strategy="kcenter", seed=0).indices]
        return float(np.linalg.norm(xn[:, None] - chosen[None], axis=2).min(axis=1).max())

    radii = [cover_radius(b) for b in (5, 20, 80)]
    assert radii[0] > radii[1] > radii[2]
    assert cover_radius(20) < float(np.linalg.norm(xn[:, None] - xn[None, :20], axis=2).min(axis=1).max())


def test_labelled_images_count_as_chosen():
    x, blob = _blobs(n_blobs=6)
    labelled = np.stack([x[blob == b][0] for b in range(3)])
    sel = select(x, budget=3, strategy="typiclust", labelled=labelled, labelled_y=np.arange(3))
    assert sorted(blob[sel.indices].tolist()) == [3, 4, 5]
    far = select(x, budget=3, strategy="kcenter", labelled=labelled, labelled_y=np.arange(3))
    assert sorted(blob[far.indices].tolist()) == [3, 4, 5]


def test_probcover_covers_every_cluster_before_repeating_one():
    x, blob = _blobs(n_blobs=5)
    sel = select(x, budget=5, strategy="probcover", num_classes=5)
    assert sorted(blob[sel.indices].tolist()) == list(range(5))
    assert 0 < sel.info["delta"] < 1.45


def test_perceptual_hash_survives_resizing_and_tells_images_apart():
    rng = np.random.default_rng(0)
    a = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((64, 64), Image.BILINEAR)
    b = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((64, 64), Image.BILINEAR)
    assert hash_distance(perceptual_hash(a), perceptual_hash(a.resize((40, 40)))) <= 6
    assert hash_distance(perceptual_hash(a), perceptual_hash(b)) >= 16


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny ViT export and a 3-class pool of 6 images per class (read-only for the tests)."""
    return make_visual_setup(tmp_path_factory.mktemp("select") / "data", n_train=6, n_val=1)


def _run(*args: str) -> int:
    return eval_main(["select", *args, "--device", "cpu", "--projection", "pca"])


def test_select_writes_the_chosen_paths_json_and_plot(tmp_path, setup):
    out = tmp_path / "sel"
    assert _run("--weights", str(setup / "export"), "--images", str(setup / "train"), "--budget", "3",
                "--out", str(out)) == 0
    lines = (out / "selection.txt").read_text().splitlines()
    assert len(lines) == 3 and len(set(lines)) == 3
    assert all((setup / "train" / line).is_file() for line in lines)  # relative to --images
    meta = json.loads((out / "selection.json").read_text())
    assert meta["strategy"] == "typiclust" and meta["budget"] == 3 and meta["pool_size"] == 18
    assert [s["path"] for s in meta["selected"]] == lines and [s["rank"] for s in meta["selected"]] == [1, 2, 3]
    assert (out / "selection.png").stat().st_size > 1000
    assert len({line.split("/")[0] for line in lines}) == 3  # three solid-colour classes: one pick in each
    # a second run into its own output re-reads the cached features and replaces its own files
    cache = sorted((out / "cache").iterdir())
    stamp = cache[0].stat().st_mtime_ns
    assert _run("--weights", str(setup / "export"), "--images", str(setup / "train"), "--budget", "5",
                "--strategy", "kcenter", "--out", str(out)) == 0
    assert sorted((out / "cache").iterdir()) == cache and cache[0].stat().st_mtime_ns == stamp
    assert len((out / "selection.txt").read_text().splitlines()) == 5


def test_select_labelled_folder_is_complemented_and_never_repicked(tmp_path, setup):
    labelled = tmp_path / "labelled"
    for c in ("class0", "class1"):  # two labelled images, copied from the pool
        (labelled / c).mkdir(parents=True)
        shutil.copy(setup / "train" / c / "0.png", labelled / c / "0.png")
    out = tmp_path / "sel"
    assert _run("--weights", str(setup / "export"), "--images", str(setup / "train"), "--budget", "1",
                "--labelled", str(labelled), "--out", str(out)) == 0
    pick = (out / "selection.txt").read_text().split()
    assert pick[0].startswith("class2/")  # the one class with no label yet
    meta = json.loads((out / "selection.json").read_text())
    assert meta["num_labelled"] == 2 and meta["labelled_in_pool"] == 2 and meta["labelled_classes"] == ["class0",
                                                                                                          "class1"]


def test_select_reads_a_pool_of_shards(tmp_path, setup):
    shards = make_shards(tmp_path / "s", n_per_class=4, max_per_shard=3)
    out = tmp_path / "sel"
    assert _run("--weights", str(setup / "export"), "--images", str(shards), "--budget", "2", "--out", str(out)) == 0
    lines = (out / "selection.txt").read_text().splitlines()
    assert len(lines) == 2 and all(".tar#" in line for line in lines)
    pool = load_pool(weights=str(setup / "export"), images=str(shards), cache_dir=out / "cache")
    assert len(pool) == 8 and pool.image(pool.keys.index(lines[0])).size[0] > 0


@pytest.mark.parametrize("case", ["budget", "empty_pool", "bad_export", "one_class", "foreign_out", "strategy"])
def test_select_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, setup):
    weights, images, budget, extra = str(setup / "export"), str(setup / "train"), "2", []
    out = tmp_path / "sel"
    if case == "budget":
        budget = "19"
    elif case == "empty_pool":
        (tmp_path / "empty").mkdir()
        images = str(tmp_path / "empty")
    elif case == "bad_export":
        weights = str(setup / "train")
    elif case == "one_class":
        (tmp_path / "lab" / "only").mkdir(parents=True)
        shutil.copy(setup / "val" / "class0" / "0.png", tmp_path / "lab" / "only" / "0.png")
        extra = ["--labelled", str(tmp_path / "lab")]
    elif case == "foreign_out":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    if case == "strategy":
        with pytest.raises(SystemExit):
            _run("--weights", weights, "--images", images, "--budget", budget, "--out", str(out), "--strategy", "x")
        assert not out.exists()
        return
    assert _run("--weights", weights, "--images", images, "--budget", budget, "--out", str(out), *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("selfsup-eval: error:"), err
    if case == "foreign_out":
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"
    else:
        assert not out.exists(), sorted(out.rglob("*"))
    assert len(list((setup / "train").rglob("*.png"))) == 18 and sorted(p.name for p in setup.iterdir()) == [
        "export", "train", "val"]
