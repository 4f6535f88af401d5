"""Write an image folder or a Hugging Face dataset to webdataset tar shards.

Shards are the one input format of the training reader (:mod:`selfsup.data.shards`): sequential
reads, no per-file metadata lookups, and a stable ``__key__`` per sample so that positions and
skipped files can be named in logs. Encoded images are stored byte-for-byte (never re-encoded),
under the extension of their real format (``jpg``, ``png``, ...), plus ``cls`` (an int) when the
source has labels.

Example:
    >>> summary = write_shards("flowers5/", "shards/", max_per_shard=1000)  # doctest: +SKIP
    >>> print(summary.format())  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from selfsup.errors import DataError

SHARD_PATTERN = "shard-%06d.tar"

# Pillow format name -> the extension we store the bytes under (the reader accepts all of these).
FORMAT_EXT = {
    "JPEG": "jpg",
    "PNG": "png",
    "WEBP": "webp",
    "GIF": "gif",
    "BMP": "bmp",
    "TIFF": "tiff",
    "PPM": "ppm",
    "MPO": "jpg",  # multi-picture JPEG from phones: the first frame is a plain JPEG
}
IMAGE_EXTS = frozenset(FORMAT_EXT.values()) | {"jpeg"}


@dataclass
class ShardSummary:
    """What :func:`write_shards` wrote.

    Attributes:
        samples: samples written.
        shards: tar files written (``shard-000000.tar`` ...).
        bytes: total size of the tar files.
        skipped: skipped source files by reason (``empty``, ``not_an_image``, ``decode_error``...).
        classes: class names, index = ``cls`` id (empty when the source has no labels).
        paths: the shard paths, in order.
    """

    samples: int = 0
    shards: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def format(self) -> str:
        """One human-readable line."""
        skipped = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"wrote {self.samples} samples in {self.shards} shards ({self.bytes / 1e6:.1f} MB), "
            f"{len(self.classes)} classes, skipped: {skipped}"
        )


def sanitize_key(relpath: str) -> str:
    """Turn a relative path into a webdataset key: no extension, no dots, only ``[A-Za-z0-9_/-]``.

    webdataset splits member names at the first dot of the base name, so dots must go.
    """
    stem = relpath.rsplit(".", 1)[0] if "." in Path(relpath).name else relpath
    return re.sub(r"[^A-Za-z0-9_/\-]", "_", stem.replace(os.sep, "/"))


def sniff_image(data: bytes) -> tuple[str | None, str]:
    """Cheap check that ``data`` is an image: ``(extension, "")`` or ``(None, reason)``.

    Pillow's ``verify`` reads the headers and (for PNG) the chunk checksums without decoding
    pixels, so it is fast; truncated JPEGs can still pass and are caught later by the reader.
    """
    if not data:
        return None, "empty"
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt = img.format or ""
            img.verify()
    except UnidentifiedImageError:
        return None, "not_an_image"
    except Image.DecompressionBombError:
        # Still an image; the reader decides with its own limit. Keep the bytes.
        return _ext_from_magic(data), ""
    except Exception:  # noqa: BLE001 - Pillow raises many types for broken files
        return None, "decode_error"
    ext = FORMAT_EXT.get(fmt)
    if ext is None:
        return None, "unsupported_format"
    return ext, ""


def _ext_from_magic(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "img"


def _folder_items(src: Path) -> tuple[Iterator[tuple[str, bytes | None, int | None]], int, list[str]]:
    """Yield ``(key, bytes, cls)`` for every file under ``src`` in sorted relative-path order."""
    files = sorted(
        (p for p in src.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(src).parts)),
        key=lambda p: p.relative_to(src).as_posix(),
    )
    if not files:
        raise DataError(f"{src}: the folder has no files; expected images, optionally in one sub-folder per class")
    classes = sorted({p.relative_to(src).parts[0] for p in files if len(p.relative_to(src).parts) > 1})
    class_id = {c: i for i, c in enumerate(classes)}

    def items() -> Iterator[tuple[str, bytes | None, int | None]]:
        for p in files:
            rel = p.relative_to(src)
            cls = class_id[rel.parts[0]] if len(rel.parts) > 1 else None
            yield sanitize_key(rel.as_posix()), p.read_bytes(), cls

    return items(), len(files), classes


@contextlib.contextmanager
def _hf_offline() -> Iterator[None]:
    """Force Hugging Face offline mode (never download) for the duration of the block."""
    import datasets
    import huggingface_hub.constants as hub_constants

    saved = (datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE)
    datasets.config.HF_HUB_OFFLINE = True
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, hub_constants.HF_HUB_OFFLINE = saved


def _load_hf(src: str, split: str | None) -> Any:
    import datasets

    path = Path(src)
    with _hf_offline():
        if path.is_dir():
            try:
                ds = datasets.load_from_disk(str(path))
            except Exception as e:  # noqa: BLE001
                raise DataError(f"{src}: cannot load the saved Hugging Face dataset ({e})") from None
        else:
            try:
                ds = datasets.load_dataset(src, split=split)
            except Exception as e:  # noqa: BLE001
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise DataError(
                    f"{src}: not a folder and not a Hugging Face dataset in the local cache "
                    f"(offline, never downloads): {msg}"
                ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise DataError(f"{src}: the dataset has splits {sorted(ds)}; pick one with --split")
            split = next(iter(ds))
        if split not in ds:
            raise DataError(f"{src}: split {split!r} not found; available splits: {sorted(ds)}")
        ds = ds[split]
    return ds


def _hf_items(
    ds: Any, *, src: str, image_column: str, label_column: str
) -> tuple[Iterator[tuple[str, bytes | None, int | None]], int, list[str]]:
    import datasets

    if image_column not in ds.column_names:
        raise DataError(f"{src}: no image column {image_column!r}; columns are {ds.column_names} (use --image-column)")
    if len(ds) == 0:
        raise DataError(f"{src}: the dataset is empty")
    raw = isinstance(ds.features[image_column], datasets.Image)
    if raw:  # get the stored encoded bytes instead of decoded PIL images: no re-encoding
        ds = ds.cast_column(image_column, datasets.Image(decode=False))
    has_label = label_column in ds.column_names
    classes: list[str] = []
    if has_label and isinstance(ds.features[label_column], datasets.ClassLabel):
        classes = list(ds.features[label_column].names)

    def items() -> Iterator[tuple[str, bytes | None, int | None]]:
        for i, row in enumerate(ds):
            value = row[image_column]
            data: bytes | None
            if isinstance(value, dict):
                data = value.get("bytes")
                if data is None and value.get("path"):
                    data = Path(value["path"]).read_bytes()
            elif isinstance(value, Image.Image):
                data = _encode_pil(value)
            elif isinstance(value, bytes):
                data = value
            else:
                data = None
            cls = int(row[label_column]) if has_label and row[label_column] is not None else None
            yield f"idx-{i:08d}", data, cls

    return items(), len(ds), classes


def _encode_pil(img: Image.Image) -> bytes:
    """Encode a decoded image losslessly as PNG (JPEG sources keep their bytes elsewhere)."""
    buf = io.BytesIO()
    if img.mode not in ("RGB", "RGBA", "L", "LA", "P", "I;16", "I", "1"):
        img = img.convert("RGB")
    img.save(buf, format="PNG")
    return buf.getvalue()


def _is_hf_saved(path: Path) -> bool:
    return path.is_dir() and any(
        (path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


def write_shards(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_per_shard: int = 1000,
    image_column: str = "image",
    label_column: str = "label",
    split: str | None = None,
    progress: bool = True,
) -> ShardSummary:
    """Write ``src`` to ``out_dir/shard-000000.tar``, ... and return what was written.

    Args:
        src: an image folder (recursive; images in sub-folders get the first-level sub-folder name as
            class, ids in sorted order), a ``datasets`` ``save_to_disk`` folder, or the name of a
            dataset already in the local Hugging Face cache (never downloaded).
        out_dir: output folder, created if needed; also gets ``classes.json`` when there are labels.
        max_per_shard: samples per tar file.
        image_column: image column of a Hugging Face dataset.
        label_column: integer label column of a Hugging Face dataset (optional).
        split: split of a Hugging Face dataset (required when it has several).
        progress: show a tqdm progress bar.

    Raises:
        DataError: ``src`` is missing or empty, or a column/split does not exist.
    """
    if max_per_shard < 1:
        raise DataError(f"max_per_shard={max_per_shard}: expected a positive number of samples per shard")
    src_str = os.fspath(src)
    src_path = Path(src_str)
    if src_path.is_dir() and not _is_hf_saved(src_path):
        items, total, classes = _folder_items(src_path)
    elif _is_hf_saved(src_path):
        items, total, classes = _hf_items(
            _load_hf(src_str, split), src=src_str, image_column=image_column, label_column=label_column
        )
    elif src_path.exists():
        raise DataError(f"{src_str}: is a file; expected an image folder or a Hugging Face dataset")
    elif "/" in src_str.strip("/") and src_str.startswith(("/", ".", "~")):
        raise DataError(f"{src_str}: no such folder")
    else:
        items, total, classes = _hf_items(
            _load_hf(src_str, split), src=src_str, image_column=image_column, label_column=label_column
        )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("shard-*.tar"):  # a re-run must not leave shards of a bigger earlier run
        stale.unlink()
    summary = ShardSummary(classes=classes)
    skipped: Counter[str] = Counter()
    seen_keys: Counter[str] = Counter()
    labelled = False
    writer: wds.ShardWriter | None = None
    try:
        for key, data, cls in tqdm(items, total=total, disable=not progress, desc="shards", unit="img"):
            ext, reason = sniff_image(data or b"")
            if ext is None:
                skipped[reason] += 1
                continue
            n = seen_keys[key]
            seen_keys[key] += 1
            sample: dict[str, Any] = {"__key__": key if n == 0 else f"{key}_{n}", ext: data}
            if cls is not None:
                sample["cls"] = cls
                labelled = True
            if writer is None:
                writer = wds.ShardWriter(str(out / SHARD_PATTERN), maxcount=max_per_shard, verbose=0)
            writer.write(sample)
            summary.samples += 1
    finally:
        if writer is not None:
            writer.close()
    summary.skipped = dict(skipped)
    if summary.samples == 0:
        raise DataError(f"{src_str}: no usable images (skipped: {dict(skipped) or 'no files'})")
    summary.paths = sorted(str(p) for p in out.glob("shard-*.tar"))
    summary.shards = len(summary.paths)
    summary.bytes = sum(os.path.getsize(p) for p in summary.paths)
    if labelled and classes:
        (out / "classes.json").write_text(json.dumps(classes, indent=1) + "\n")
    if progress:
        print(summary.format())
    return summary
