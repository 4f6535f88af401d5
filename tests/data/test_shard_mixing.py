"""Shards written from class folders mix their classes: the writer shuffles, the reader interleaves.

Class folders are listed in sorted order, so without the writer's seeded permutation every shard holds
one class and a batch is nearly one class (a DINO center, BatchNorm and contrastive negatives all
suffer). Chance share of the most frequent class in a batch here is 1/10.
"""

from __future__ import annotations

import json
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.build import multicrop_transform, stream_options
from selfsup.cli import main as selfsup_main
from selfsup.config import DataConfig, ViewsConfig
from selfsup.data.loader import make_loader
from selfsup.data.shard_list import expand_shards
from selfsup.data.stream import ShardStream

N_CLASSES, PER_CLASS, PER_SHARD, BATCH = 10, 130, 100, 64


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("classes")
    rng = np.random.default_rng(0)
    for c in range(N_CLASSES):
        (root / f"class{c}").mkdir()
        for i in range(PER_CLASS):
            Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")
    return root


def _shard_classes(out: Path) -> list[set[int]]:
    import webdataset as wds

    return [{int(s["cls"]) for s in wds.WebDataset(str(p), shardshuffle=False)} for p in expand_shards(str(out))]


def _keys(out: Path) -> list[str]:
    import webdataset as wds

    return [s["__key__"] for s in wds.WebDataset(expand_shards(str(out)), shardshuffle=False)]


def _batch_top_shares(out: Path, n_batches: int, **stream_kw) -> list[float]:
    views = ViewsConfig(global_crop_size=8, local_crop_size=8, n_local=0)
    stream = ShardStream(urls=expand_shards(str(out)), batch_size=BATCH, seed=0, transform=multicrop_transform(views),
                         **stream_options(DataConfig(**stream_kw)))
    shares = []
    for batch in islice(make_loader(stream, num_workers=0, pin_memory=False), n_batches):
        cls = batch["cls"].tolist()
        shares.append(Counter(cls).most_common(1)[0][1] / len(cls))
    return shares


def test_shard_command_shuffles_classes_across_shards_and_keeps_keys(folder, tmp_path):
    out = tmp_path / "shards"
    assert selfsup_main(["shard", str(folder), str(out), "--max-per-shard", str(PER_SHARD)]) == 0
    per_shard = _shard_classes(out)
    assert len(per_shard) == -(-N_CLASSES * PER_CLASS // PER_SHARD)
    assert all(len(classes) >= 8 for classes in per_shard), per_shard
    # Same seed, same order; another seed, another order; keys are the relative paths whatever the order.
    again, other = tmp_path / "again", tmp_path / "other"
    assert selfsup_main(["shard", str(folder), str(again), "--max-per-shard", str(PER_SHARD)]) == 0
    assert selfsup_main(["shard", str(folder), str(other), "--max-per-shard", str(PER_SHARD), "--seed", "1"]) == 0
    keys = _keys(out)
    assert keys == _keys(again) != _keys(other)
    assert set(keys) == set(_keys(other)) == {f"class{c}/{i}" for c in range(N_CLASSES) for i in range(PER_CLASS)}
    assert json.loads((out / "classes.json").read_text()) == [f"class{c}" for c in range(N_CLASSES)]


def test_no_shuffle_keeps_source_order(folder, tmp_path):
    out = tmp_path / "sorted"
    assert selfsup_main(["shard", str(folder), str(out), "--max-per-shard", str(PER_CLASS), "--no-shuffle"]) == 0
    assert _shard_classes(out) == [{c} for c in range(N_CLASSES)]


def test_default_loader_batches_are_mixed(folder, tmp_path):
    out = tmp_path / "shards"
    selfsup_main(["shard", str(folder), str(out), "--max-per-shard", str(PER_SHARD)])
    shares = _batch_top_shares(out, 20)  # the data.* defaults of the config
    assert len(shares) == 20
    assert np.mean(shares) <= 2 / N_CLASSES


def test_reader_interleaves_class_sorted_shards(folder, tmp_path):
    """Old, class-sorted shards and a small buffer: reading 4 shards in turn mixes 4 classes per batch."""
    out = tmp_path / "sorted"
    selfsup_main(["shard", str(folder), str(out), "--max-per-shard", str(PER_CLASS), "--no-shuffle"])
    one = _batch_top_shares(out, 10, shuffle_buffer=8, shard_interleave=1)
    four = _batch_top_shares(out, 10, shuffle_buffer=8, shard_interleave=4)
    assert np.mean(one) > 0.8
    assert np.mean(four) <= 0.5
