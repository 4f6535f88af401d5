"""Multi-crop views: one PIL image -> global and local augmented crops as normalised tensors.

Implements the DINO multi-crop augmentation (Caron et al., 2021, "Emerging Properties in
Self-Supervised Vision Transformers", https://arxiv.org/abs/2104.14294: "two global views at
resolution 224^2 covering a large (for example greater than 50%) area of the original image, and
several local views of resolution 96^2 covering only small areas") and, with ``n_local=0`` and the
BYOL-style asymmetric blur/solarize, the two-view augmentation of MoCo v3 / SimCLR / MoBY.

The ops are the ones of lightly's ``DINOTransform`` (random resized crop, horizontal flip, colour
jitter, random grayscale, lightly's ``GaussianBlur`` and ``RandomSolarization``, normalisation),
with the same parameter distributions, arranged to be cheaper per CPU core:

- the crop box is resized in one Pillow call (crop and resize fused, antialiased);
- the Gaussian blur (radius = sigma, as in DINO and lightly's ``GaussianBlur``) runs at the lower of
  the source-box and output resolutions: when a crop is upsampled, the box is blurred before the
  resize with sigma scaled to box pixels, which is the same blur for a fraction of the pixels;
- brightness, contrast, saturation, hue and grayscale are all affine colour maps, so they are
  composed into one 3x4 matrix (in torchvision's random order) and applied in one
  ``Image.convert("RGB", matrix)`` on the small crop. Differences to torchvision's ``ColorJitter``:
  hue is a rotation in YIQ space instead of a shift in HSV, and values are clipped once at the end
  instead of after every op;
- to-tensor and normalisation are one multiply-add.

All randomness comes from the global torch and numpy generators, which :class:`ShardStream` seeds
per sample from ``(seed, epoch, key)``.

Shape legend: c = 3 channels, s = crop size. Each view is a float tensor (c, s, s).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from lightly.transforms.solarize import RandomSolarization
from PIL import Image, ImageFilter
from torch import Tensor
from torchvision.transforms import RandomResizedCrop

from selfsup.data.decode import to_rgb

_GRAY = np.array([0.299, 0.587, 0.114])  # ITU-R 601-2 luma, as PIL's convert("L")
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


class ViewTransform:
    """One augmented view: crop -> flip -> colour jitter -> grayscale -> blur -> solarize -> normalise.

    Args:
        size: output side in pixels.
        scale: range of the crop area as a fraction of the image area.
        ratio: range of the crop aspect ratio.
        hflip_prob, vflip_prob: probabilities of a horizontal and of a vertical flip.
        rot90_prob: probability of a 90-degree turn (lightly's ``RandomRotate``).
        cj_prob: probability of colour jitter.
        brightness, contrast, saturation: jitter factors are drawn from ``[1 - x, 1 + x]``.
        hue: hue rotation drawn from ``[-hue, hue]`` turns.
        gray_prob: probability of converting to grayscale (kept as 3 channels).
        blur_prob: probability of a Gaussian blur with ``sigma`` drawn from ``blur_sigma``.
        solarize_prob: probability of solarization (invert pixels above 128).
        mean, std: per-channel normalisation in [0, 1] units (``views.mean``, ``views.std``).

    The values are checked once, where the config is loaded (:func:`selfsup.config.validate`).
    """

    def __init__(
        self,
        *,
        size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        hflip_prob: float = 0.5,
        vflip_prob: float = 0.0,
        rot90_prob: float = 0.0,
        cj_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        gray_prob: float = 0.2,
        blur_prob: float = 0.5,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        solarize_prob: float = 0.0,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.hflip_prob, self.vflip_prob, self.rot90_prob = hflip_prob, vflip_prob, rot90_prob
        self.cj_prob = cj_prob
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.gray_prob = gray_prob
        self.blur_prob = blur_prob
        self.blur_sigma = (float(blur_sigma[0]), float(blur_sigma[1]))
        self.solarize = RandomSolarization(prob=solarize_prob)
        # (x / 255 - mean) / std  ==  x * mul + add, one fused op per view.
        self._mul = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(3, 1, 1)
        self._add = (-torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(3, 1, 1)

    def _color_matrix(self, crop: Image.Image) -> np.ndarray | None:
        """The composed affine colour map (3x4) of jitter + grayscale, or None when it is identity."""
        a, t = np.eye(3), np.zeros(3)
        changed = False
        if self.cj_prob > 0 and float(torch.rand(())) < self.cj_prob:
            changed = True
            mu: np.ndarray | None = None
            for op in torch.randperm(4).tolist():  # torchvision ColorJitter applies the 4 ops in random order
                if op == 0 and self.brightness > 0:
                    f = _uniform(max(0.0, 1 - self.brightness), 1 + self.brightness)
                    a, t = f * a, f * t
                elif op == 1 and self.contrast > 0:
                    f = _uniform(max(0.0, 1 - self.contrast), 1 + self.contrast)
                    if mu is None:  # per-channel mean; a 1x1 box resize is the cheapest exact-enough way
                        mu = np.array(crop.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))[:3], dtype=float)
                    gray_mean = float(_GRAY @ (a @ mu + t))  # mean gray level of the image so far
                    a, t = f * a, f * t + (1 - f) * gray_mean
                elif op == 2 and self.saturation > 0:
                    f = _uniform(max(0.0, 1 - self.saturation), 1 + self.saturation)
                    m = f * np.eye(3) + (1 - f) * np.outer(np.ones(3), _GRAY)
                    a, t = m @ a, m @ t
                elif op == 3 and self.hue > 0:
                    theta = 2 * math.pi * _uniform(-self.hue, self.hue)
                    c, s = math.cos(theta), math.sin(theta)
                    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
                    m = _YIQ2RGB @ rot @ _RGB2YIQ
                    a, t = m @ a, m @ t
        if self.gray_prob > 0 and float(torch.rand(())) < self.gray_prob:
            changed = True
            m = np.outer(np.ones(3), _GRAY)
            a, t = m @ a, m @ t
        if not changed:
            return None
        return np.concatenate([a, t[:, None]], axis=1)

    def __call__(self, img: Image.Image) -> Tensor:
        """Return one view (c, s, s) of an image (converted to RGB if needed)."""
        img = to_rgb(img)
        top, left, h, w = RandomResizedCrop.get_params(img, scale=list(self.scale), ratio=list(self.ratio))
        box = (left, top, left + w, top + h)
        sigma = None
        if self.blur_prob > 0 and float(torch.rand(())) < self.blur_prob:
            sigma = _uniform(*self.blur_sigma)
        if sigma is not None and max(w, h) < self.size:  # upsampling: blur the smaller source box
            region = img.crop(box).filter(ImageFilter.GaussianBlur(radius=sigma * max(w, h) / self.size))
            crop = region.resize((self.size, self.size), Image.Resampling.BILINEAR)
            sigma = None
        else:
            crop = img.resize((self.size, self.size), Image.Resampling.BILINEAR, box=box)
        if self.hflip_prob > 0 and float(torch.rand(())) < self.hflip_prob:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        # draws only where enabled, so the default views keep their random sequence
        if self.vflip_prob > 0 and float(torch.rand(())) < self.vflip_prob:
            crop = crop.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        if self.rot90_prob > 0 and float(torch.rand(())) < self.rot90_prob:
            crop = crop.transpose(Image.Transpose.ROTATE_90)
        matrix = self._color_matrix(crop)
        if matrix is not None:
            crop = crop.convert("RGB", matrix=tuple(matrix.ravel().tolist()))
        if sigma is not None:
            crop = crop.filter(ImageFilter.GaussianBlur(radius=sigma))
        crop = self.solarize(crop)
        x = torch.from_numpy(np.array(crop, dtype=np.uint8)).permute(2, 0, 1).float()  # (c, s, s)
        return x.mul_(self._mul).add_(self._add)


class MultiCropTransform:
    """DINO multi-crop: ``n_global`` global views then ``n_local`` local views of one image.

    The crop sizes, scales, view counts, blur/solarization probabilities and mean/std are the ``views.*``
    config keys (defaults in :class:`selfsup.config.ViewsConfig`, DINO's ``main_dino.py``), and so are the flips,
    the 90-degree turn, the colour-jitter probability and strength (DINO's (0.4, 0.4, 0.2, 0.1) at strength 1) and
    the grayscale probability.

    Example:
        >>> from selfsup.build import multicrop_transform
        >>> from selfsup.config import ViewsConfig
        >>> views = multicrop_transform(ViewsConfig())(image)  # doctest: +SKIP
        >>> [tuple(v.shape) for v in views[:3]]  # doctest: +SKIP
        [(3, 224, 224), (3, 224, 224), (3, 96, 96)]
    """

    def __init__(
        self,
        *,
        global_crop_size: int,
        global_crop_scale: tuple[float, float],
        n_global: int,
        local_crop_size: int,
        local_crop_scale: tuple[float, float],
        n_local: int,
        mean: Sequence[float],
        std: Sequence[float],
        blur_probs: tuple[float, float, float],
        solarize_prob: float,
        hflip_prob: float = 0.5,
        vflip_prob: float = 0.0,
        rot90_prob: float = 0.0,
        cj_prob: float = 0.8,
        cj_strength: float = 1.0,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        gray_prob: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
    ) -> None:
        """Args:
        global_crop_size, global_crop_scale, n_global: global views (teacher and student).
        local_crop_size, local_crop_scale, n_local: local views (student only); ``n_local=0`` for
            two-view methods.
        mean, std: normalisation.
        hflip_prob, vflip_prob, rot90_prob, cj_prob, gray_prob: probabilities of the flips, the 90-degree turn,
            colour jitter and grayscale (``views.*``).
        cj_strength: multiplies brightness, contrast, saturation and hue (SimCLR's "strength").
        brightness, contrast, saturation, hue: colour-jitter ranges.
        blur_probs: blur probability of (first global view, other global views, local views).
        blur_sigma: range of the blur sigma in pixels.
        solarize_prob: solarization probability of the global views after the first one.
        """
        common = dict(
            hflip_prob=hflip_prob, vflip_prob=vflip_prob, rot90_prob=rot90_prob, cj_prob=cj_prob,
            brightness=brightness * cj_strength, contrast=contrast * cj_strength,
            saturation=saturation * cj_strength, hue=hue * cj_strength,
            gray_prob=gray_prob, blur_sigma=blur_sigma, mean=mean, std=std,
        )
        first = ViewTransform(size=global_crop_size, scale=global_crop_scale, blur_prob=blur_probs[0], **common)
        other = ViewTransform(size=global_crop_size, scale=global_crop_scale, blur_prob=blur_probs[1],
                              solarize_prob=solarize_prob, **common)
        self.global_views = [first] + [other] * (n_global - 1)
        self.local_views: list[ViewTransform] = []
        if n_local:
            local = ViewTransform(size=local_crop_size, scale=local_crop_scale, blur_prob=blur_probs[2], **common)
            self.local_views = [local] * n_local
        self.global_crop_size = global_crop_size
        self.local_crop_size = local_crop_size

    @property
    def draft_size(self) -> tuple[int, int]:
        """A JPEG draft size for ``decode_rgb`` that keeps global crops at full detail."""
        return (self.global_crop_size, self.global_crop_size)

    def __call__(self, img: Image.Image) -> list[Tensor]:
        """Return the views of ``img``: global views first, each (c, s, s)."""
        img = to_rgb(img)
        return [view(img) for view in self.global_views + self.local_views]

