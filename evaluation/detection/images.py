"""Torch data set over :class:`~evaluation.detection.data.DetectionSample` records.

Images are decoded once (:func:`~evaluation.detection.data.read_image`, the project's checked decoding),
shrunk so that the longer side is ``img_size`` and kept in memory (the detection sets here are a few
hundred images; decoding 2000-px JPEGs every step would dominate a CPU run). Boxes are scaled with the
image; :func:`collate` keeps the scale so predictions can be mapped back to original pixels for the evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from evaluation.detection.data import DetectionSample, read_image

Target = dict[str, torch.Tensor]


class DetectionImages(Dataset):
    """``(image, target)`` pairs for torchvision detectors.

    ``image`` is ``(3, h, w)`` float in ``[0, 1]`` (the detector normalises); ``target`` has
    ``boxes`` ``(n, 4)`` xyxy in resized pixels, ``labels`` ``(n,)`` int64 with 0 = background (so
    class ``k`` of the data set is label ``k + 1``), ``image_id`` and ``scale`` (resized / original).

    Args:
        samples: Records to serve.
        img_size: Longer image side after resizing.
        train: Random horizontal flips, and ``ignore`` boxes are dropped from the targets.
        seed: Seed of the flip generator.
    """

    def __init__(self, samples: Sequence[DetectionSample], *, img_size: int, train: bool, seed: int = 0) -> None:
        self.samples = list(samples)
        self.img_size = img_size
        self.train = train
        self.rng = np.random.default_rng(seed)
        self._cache: dict[int, tuple[torch.Tensor, float]] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, i: int) -> tuple[torch.Tensor, float]:
        if i not in self._cache:
            s = self.samples[i]
            im = read_image(s.path)
            scale = self.img_size / max(im.size)
            size = (max(1, round(im.size[0] * scale)), max(1, round(im.size[1] * scale)))
            arr = np.asarray(im.resize(size, Image.BILINEAR), dtype=np.uint8).copy()
            # Boxes were written against the annotated size, which may differ from the file's.
            self._cache[i] = (torch.from_numpy(arr).permute(2, 0, 1), size[0] / s.width)
        return self._cache[i]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        s = self.samples[i]
        img_u8, scale = self._load(i)
        img = img_u8.float().div_(255.0)
        boxes = torch.tensor(s.boxes, dtype=torch.float32).reshape(-1, 4) * scale
        labels = torch.tensor(s.labels, dtype=torch.int64) + 1
        if self.train:
            keep = ~torch.tensor(s.ignore, dtype=torch.bool) if s.ignore else torch.ones(len(labels), dtype=torch.bool)
            boxes, labels = boxes[keep], labels[keep]
            if self.rng.random() < 0.5:
                img = img.flip(-1)
                w = img.shape[-1]
                boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        target = {"boxes": boxes, "labels": labels, "image_id": torch.tensor(s.image_id),
                  "scale": torch.tensor(scale)}
        return img, target


def collate(batch: list[tuple[torch.Tensor, Target]]) -> tuple[list[torch.Tensor], list[Target]]:
    """Lists of images and targets (detectors take variable-size images)."""
    images, targets = zip(*batch)
    return list(images), list(targets)
