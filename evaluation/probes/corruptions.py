"""The 15 common corruptions of Hendrycks & Dietterich, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (ICLR 2019, https://arxiv.org/abs/1903.12261), at severities 1-5.

They come from the ``imagecorruptions`` package (Michaelis et al., 2019), whose PyPI release (1.1.2) breaks on
current dependencies in three places; this module works around each without touching the package:

- it imports ``pkg_resources`` at import time, which recent setuptools no longer ships: a minimal stand-in that
  resolves ``resource_filename`` next to the module is registered for that one import, then removed (the
  ``frost`` corruption reads its frost pictures through it);
- ``glass_blur`` calls ``skimage.filters.gaussian(..., multichannel=True)``, removed in scikit-image 0.19:
  re-implemented below from the paper's definition (blur, locally shuffle pixels, blur again) with the same
  constants, using ``channel_axis``;
- ``fog`` uses ``np.float_``, removed in NumPy 2: re-implemented below (a diamond-square plasma fractal added
  to the image) with the same constants.

``impulse_noise`` is also called here rather than through the package, with the seed passed to scikit-image's
``random_noise`` (the package lets it draw from a fresh, unseeded generator, so results would not repeat).

Every other corruption is the package's own function, called through its public ``corrupt``. Randomness (noise,
frost crop, fog fractal, ...) comes from NumPy's global generator, seeded per image by :func:`apply_corruption`
and restored afterwards, so results do not depend on worker count or order.

Shapes: images are (H, W, 3) uint8 with H, W >= 32 (the package's minimum).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import os
import sys
import types
import warnings
import zlib
from collections.abc import Callable, Iterator
from functools import lru_cache

import numpy as np

from selfsup.errors import ConfigError

COMMON = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
          "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression")
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIDE = 32


def _resource_filename(package: str, name: str) -> str:
    """``pkg_resources.resource_filename`` for a module or package: the file ``name`` next to it."""
    module = sys.modules.get(package)
    if module is not None and getattr(module, "__file__", None):
        return os.path.join(os.path.dirname(module.__file__), name)
    return str(importlib.resources.files(package).joinpath(name))


@lru_cache(maxsize=1)
def imagecorruptions_module() -> types.ModuleType:
    """``imagecorruptions``, imported with a ``pkg_resources`` stand-in when setuptools no longer provides one."""
    if importlib.util.find_spec("imagecorruptions") is None:
        raise ConfigError("--robustness needs the imagecorruptions package; expected it installed "
                          "(pip install 'selfsup[viz]')")
    stub = None
    if "pkg_resources" not in sys.modules and importlib.util.find_spec("pkg_resources") is None:
        stub = types.ModuleType("pkg_resources")
        stub.resource_filename = _resource_filename  # type: ignore[attr-defined]
        sys.modules["pkg_resources"] = stub
    try:
        with warnings.catch_warnings():  # its scipy.ndimage.interpolation import is deprecated, not our concern
            warnings.simplefilter("ignore", DeprecationWarning)
            import imagecorruptions
    finally:
        if stub is not None and sys.modules.get("pkg_resources") is stub:
            del sys.modules["pkg_resources"]
    return imagecorruptions


def _gaussian(x: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.filters import gaussian

    return gaussian(x, sigma=sigma, channel_axis=-1)


def glass_blur(x: np.ndarray, severity: int) -> np.ndarray:
    """Glass blur: Gaussian blur, ``iterations`` passes of "swapping" each pixel with a random neighbour within
    ``max_delta``, Gaussian blur again (Hendrycks & Dietterich's constants; rewritten for scikit-image >= 0.19).

    As in the reference code, the tuple assignment of two NumPy views copies the neighbour into ``(h, w)`` rather
    than swapping the two; kept so that results stay comparable with ImageNet-C."""
    sigma, max_delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    x = np.uint8(_gaussian(np.asarray(x) / 255.0, sigma) * 255)
    height, width = x.shape[:2]
    for _ in range(iterations):
        for h in range(height - max_delta, max_delta, -1):
            for w in range(width - max_delta, max_delta, -1):
                dx, dy = np.random.randint(-max_delta, max_delta, size=(2,))
                hp, wp = h + dy, w + dx
                x[h, w], x[hp, wp] = x[hp, wp], x[h, w]
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255


def plasma_fractal(mapsize: int, wibbledecay: float) -> np.ndarray:
    """(mapsize, mapsize) heightmap in [0, 1] by the diamond-square algorithm (``mapsize`` a power of two), the
    fog texture of Hendrycks & Dietterich (rewritten: the package's copy uses ``np.float_``)."""
    maparray = np.zeros((mapsize, mapsize), dtype=np.float64)
    stepsize, wibble = mapsize, 100.0

    def wibbled_mean(array: np.ndarray) -> np.ndarray:
        return array / 4 + wibble * np.random.uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        half = stepsize // 2
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        square = corners + np.roll(corners, shift=-1, axis=0)
        square += np.roll(square, shift=-1, axis=1)
        maparray[half:mapsize:stepsize, half:mapsize:stepsize] = wibbled_mean(square)
        centres = maparray[half:mapsize:stepsize, half:mapsize:stepsize]
        corners = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        top = centres + np.roll(centres, 1, axis=0) + corners + np.roll(corners, -1, axis=1)
        maparray[0:mapsize:stepsize, half:mapsize:stepsize] = wibbled_mean(top)
        left = centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=0)
        maparray[half:mapsize:stepsize, 0:mapsize:stepsize] = wibbled_mean(left)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def fog(x: np.ndarray, severity: int) -> np.ndarray:
    """Fog: a plasma fractal added to the image, then rescaled (Hendrycks & Dietterich's constants)."""
    strength, decay = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    x = np.asarray(x) / 255.0
    height, width = x.shape[:2]
    mapsize = 1 << (max(height, width) - 1).bit_length()
    max_val = x.max()
    x = x + strength * plasma_fractal(mapsize, decay)[:height, :width][..., None]
    return np.clip(x * max_val / (max_val + strength), 0, 1) * 255


def impulse_noise(x: np.ndarray, severity: int) -> np.ndarray:
    """Salt-and-pepper noise (Hendrycks & Dietterich's amounts), seeded from NumPy's global generator."""
    from skimage.util import random_noise

    amount = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    seed = int(np.random.randint(0, 2**31 - 1))
    return np.clip(random_noise(np.asarray(x) / 255.0, mode="s&p", amount=amount, rng=seed), 0, 1) * 255


REWRITTEN: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {"glass_blur": glass_blur, "fog": fog,
                                                                      "impulse_noise": impulse_noise}


def check_names(names: list[str], severities: list[int]) -> None:
    """ConfigError naming the first unknown corruption or severity."""
    for n in names:
        if n not in COMMON:
            raise ConfigError(f"--corruptions: unknown corruption {n!r}; expected some of {', '.join(COMMON)}")
    for s in severities:
        if s not in SEVERITIES:
            raise ConfigError(f"--severities: {s}; expected integers in 1-5")


@contextlib.contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def apply_corruption(image: np.ndarray, name: str, severity: int, *, seed: int) -> np.ndarray:
    """``image`` (H, W, 3) uint8 -> the same shape, corrupted by ``name`` at ``severity``, seeded by ``seed``."""
    if image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise ConfigError(f"corruptions need images of at least {MIN_SIDE} px; got {image.shape[1]}x{image.shape[0]} "
                          "(raise --img-size)")
    with _seeded_numpy(zlib.crc32(f"{name}:{severity}:{seed}".encode())):
        if name in REWRITTEN:
            return np.uint8(REWRITTEN[name](image, severity))
        return imagecorruptions_module().corrupt(image, corruption_name=name, severity=severity)
