"""Labelled data sources: image folder, saved Hugging Face dataset and webdataset shards give the same set."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from selfsup.data.labelled import open_labelled
from selfsup.errors import DataError


def encode_png(img: Image.Image) -> bytes:
    """PNG bytes of ``img``, for the shards these tests write."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def make_images(n_per_class: int = 3, classes: tuple[str, ...] = ("cat", "dog")) -> list[tuple[Image.Image, int]]:
    rng = np.random.default_rng(0)
    return [(Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)), c)
            for c in range(len(classes)) for _ in range(n_per_class)]


def write_folder(root, items, classes=("cat", "dog")):
    for i, (img, c) in enumerate(items):
        (root / classes[c]).mkdir(parents=True, exist_ok=True)
        img.save(root / classes[c] / f"{i:03d}.png")


def test_image_folder_labels_and_val_class_mapping(tmp_path):
    items = make_images()
    write_folder(tmp_path / "train", items)
    write_folder(tmp_path / "val", [items[4]], classes=("cat", "dog"))
    tr = open_labelled(str(tmp_path / "train"))
    assert tr.classes == ["cat", "dog"] and tr.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.array_equal(np.asarray(tr.image(4)), np.asarray(items[4][0]))
    va = open_labelled(str(tmp_path / "val"), classes=tr.classes)  # val has only "dog": still label 1
    assert va.labels.tolist() == [1]
    write_folder(tmp_path / "bad", [items[0]], classes=("bird",))
    with pytest.raises(DataError, match="bird"):
        open_labelled(str(tmp_path / "bad"), classes=tr.classes)


def test_max_items_is_a_seeded_subset_with_its_own_identity(tmp_path):
    write_folder(tmp_path / "train", make_images(5))
    full = open_labelled(str(tmp_path / "train"))
    a = open_labelled(str(tmp_path / "train"), max_items=4)
    b = open_labelled(str(tmp_path / "train"), max_items=4)
    assert len(a) == 4 and a.labels.tolist() == b.labels.tolist() and a.identity == b.identity != full.identity


def test_shards_and_hf_dataset_match_the_images(tmp_path):
    items = make_images()
    shard = tmp_path / "train-000000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, (img, c) in enumerate(items):
            for ext, data in (("png", encode_png(img)), ("cls", str(c).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    shards = open_labelled(str(shard))
    assert shards.labels.tolist() == [c for _, c in items] and shards.classes == ["0", "1"]
    assert np.array_equal(np.asarray(shards.image(2)), np.asarray(items[2][0]))

    import datasets

    ds = datasets.Dataset.from_dict({"image": [im for im, _ in items], "label": [c for _, c in items]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.ClassLabel(names=["cat", "dog"])}))
    ds.save_to_disk(str(tmp_path / "hf"))
    hf = open_labelled(str(tmp_path / "hf"))
    assert hf.classes == ["cat", "dog"] and hf.labels.tolist() == [c for _, c in items]
    assert np.array_equal(np.asarray(hf.image(5)), np.asarray(items[5][0]))


def test_missing_and_broken_inputs_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        open_labelled(str(tmp_path / "nope"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        open_labelled(str(tmp_path / "empty"))
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "x.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="x.jpg"):
        open_labelled(str(tmp_path / "broken")).image(0)
