"""Image fingerprints that need no model: the file's or the pixels' SHA-256 and a 64-bit perceptual hash.

The SHA-256 of the encoded bytes finds byte-identical copies; the SHA-256 of the decoded pixels finds the same image
wherever it is stored (the report's data check, where images may come from a dataset without files). The DCT
perceptual hash (``imagehash.phash``: 32x32 grey, 2D DCT, signs of the 8x8 lowest frequencies against their median;
Zauner 2010) survives resizing, re-encoding and small crops, so a small Hamming distance between two hashes is the
pixels' vote that two images are copies of each other.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image


def file_sha256(blob: bytes) -> str:
    """Hex SHA-256 of an encoded image file."""
    return hashlib.sha256(blob).hexdigest()


def pixel_sha256(img: Image.Image) -> str:
    """Hex SHA-256 of the decoded pixels (mode, size and bytes): the same image in any lossless file format, from a
    folder, a Hugging Face dataset or a shard, has one hash."""
    h = hashlib.sha256(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def perceptual_hash(img: Image.Image) -> int:
    """64-bit DCT perceptual hash of an image, as a signed int64."""
    import imagehash

    bits = np.packbits(imagehash.phash(img).hash.reshape(-1))
    return int(np.frombuffer(bits.tobytes(), dtype=">i8")[0])


def hash_distance(a: np.ndarray | int, b: np.ndarray | int) -> np.ndarray:
    """Hamming distance (0-64) between 64-bit perceptual hashes (int64 arrays or ints, broadcast)."""
    return np.bitwise_count(np.bitwise_xor(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)))
