"""Detection data sets: Pascal VOC XML folders and COCO JSON files -> one in-memory list of boxes.

Everything is read into :class:`DetectionSample` records (image path, boxes in pixels, class ids) so
that the detector, the label-fraction sampler and the COCO evaluation all see the same records.

Layouts understood by :func:`load_detection_dataset` (``--data``):

* a COCO JSON file (``instances.json``) with ``--images DIR`` (default: the JSON's folder) and an
  optional ``--val-data`` JSON; without one, a seeded 20 % of the images is held out;
* Pascal VOC: ``Annotations/ + JPEGImages/ + ImageSets/Main/{train,val,test,trainval}.txt``,
  also one folder below (BCCD ships as ``bccd/BCCD/``). With a ``test.txt`` the model trains on
  ``trainval`` (or ``train`` + ``val``) and is evaluated on ``test``; otherwise ``train`` / ``val``;
* the raccoon layout: ``annotations/*.xml + images/`` split by ``data/{train,test}_labels.csv``;
* plain ``images/ + annotations/`` (or ``JPEGImages/ + Annotations/``) without a split: a seeded
  20 % of the images is held out for evaluation.

Boxes are ``(x1, y1, x2, y2)`` in pixels of the original image (the VOC and COCO conventions are
converted). VOC ``difficult`` objects are kept as ``ignore`` boxes: not trained on, and ignored
(COCO ``iscrowd``) in the evaluation, as in the VOC protocol.
"""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from selfsup.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0


@dataclass(frozen=True)
class DetectionSample:
    """One image and its boxes.

    Attributes:
        image_id: Stable integer id (position in the sorted list of image names of the data set).
        path: Image file.
        width: Original width in pixels.
        height: Original height in pixels.
        boxes: ``(x1, y1, x2, y2)`` per object, pixels of the original image.
        labels: Class index per object, into :attr:`DetectionDataset.classes`.
        ignore: True for objects marked ``difficult`` (VOC) or ``iscrowd`` (COCO).
    """

    image_id: int
    path: Path
    width: int
    height: int
    boxes: tuple[tuple[float, float, float, float], ...]
    labels: tuple[int, ...]
    ignore: tuple[bool, ...] = field(default=())


@dataclass(frozen=True)
class DetectionDataset:
    """A training split and an evaluation split over the same class list."""

    name: str
    classes: tuple[str, ...]
    train: tuple[DetectionSample, ...]
    val: tuple[DetectionSample, ...]
    val_split: str


@dataclass(frozen=True)
class _RawObject:
    name: str
    box: tuple[float, float, float, float]
    ignore: bool


@dataclass(frozen=True)
class _RawImage:
    key: str
    path: Path
    width: int
    height: int
    objects: tuple[_RawObject, ...]


def load_detection_dataset(data: str | Path, *, images: str | Path | None = None,
                           val_data: str | Path | None = None) -> DetectionDataset:
    """Reads a VOC folder or a COCO JSON file (see the module docstring for the layouts).

    Args:
        data: A data set folder or a COCO JSON file.
        images: Image folder for COCO JSON (default: the JSON file's folder).
        val_data: COCO JSON of the evaluation split (default: a seeded 20 % hold-out).

    Raises:
        DataError: The path is missing, the layout is not recognised, or an annotation is broken.
    """
    path = Path(data)
    if not path.exists():
        raise DataError(f"--data {path}: no such file or folder; expected a VOC folder or a COCO JSON file")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise DataError(f"--data {path}: a file must be a COCO JSON (.json); give a VOC folder otherwise")
        return _load_coco(path, images=Path(images) if images else path.parent,
                          val_path=Path(val_data) if val_data else None)
    root = _find_voc_root(path)
    return _load_voc(root, name=path.name)


# ---------------------------------------------------------------- VOC

def _find_voc_root(path: Path) -> Path:
    """The folder that holds the annotation folder: ``path`` itself or a single child (``bccd/BCCD``)."""
    if _annotation_dir(path) is not None:
        return path
    children = [c for c in sorted(path.iterdir()) if c.is_dir() and _annotation_dir(c) is not None]
    if len(children) == 1:
        return children[0]
    raise DataError(f"--data {path}: no 'Annotations/' or 'annotations/' folder of VOC XML files found "
                    "(here or one level below); expected a VOC folder or a COCO JSON file")


def _annotation_dir(root: Path) -> Path | None:
    for name in ("Annotations", "annotations"):
        if (root / name).is_dir() and any((root / name).glob("*.xml")):
            return root / name
    return None


def _image_dir(root: Path) -> Path:
    for name in ("JPEGImages", "images", "Images"):
        if (root / name).is_dir():
            return root / name
    raise DataError(f"--data {root}: no 'JPEGImages/' or 'images/' folder next to the annotations")


def _load_voc(root: Path, *, name: str) -> DetectionDataset:
    ann_dir = _annotation_dir(root)
    assert ann_dir is not None
    img_dir = _image_dir(root)
    raw = {}
    for xml_path in sorted(ann_dir.glob("*.xml")):
        image = _read_voc_xml(xml_path, img_dir)
        raw[image.key] = image
    train_keys, val_keys, val_split = _voc_split(root, sorted(raw))
    missing = [k for k in train_keys + val_keys if k not in raw]
    if missing:
        raise DataError(f"{root}: split lists image '{missing[0]}' but there is no {ann_dir.name}/{missing[0]}.xml")
    return _build(name, [raw[k] for k in train_keys], [raw[k] for k in val_keys], val_split=val_split)


def _read_voc_xml(xml_path: Path, img_dir: Path) -> _RawImage:
    try:
        tree = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{xml_path}: not valid XML ({e})") from e
    filename = tree.findtext("filename") or xml_path.stem + ".jpg"
    path = img_dir / Path(filename).name
    if not path.exists():
        matches = [p for p in (img_dir / (xml_path.stem + s) for s in IMAGE_SUFFIXES) if p.exists()]
        if not matches:
            raise DataError(f"{xml_path}: image '{filename}' not found in {img_dir}")
        path = matches[0]
    try:
        width = int(float(tree.findtext("size/width") or 0))
        height = int(float(tree.findtext("size/height") or 0))
        objects = []
        for obj in tree.iter("object"):
            box = obj.find("bndbox")
            if box is None:
                raise ValueError("object without <bndbox>")
            coords = tuple(float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
            # VOC pixel indices are 1-based and inclusive; (x - 1) gives the COCO-style continuous box.
            x1, y1, x2, y2 = coords[0] - 1.0, coords[1] - 1.0, coords[2], coords[3]
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            objects.append(_RawObject((obj.findtext("name") or "").strip(), (x1, y1, x2, y2), difficult))
    except ValueError as e:
        raise DataError(f"{xml_path}: broken <size> or <bndbox> ({e}); expected numbers") from e
    if width <= 0 or height <= 0:
        width, height = _image_size(path)
    return _RawImage(xml_path.stem, path, width, height, tuple(objects))


def _voc_split(root: Path, keys: list[str]) -> tuple[list[str], list[str], str]:
    sets = root / "ImageSets" / "Main"
    if sets.is_dir():
        lists = {p.stem: _read_list(p) for p in sets.glob("*.txt") if p.stem in ("train", "val", "test", "trainval")}
        if "test" in lists:
            train = lists.get("trainval") or sorted(set(lists.get("train", [])) | set(lists.get("val", [])))
            return list(train), lists["test"], "test"
        if "train" in lists and "val" in lists:
            return lists["train"], lists["val"], "val"
    csv_dir = root / "data"
    if (csv_dir / "train_labels.csv").exists() and (csv_dir / "test_labels.csv").exists():
        train = _csv_keys(csv_dir / "train_labels.csv")
        test = _csv_keys(csv_dir / "test_labels.csv")
        return train, test, "test"
    train, val = holdout_split(keys, fraction=HOLDOUT_FRACTION, seed=HOLDOUT_SEED)
    return train, val, f"holdout{HOLDOUT_FRACTION:g}"


def _read_list(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _csv_keys(path: Path) -> list[str]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "filename" not in reader.fieldnames:
            raise DataError(f"{path}: expected a 'filename' column")
        return sorted({Path(row["filename"]).stem for row in reader})


# ---------------------------------------------------------------- COCO

def _load_coco(path: Path, *, images: Path, val_path: Path | None) -> DetectionDataset:
    categories, train_raw = _read_coco_json(path, images)
    if val_path is not None:
        val_categories, val_raw = _read_coco_json(val_path, images)
        if val_categories != categories:
            raise DataError(f"--val-data {val_path}: categories differ from {path}; expected the same list")
        train_imgs, val_imgs, val_split = train_raw, val_raw, val_path.name
    else:
        keys = sorted(r.key for r in train_raw)
        by_key = {r.key: r for r in train_raw}
        train_keys, val_keys = holdout_split(keys, fraction=HOLDOUT_FRACTION, seed=HOLDOUT_SEED)
        train_imgs, val_imgs = [by_key[k] for k in train_keys], [by_key[k] for k in val_keys]
        val_split = f"holdout{HOLDOUT_FRACTION:g}"
    return _build(path.stem, train_imgs, val_imgs, val_split=val_split, classes=categories)


def _read_coco_json(path: Path, images: Path) -> tuple[tuple[str, ...], list[_RawImage]]:
    try:
        doc = json.loads(path.read_text())
        cats = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        objects: dict[int, list[_RawObject]] = {}
        for a in doc.get("annotations", []):
            x, y, w, h = (float(v) for v in a["bbox"])
            obj = _RawObject(cats[int(a["category_id"])], (x, y, x + w, y + h), bool(a.get("iscrowd", 0)))
            objects.setdefault(int(a["image_id"]), []).append(obj)
        raw = []
        for im in doc["images"]:
            img_path = images / im["file_name"]
            if not img_path.exists():
                raise DataError(f"{path}: image '{im['file_name']}' not found in --images {images}")
            raw.append(_RawImage(str(im["file_name"]), img_path, int(im["width"]), int(im["height"]),
                                 tuple(objects.get(int(im["id"]), []))))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read COCO JSON ({e})") from e
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not a COCO detection JSON (bad or missing key {e}); expected "
                        "'images', 'annotations' with 'bbox' [x, y, w, h], and 'categories'") from e
    names = tuple(cats[k] for k in sorted(cats))
    return names, raw


# ---------------------------------------------------------------- shared

def holdout_split(keys: list[str], *, fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded train / hold-out split of sorted keys (at least one image each side when possible)."""
    keys = sorted(keys)
    order = np.random.default_rng(seed).permutation(len(keys))
    n_val = min(max(1, round(fraction * len(keys))), max(len(keys) - 1, 0))
    val = sorted(keys[i] for i in order[:n_val])
    val_set = set(val)
    return [k for k in keys if k not in val_set], val


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def _build(name: str, train: list[_RawImage], val: list[_RawImage], *, val_split: str,
           classes: tuple[str, ...] | None = None) -> DetectionDataset:
    if not train or not val:
        raise DataError(f"data set '{name}': {len(train)} training and {len(val)} evaluation images; "
                        "expected at least one of each")
    if classes is None:
        classes = tuple(sorted({o.name for im in train + val for o in im.objects}))
    index = {c: i for i, c in enumerate(classes)}
    all_keys = sorted({im.key for im in train + val})
    ids = {k: i + 1 for i, k in enumerate(all_keys)}  # COCO ids start at 1

    def convert(im: _RawImage) -> DetectionSample:
        boxes, labels, ignore = [], [], []
        for o in im.objects:
            x1, y1 = max(0.0, o.box[0]), max(0.0, o.box[1])
            x2, y2 = min(float(im.width), o.box[2]), min(float(im.height), o.box[3])
            if not (x2 > x1 and y2 > y1):
                continue  # degenerate after clipping: torchvision refuses zero-area boxes
            boxes.append((x1, y1, x2, y2))
            labels.append(index[o.name])
            ignore.append(o.ignore)
        return DetectionSample(ids[im.key], im.path, im.width, im.height, tuple(boxes), tuple(labels), tuple(ignore))

    return DetectionDataset(name, classes, tuple(convert(im) for im in train), tuple(convert(im) for im in val),
                            val_split)
