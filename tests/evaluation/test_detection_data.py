"""Detection data: VOC / COCO readers, label-fraction sampling (evaluation.loading.fractions), COCO AP (pycocotools)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.detection.data import load_detection_dataset
from evaluation.detection.metrics import coco_box_ap
from evaluation.loading.fractions import nested_subset
from selfsup.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA

RACCOON = SHARED_DATA / "raccoon.tar.gz"


def _voc_xml(filename: str, w: int, h: int, objects: list[tuple[str, int, int, int, int, int]]) -> str:
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for n, x1, y1, x2, y2, d in objects)
    return f"<annotation><filename>{filename}</filename><size><width>{w}</width><height>{h}</height>" \
           f"<depth>3</depth></size>{objs}</annotation>"


def _make_voc(root: Path, n: int = 6) -> Path:
    """A VOC folder one level down (like bccd/BCCD) with ImageSets train / val / test."""
    voc = root / "ds" / "VOC"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "JPEGImages").mkdir()
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    names = [f"img{i:02d}" for i in range(n)]
    for i, name in enumerate(names):
        Image.new("RGB", (40, 30)).save(voc / "JPEGImages" / f"{name}.jpg")
        objs = [("cat", 2, 3, 20, 25, 0), ("dog", 10, 5, 39, 30, int(i == 0))]
        (voc / "Annotations" / f"{name}.xml").write_text(_voc_xml(f"{name}.jpg", 40, 30, objs))
    (voc / "ImageSets/Main/train.txt").write_text("\n".join(names[:3]))
    (voc / "ImageSets/Main/val.txt").write_text("\n".join(names[3:4]))
    (voc / "ImageSets/Main/test.txt").write_text("\n".join(names[4:]))
    return root / "ds"


def test_voc_reader_split_classes_and_boxes(tmp_path: Path) -> None:
    ds = load_detection_dataset(_make_voc(tmp_path))
    assert ds.classes == ("cat", "dog")
    # With a test list: train on train + val, evaluate on test.
    assert [s.path.stem for s in ds.train] == ["img00", "img01", "img02", "img03"]
    assert [s.path.stem for s in ds.val] == ["img04", "img05"]
    s = ds.train[0]
    assert (s.width, s.height) == (40, 30)
    assert s.boxes[0] == (1.0, 2.0, 20.0, 25.0)  # 1-based inclusive VOC -> continuous pixels
    assert s.labels == (0, 1) and s.ignore == (False, True)
    assert len({x.image_id for x in ds.train + ds.val}) == 6


def test_voc_without_split_holds_out_seeded(tmp_path: Path) -> None:
    root = _make_voc(tmp_path, n=10) / "VOC"
    for f in (root / "ImageSets" / "Main").iterdir():
        f.unlink()
    a, b = load_detection_dataset(root), load_detection_dataset(root)
    assert len(a.val) == 2 and len(a.train) == 8 and a.val_split.startswith("holdout")
    assert [s.image_id for s in a.val] == [s.image_id for s in b.val]
    # Held out the way label fractions are drawn (evaluation.loading.fractions): one seeded, nested sampler.
    assert [s.path.stem for s in a.val] == nested_subset([f"img{i:02d}" for i in range(10)], fraction=0.2, seed=0)


def test_coco_reader(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.jpg"):
        Image.new("RGB", (50, 40)).save(tmp_path / name)
    doc = {"images": [{"id": 7, "file_name": "a.jpg", "width": 50, "height": 40},
                      {"id": 9, "file_name": "b.jpg", "width": 50, "height": 40}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [5, 6, 10, 20], "iscrowd": 0},
                           {"id": 2, "image_id": 9, "category_id": 1, "bbox": [0, 0, 50, 40]}],
           "categories": [{"id": 3, "name": "zebra"}, {"id": 1, "name": "ant"}]}
    (tmp_path / "train.json").write_text(json.dumps(doc))
    (tmp_path / "val.json").write_text(json.dumps(doc))
    ds = load_detection_dataset(tmp_path / "train.json", val_data=tmp_path / "val.json")
    assert ds.classes == ("ant", "zebra")  # ordered by category id
    a = next(s for s in ds.train if s.path.name == "a.jpg")
    assert a.boxes == ((5.0, 6.0, 15.0, 26.0),) and a.labels == (1,)
    bad = dict(doc, images=[{"id": 1, "file_name": "missing.jpg", "width": 5, "height": 5}])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="missing.jpg"):
        load_detection_dataset(tmp_path / "bad.json")


def test_bad_data_paths_raise_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_detection_dataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="Annotations"):
        load_detection_dataset(tmp_path / "empty")


@pytest.mark.skipif(not RACCOON.exists(), reason="shared raccoon data missing")
def test_raccoon_layout(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("raccoon")
    with tarfile.open(RACCOON) as tar:
        tar.extractall(root, filter="data")
    ds = load_detection_dataset(root / "raccoon")
    assert ds.classes == ("raccoon",)
    assert ds.val_split == "test"
    assert len(ds.train) + len(ds.val) == 200 and 30 < len(ds.val) < 50
    assert not {s.path for s in ds.train} & {s.path for s in ds.val}
    assert sum(len(s.boxes) for s in ds.train + ds.val) == 217


def test_label_fraction_is_seeded_nested_and_model_independent() -> None:
    ids = list(range(1, 101))
    a = nested_subset(ids, fraction=0.25, seed=3)
    assert a == nested_subset(list(reversed(ids)), fraction=0.25, seed=3)  # order of input irrelevant
    assert len(a) == 25 and set(a) <= set(ids)
    assert set(a) <= set(nested_subset(ids, fraction=0.5, seed=3))  # nested
    assert a != nested_subset(ids, fraction=0.25, seed=4)
    assert nested_subset(ids, fraction=1.0, seed=0) == ids
    assert len(nested_subset(ids[:3], fraction=0.01, seed=0)) == 1
    with pytest.raises(ConfigError, match="outside"):
        nested_subset(ids, fraction=1.5, seed=0)


def test_detection_images_use_the_checked_decoding(tmp_path: Path) -> None:
    """A 16-bit PNG is scaled to 8 bits (selfsup.data.decode), not clipped to white; a broken file is one DataError."""
    from evaluation.detection.data import DetectionSample
    from evaluation.detection.images import DetectionImages

    Image.fromarray(np.full((30, 40), 100 * 256, dtype=np.uint16)).save(tmp_path / "deep.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    samples = [DetectionSample(i + 1, tmp_path / n, 40, 30, ((1.0, 2.0, 20.0, 25.0),), (0,), (False,))
               for i, n in enumerate(("deep.png", "broken.jpg"))]
    images = DetectionImages(samples, img_size=64, train=False)
    img, target = images[0]
    assert img.shape == (3, 48, 64) and torch.allclose(img, torch.full_like(img, 100 / 255))
    assert target["boxes"].tolist()[0] == pytest.approx([1.6, 3.2, 32.0, 40.0])
    with pytest.raises(DataError, match=r"broken.jpg: cannot decode image \(not_an_image\)"):
        images[1]


def _two_image_voc(tmp_path: Path) -> Path:
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for name, objs in [("p", [("a", 11, 11, 60, 50, 0), ("b", 70, 5, 95, 90, 0)]), ("q", [("a", 21, 31, 80, 70, 0)])]:
        Image.new("RGB", (100, 100)).save(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations" / f"{name}.xml").write_text(_voc_xml(f"{name}.jpg", 100, 100, objs))
    (root / "ImageSets/Main/train.txt").write_text("p\nq")
    (root / "ImageSets/Main/val.txt").write_text("p\nq")
    return root


def test_coco_ap_is_one_for_ground_truth_and_zero_for_misses(tmp_path: Path) -> None:
    ds = load_detection_dataset(_two_image_voc(tmp_path))
    perfect = [{"image_id": s.image_id, "boxes": np.array(s.boxes), "scores": np.ones(len(s.boxes)),
                "labels": np.array(s.labels)} for s in ds.val]
    assert coco_box_ap(ds.val, perfect, ds.classes) == pytest.approx({"mAP": 1.0, "AP50": 1.0, "AP75": 1.0})
    shifted = [dict(p, boxes=p["boxes"] + np.array([200.0, 200.0, 200.0, 200.0])) for p in perfect]
    assert coco_box_ap(ds.val, shifted, ds.classes) == {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
    wrong_class = [dict(p, labels=1 - p["labels"]) for p in perfect]
    assert coco_box_ap(ds.val, wrong_class, ds.classes)["mAP"] == 0.0
    assert coco_box_ap(ds.val, [], ds.classes)["mAP"] == 0.0
    # IoU between 0.5 and 0.75 for every box: counts for AP50, not for AP75.
    def widen(b: np.ndarray) -> np.ndarray:
        b = b.copy()
        b[:, 2] = b[:, 0] + (b[:, 2] - b[:, 0]) * 1.6  # IoU with the ground truth = 1 / 1.6 = 0.625
        return b

    loose = [dict(p, boxes=widen(p["boxes"])) for p in perfect]
    ap = coco_box_ap(ds.val, loose, ds.classes)
    assert ap["AP50"] == pytest.approx(1.0) and ap["AP75"] == 0.0
