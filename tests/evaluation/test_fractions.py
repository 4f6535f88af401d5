"""Label fractions: stratified, >= 1 per class, seeded, saved and reused; fraction parsing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from evaluation.loading.fractions import label_subsets, parse_fractions, stratified_subset
from selfsup.errors import ConfigError, DataError

LABELS = np.array([0] * 100 + [1] * 50 + [2] * 7 + [3] * 1)


def test_stratified_with_at_least_one_per_class():
    idx = stratified_subset(LABELS, fraction=0.1, seed=0)
    counts = np.bincount(LABELS[idx], minlength=4)
    assert counts.tolist() == [10, 5, 1, 1]
    assert len(set(idx.tolist())) == len(idx) and np.all(np.diff(idx) > 0)
    assert np.bincount(LABELS[stratified_subset(LABELS, fraction=0.001, seed=0)]).tolist() == [1, 1, 1, 1]
    assert stratified_subset(LABELS, fraction=1.0, seed=3).tolist() == list(range(len(LABELS)))


def test_deterministic_per_seed_and_different_across_seeds():
    a = stratified_subset(LABELS, fraction=0.2, seed=1)
    assert np.array_equal(a, stratified_subset(LABELS, fraction=0.2, seed=1))
    assert not np.array_equal(a, stratified_subset(LABELS, fraction=0.2, seed=2))


def test_subsets_are_saved_and_reused(tmp_path):
    path = tmp_path / "label_subsets.json"
    first = label_subsets(LABELS, fractions=[0.1, 0.5], seeds=[0, 1], data_identity="data-A", path=path)
    saved = json.loads(path.read_text())
    assert saved["data_identity"] == "data-A" and saved["subsets"]["0.1"]["1"] == first["0.1"]["1"]
    # a file edited by hand is what every later model gets: the file, not the sampler, is the truth
    saved["subsets"]["0.1"]["0"] = [0, 100, 150, 157]
    path.write_text(json.dumps(saved))
    again = label_subsets(LABELS, fractions=[0.1], seeds=[0], data_identity="data-A", path=path)
    assert again["0.1"]["0"] == [0, 100, 150, 157]
    with pytest.raises(DataError, match="other training data"):
        label_subsets(LABELS, fractions=[0.1], seeds=[0], data_identity="data-B", path=path)


@pytest.mark.parametrize("text", ["0", "1.5", "a,b", "", "-0.1"])
def test_bad_fractions_raise_config_error(text):
    with pytest.raises(ConfigError, match="label-fractions"):
        parse_fractions(text)


def test_fractions_are_sorted_and_unique():
    assert parse_fractions("1.0,0.01,0.1,0.1") == [0.01, 0.1, 1.0]
