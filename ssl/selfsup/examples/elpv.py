"""The embedded example: ELPV solar-cell electroluminescence images (Buerhop-Lutz et al. 2018;
Deitsch et al. 2019), shipped by the ``elpv-dataset`` package (CC BY-NC-SA 4.0).

2,624 grayscale 300x300 cells, each with a defect probability in {0, 1/3, 2/3, 1}: a fitting stand-in for
an industrial-inspection team with many images and few labels. :func:`prepare_elpv` lays it out as
folders the rest of the pipeline reads: ``OUT/unlabelled/`` (every image, for pretraining) and
``OUT/labelled/{train,val}/<class>/`` (a stratified, seeded split for the evaluation report). Files are
symlinked, not copied.
"""

from __future__ import annotations

import csv
import os
import random
from collections import defaultdict
from pathlib import Path

from selfsup.errors import DataError

CLASSES = {"0.0": "functional", "0.3333333333333333": "possibly_defective", "0.6666666666666666": "likely_defective",
           "1.0": "defective"}


def elpv_root() -> Path:
    try:
        import elpv_dataset
    except ImportError:
        raise DataError("the ELPV example needs the 'elpv-dataset' package: pip install elpv-dataset") from None
    return Path(elpv_dataset.__file__).parent / "data"


def read_labels(root: Path) -> list[tuple[Path, str]]:
    """(image path, class name) for every row of ``labels.csv`` (columns: path, probability, type)."""
    rows = []
    with open(root / "labels.csv") as f:
        for line in csv.reader(f, delimiter=" ", skipinitialspace=True):
            if not line:
                continue
            path, prob = line[0], line[1]
            rows.append((root / path, CLASSES.get(prob, f"p{float(prob):.2f}")))
    return rows


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def prepare_elpv(out_dir: str | Path, *, val_fraction: float = 0.25, seed: int = 0) -> dict[str, int]:
    """Write the unlabelled folder and a stratified train/val split of the labelled one; returns counts."""
    root, out = elpv_root(), Path(out_dir)
    rows = read_labels(root)
    by_class: dict[str, list[Path]] = defaultdict(list)
    for path, cls in rows:
        _link(path, out / "unlabelled" / path.name)
        by_class[cls].append(path)
    rng = random.Random(seed)
    counts = {"unlabelled": len(rows), "train": 0, "val": 0}
    for cls, paths in sorted(by_class.items()):
        paths = sorted(paths)
        rng.shuffle(paths)
        n_val = max(1, round(len(paths) * val_fraction))
        for i, path in enumerate(paths):
            split = "val" if i < n_val else "train"
            _link(path, out / "labelled" / split / cls / path.name)
            counts[split] += 1
    return counts
