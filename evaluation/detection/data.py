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

Broken annotations do not become boxes: an image with a box whose coordinate is missing, not a number
or not finite, a COCO image whose id or ``file_name`` is listed twice, or whose ``file_name`` leaves the
image folder (absolute, or with ``..``; such a path is never opened) is skipped and counted by reason
(:attr:`DetectionDataset.skipped`, and a warning). More than :data:`MAX_BAD_FRACTION` of a file's images
skipped, or a split without a single box, is a :class:`~selfsup.errors.DataError`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from evaluation.loading.fractions import nested_subset
from selfsup.data.decode import IMAGE_EXTENSIONS, BadSample, decode_rgb
from selfsup.errors import DataError

HOLDOUT_FRACTION = 0.2
HOLDOUT_SEED = 0
MAX_BAD_FRACTION = 0.1  # more images with broken annotations than this means the file is misread, not noisy

logger = logging.getLogger(__name__)


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
    skipped: dict[str, int] = field(default_factory=dict)  # images left out, by reason (broken annotations)


class _BadAnnotation(Exception):
    """An image whose annotation cannot be trusted; ``reason`` is the counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    bad: dict[str, str] = {}
    xml_paths = sorted(ann_dir.glob("*.xml"))
    for xml_path in xml_paths:
        try:
            image = _read_voc_xml(xml_path, img_dir)
        except _BadAnnotation as e:
            bad[xml_path.stem] = e.reason
            continue
        raw[image.key] = image
    skipped = _check_skipped(root, list(bad.items()), len(xml_paths))
    train_keys, val_keys, val_split = _voc_split(root, sorted(raw))
    train_keys, val_keys = [k for k in train_keys if k not in bad], [k for k in val_keys if k not in bad]
    missing = [k for k in train_keys + val_keys if k not in raw]
    if missing:
        raise DataError(f"{root}: split lists image '{missing[0]}' but there is no {ann_dir.name}/{missing[0]}.xml")
    return _build(name, [raw[k] for k in train_keys], [raw[k] for k in val_keys], val_split=val_split,
                  skipped=skipped)


def _read_voc_xml(xml_path: Path, img_dir: Path) -> _RawImage:
    try:
        tree = ET.parse(xml_path).getroot()
    except ET.ParseError as e:
        raise DataError(f"{xml_path}: not valid XML ({e})") from e
    filename = tree.findtext("filename") or xml_path.stem + ".jpg"
    path = img_dir / Path(filename).name  # the base name only: a '../' in <filename> cannot leave img_dir
    if not path.is_file():
        matches = [p for p in (img_dir / (xml_path.stem + s) for s in IMAGE_EXTENSIONS) if p.is_file()]
        if not matches:
            raise DataError(f"{xml_path}: image '{filename}' not found in {img_dir}")
        path = matches[0]
    try:
        width = int(float(tree.findtext("size/width") or 0))
        height = int(float(tree.findtext("size/height") or 0))
        objects = []
        for obj in tree.iter("object"):
            coords = _voc_box(obj.find("bndbox"))
            # VOC pixel indices are 1-based and inclusive; (x - 1) gives the COCO-style continuous box.
            x1, y1, x2, y2 = coords[0] - 1.0, coords[1] - 1.0, coords[2], coords[3]
            difficult = (obj.findtext("difficult") or "0").strip() == "1"
            objects.append(_RawObject((obj.findtext("name") or "").strip(), (x1, y1, x2, y2), difficult))
    except ValueError as e:
        raise DataError(f"{xml_path}: broken <size> or <bndbox> ({e}); expected numbers") from e
    if width <= 0 or height <= 0:
        width, height = read_image(path).size
    return _RawImage(xml_path.stem, path, width, height, tuple(objects))


def _voc_box(box: ET.Element | None) -> tuple[float, float, float, float]:
    """The four finite ``<bndbox>`` numbers; a missing one would otherwise clip to a full-image box."""
    texts = [None if box is None else box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
    if any(t is None or not t.strip() for t in texts):
        raise _BadAnnotation("box_missing_coordinate")
    try:
        x1, y1, x2, y2 = (float(t) for t in texts)  # type: ignore[arg-type]
    except ValueError:
        raise _BadAnnotation("box_not_a_number") from None
    if not all(math.isfinite(c) for c in (x1, y1, x2, y2)):
        raise _BadAnnotation("box_not_finite")
    return x1, y1, x2, y2


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
    return holdout_keys(keys)


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
    categories, train_raw, skipped = _read_coco_json(path, images)
    if val_path is not None:
        val_categories, val_raw, val_skipped = _read_coco_json(val_path, images)
        skipped = dict(Counter(skipped) + Counter(val_skipped))
        if val_categories != categories:
            raise DataError(f"--val-data {val_path}: categories differ from {path}; expected the same list")
        train_imgs, val_imgs, val_split = train_raw, val_raw, val_path.name
    else:
        by_key = {r.key: r for r in train_raw}
        train_keys, val_keys, val_split = holdout_keys(list(by_key))
        train_imgs, val_imgs = [by_key[k] for k in train_keys], [by_key[k] for k in val_keys]
    return _build(path.stem, train_imgs, val_imgs, val_split=val_split, classes=categories, skipped=skipped)


def _read_coco_json(path: Path, images: Path) -> tuple[tuple[str, ...], list[_RawImage], dict[str, int]]:
    try:
        doc = json.loads(path.read_text())
        cats = {int(c["id"]): str(c["name"]) for c in doc["categories"]}
        objects: dict[int, list[_RawObject]] = {}
        bad: dict[int, str] = {}  # image id -> why its annotations cannot be trusted
        for a in doc.get("annotations", []):
            image_id = int(a["image_id"])
            try:
                x, y, w, h = (float(v) for v in a["bbox"])
            except (TypeError, ValueError):
                bad.setdefault(image_id, "box_not_4_numbers")
                continue
            if not all(math.isfinite(v) for v in (x, y, w, h)):  # json.loads accepts NaN and Infinity
                bad.setdefault(image_id, "box_not_finite")
                continue
            obj = _RawObject(cats[int(a["category_id"])], (x, y, x + w, y + h), bool(a.get("iscrowd", 0)))
            objects.setdefault(image_id, []).append(obj)
        ids = Counter(int(im["id"]) for im in doc["images"])
        names = Counter(str(im["file_name"]) for im in doc["images"])
        raw = []
        reasons: list[tuple[str, str]] = []
        for im in doc["images"]:
            image_id, file_name = int(im["id"]), str(im["file_name"])
            reason = ("path_outside_image_root" if not _inside(file_name) else
                      "duplicate_image_id" if ids[image_id] > 1 else
                      "duplicate_file_name" if names[file_name] > 1 else bad.get(image_id))
            if reason is not None:
                reasons.append((f"{file_name!r} (id {image_id})", reason))
                continue
            img_path = images / file_name
            if not img_path.exists():
                raise DataError(f"{path}: image '{file_name}' not found in --images {images}")
            raw.append(_RawImage(file_name, img_path, int(im["width"]), int(im["height"]),
                                 tuple(objects.get(image_id, []))))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read COCO JSON ({e})") from e
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not a COCO detection JSON (bad or missing key {e}); expected "
                        "'images', 'annotations' with 'bbox' [x, y, w, h], and 'categories'") from e
    names_sorted = tuple(cats[k] for k in sorted(cats))
    return names_sorted, raw, _check_skipped(path, reasons, len(doc["images"]))


def _inside(file_name: str) -> bool:
    """``file_name`` names a file below the image folder: relative, no ``..`` (checked before any file access)."""
    parts = PurePosixPath(file_name.replace("\\", "/")).parts
    return bool(parts) and not file_name.startswith(("/", "\\")) and ".." not in parts and ":" not in parts[0]


def _check_skipped(source: Path, bad: list[tuple[str, str]], total: int) -> dict[str, int]:
    """Count the skipped images by reason, warn, and refuse more than :data:`MAX_BAD_FRACTION` of ``total``."""
    if not bad:
        return {}
    counts = dict(sorted(Counter(why for _, why in bad).items()))
    shown = ", ".join(f"{k}={v}" for k, v in counts.items())
    first, why = bad[0]
    if len(bad) > MAX_BAD_FRACTION * total:
        raise DataError(f"{source}: {len(bad)} of {total} images have broken annotations ({shown}), e.g. {first}: "
                        f"{why}; more than {MAX_BAD_FRACTION:.0%} is refused: fix the annotations")
    logger.warning("%s: skipped %d of %d images with broken annotations (%s), e.g. %s: %s",
                   source, len(bad), total, shown, first, why)
    return counts


# ---------------------------------------------------------------- shared

def holdout_keys(keys: list[str]) -> tuple[list[str], list[str], str]:
    """Train keys, hold-out keys and the split's name: the label-fraction sampler's seeded subset of
    :data:`HOLDOUT_FRACTION` of the images, so both splits are drawn the same way."""
    val = set(nested_subset(keys, fraction=HOLDOUT_FRACTION, seed=HOLDOUT_SEED))
    return sorted(k for k in keys if k not in val), sorted(val), f"holdout{HOLDOUT_FRACTION:g}"


def read_image(path: Path) -> Image.Image:
    """The RGB image at ``path``, decoded like every image of the project (:func:`selfsup.data.decode.decode_rgb`:
    EXIF orientation applied, 16-bit / CMYK / palette converted, decompression bombs refused)."""
    try:
        return decode_rgb(path.read_bytes())
    except BadSample as e:
        raise DataError(f"{path}: cannot decode image ({e.reason}); expected a valid image") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read image ({e.strerror or e})") from None


def _build(name: str, train: list[_RawImage], val: list[_RawImage], *, val_split: str,
           classes: tuple[str, ...] | None = None, skipped: dict[str, int] | None = None) -> DetectionDataset:
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

    train_s, val_s = tuple(convert(im) for im in train), tuple(convert(im) for im in val)
    for split, samples in (("training", train_s), (val_split, val_s)):
        if not any(not ig for s in samples for ig in s.ignore):  # mAP over no boxes is 0, not a result
            raise DataError(f"data set '{name}': no boxes in its {len(samples)} {split} images (difficult / crowd "
                            "boxes aside); expected annotated objects: check the annotation files")
    return DetectionDataset(name, classes, train_s, val_s, val_split, dict(skipped or {}))
