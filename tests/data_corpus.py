"""Generate a corpus of awkward and broken image files, with the outcome each one must have.

Used by ``test_decode.py`` and ``test_shards.py``. Everything is generated in a temp dir; nothing
is committed. Expected outcomes are ``"ok"`` or the ``BadSample`` reason of
:mod:`selfsup.data.decode`; they assume ``PIL.Image.MAX_IMAGE_PIXELS`` is lowered to
:data:`BOMB_LIMIT` while decoding (monkeypatch it), so the "bomb" can be a small file.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.data.decode import REASON_EMPTY, REASON_NOT_IMAGE, REASON_TOO_LARGE, REASON_TRUNCATED

OK = "ok"
BOMB_LIMIT = 10_000  # pixels; every "ok" image below is smaller, the bomb is 4x bigger
EXIF_NAME = "exif_rot6.jpg"  # stored 40x20 with orientation 6 (rotate 90 deg clockwise): decodes to 20x40


def _noise(w: int, h: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "LA": 2, "L": 1, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, size=(h, w, channels), dtype=np.uint8)
    return Image.fromarray(arr[..., 0] if channels == 1 else arr, mode=mode)


def _encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_bad_corpus(directory: str | os.PathLike[str]) -> dict[str, str]:
    """Write the corpus into ``directory`` and return ``{file name: expected outcome}``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, tuple[bytes, str]] = {}

    jpeg = _encode(_noise(64, 48, seed=1), "JPEG", quality=90)
    files["good.jpg"] = (jpeg, OK)
    files["truncated.jpg"] = (jpeg[: len(jpeg) // 2], REASON_TRUNCATED)
    files["zero_bytes.jpg"] = (b"", REASON_EMPTY)
    files["random_bytes.jpg"] = (random.Random(0).randbytes(2048), REASON_NOT_IMAGE)
    files["text_file.jpg"] = (b"this is not an image\n" * 10, REASON_NOT_IMAGE)

    gray16 = Image.fromarray(np.linspace(0, 65535, 32 * 32, dtype=np.uint16).reshape(32, 32))
    files["gray16.png"] = (_encode(gray16, "PNG"), OK)
    files["cmyk.jpg"] = (_encode(_noise(32, 24, "CMYK", seed=2), "JPEG"), OK)
    palette = _noise(30, 20, seed=3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    files["palette.png"] = (_encode(palette, "PNG"), OK)
    palette_t = palette.copy()
    palette_t.info["transparency"] = 0
    files["palette_transparent.png"] = (_encode(palette_t, "PNG", transparency=0), OK)
    files["rgba.png"] = (_encode(_noise(24, 24, "RGBA", seed=4), "PNG"), OK)
    files["la.png"] = (_encode(_noise(24, 24, "LA", seed=5), "PNG"), OK)
    files["gray.jpg"] = (_encode(_noise(24, 24, "L", seed=6), "JPEG"), OK)
    files["one_pixel.png"] = (_encode(_noise(1, 1, seed=7), "PNG"), OK)
    files["smaller_than_crop.jpg"] = (_encode(_noise(7, 5, seed=8), "JPEG"), OK)
    files["webp.webp"] = (_encode(_noise(20, 20, seed=9), "WEBP"), OK)
    files["bomb.png"] = (_encode(Image.new("L", (200, 200)), "PNG"), REASON_TOO_LARGE)

    # EXIF orientation 6: the camera was turned; the pixels are stored 40 wide and 20 high.
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue, right half red
    files[EXIF_NAME] = (_encode(stored, "JPEG", exif=exif.tobytes(), quality=95), OK)

    for name, (data, _) in files.items():
        (d / name).write_bytes(data)
    return {name: outcome for name, (_, outcome) in files.items()}
