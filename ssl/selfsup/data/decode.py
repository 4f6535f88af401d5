"""Decode image bytes to an RGB PIL image, or say why not.

Scraped data holds every kind of broken file. ``decode_rgb`` turns the good ones into a plain
RGB image (EXIF orientation applied, grayscale / CMYK / palette / RGBA / LA / 16-bit converted)
and raises :class:`BadSample` with a short machine-readable reason for the rest, so the reader
can skip and count them instead of dying.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

# Reasons are stable strings: they are keys in the skip counters and the logs.
REASON_EMPTY = "empty"
REASON_NOT_IMAGE = "not_an_image"
REASON_TRUNCATED = "truncated"
REASON_TOO_LARGE = "decompression_bomb"
REASON_NO_IMAGE = "no_image_member"
REASON_DECODE = "decode_error"

# The one list of image types: the webdataset member keys an image may be stored under (``selfsup shard`` writes
# jpg/png/webp/gif/bmp/tiff/ppm), and the file extensions read from image folders.
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tiff", "tif", "ppm", "img")
IMAGE_EXTENSIONS = tuple(f".{k}" for k in IMAGE_KEYS if k != "img")


class BadSample(Exception):
    """A sample that cannot be used; ``reason`` is one of the ``REASON_*`` strings."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB. Alpha is dropped (transparent pixels keep their colour values)."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":
        # 16/32-bit grayscale: scale to 8 bits instead of clipping everything to white.
        img = img.convert("I").point(lambda v: v / 256.0).convert("L")
    if img.mode == "P":
        img = img.convert("RGBA")
    return img.convert("RGB")


def decode_rgb(data: bytes | None, *, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode ``data`` to an RGB image with EXIF rotation applied.

    Args:
        data: encoded image bytes (JPEG, PNG, WebP, ...).
        draft_size: if given, JPEGs are decoded at the smallest power-of-two reduction that is still
            at least this big (Pillow ``draft``), which is much faster for crops far smaller than the
            photo.

    Raises:
        BadSample: empty bytes, not an image, truncated, or over Pillow's decompression-bomb limit.
    """
    if not data:
        raise BadSample(REASON_EMPTY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if draft_size is not None and img.format == "JPEG":
                img.draft("RGB", draft_size)
            img.load()
            img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadSample(REASON_TOO_LARGE, str(e)) from None
    except UnidentifiedImageError as e:
        raise BadSample(REASON_NOT_IMAGE, str(e)) from None
    except OSError as e:  # Pillow raises OSError("image file is truncated ...") and friends
        reason = REASON_TRUNCATED if "truncat" in str(e).lower() else REASON_DECODE
        raise BadSample(reason, str(e)) from None
    except (SyntaxError, ValueError) as e:
        raise BadSample(REASON_DECODE, str(e)) from None
    return to_rgb(img)
