"""The quickstart's example data (selfsup.examples.elpv): ELPV laid out as the folders the pipeline reads."""

from __future__ import annotations

import pytest

from selfsup.examples.elpv import CLASSES, prepare_elpv

pytest.importorskip("elpv_dataset")


def test_prepare_elpv_writes_unlabelled_and_a_stratified_split(tmp_path):
    counts = prepare_elpv(tmp_path, val_fraction=0.25, seed=0)
    assert counts == {"unlabelled": 2624, "train": 2624 - counts["val"], "val": counts["val"]}
    unlabelled = list((tmp_path / "unlabelled").iterdir())
    assert len(unlabelled) == 2624 and all(p.is_symlink() and p.resolve().is_file() for p in unlabelled[:20])
    for cls in CLASSES.values():  # every class in both splits, about a quarter of it held out
        n_train = len(list((tmp_path / "labelled" / "train" / cls).iterdir()))
        n_val = len(list((tmp_path / "labelled" / "val" / cls).iterdir()))
        assert n_train > 0 and n_val > 0 and abs(n_val - 0.25 * (n_train + n_val)) <= 1
    assert prepare_elpv(tmp_path, val_fraction=0.25, seed=0) == counts  # a second run keeps the same files
