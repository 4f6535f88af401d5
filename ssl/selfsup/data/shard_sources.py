"""What ``selfsup shard`` reads: an image folder (class = first-level sub-folder) or a Hugging Face dataset
(saved with ``save_to_disk`` or in the local cache; never downloaded), as ``(key, encoded bytes, class id)`` items
in a seeded random order, with stable webdataset keys."""

from __future__ import annotations

import contextlib
import io
import os
import random
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from selfsup.errors import DataError


def open_source(src: str, *, split: str | None, image_column: str, label_column: str,
                seed: int | None) -> tuple[Iterator[tuple[str, bytes | None, int | None]], int, list[str]]:
    """``(items, count, classes)`` of an image folder, a saved Hugging Face dataset or one in the local cache;
    ``items`` yields ``(key, encoded bytes or None, class id or None)`` in the order of :func:`_permutation`.

    Raises:
        DataError: a file, a missing folder, a missing dataset, column or split, or an empty source.
    """
    src_path = Path(src)
    if src_path.is_dir() and not _is_hf_saved(src_path):
        return _folder_items(src_path, seed)
    if src_path.exists() and not _is_hf_saved(src_path):
        raise _source_file_error(src_path)
    if not src_path.exists() and "/" in src.strip("/") and src.startswith(("/", ".", "~")):
        raise DataError(f"{src}: no such folder")
    return _hf_items(_load_hf(src, split), src=src, image_column=image_column, label_column=label_column, seed=seed)


def sanitize_key(relpath: str) -> str:
    """Turn a relative path into a webdataset key: no extension, no dots, only ``[A-Za-z0-9_/-]``.

    webdataset splits member names at the first dot of the base name, so dots must go.
    """
    stem = relpath.rsplit(".", 1)[0] if "." in Path(relpath).name else relpath
    return re.sub(r"[^A-Za-z0-9_/\-]", "_", stem.replace(os.sep, "/"))


def _permutation(n: int, seed: int | None) -> list[int]:
    """The order samples are written in: a seeded random permutation, or ``range(n)`` for ``seed=None``.

    Sources listed in sorted order (class folders) would otherwise give one class per shard, which a
    reader's shuffle buffer cannot mix: nearly every batch would hold one class.
    """
    order = list(range(n))
    if seed is not None:
        random.Random(seed).shuffle(order)
    return order


def _folder_items(
    src: Path, seed: int | None
) -> tuple[Iterator[tuple[str, bytes | None, int | None]], int, list[str]]:
    """Yield ``(key, bytes, cls)`` for every file under ``src``, in the order of :func:`_permutation`.

    Keys come from the relative paths (names that collide after sanitising get ``_1``, ``_2`` in sorted
    path order), so they do not depend on the write order.
    """
    files = sorted(
        (p for p in src.rglob("*") if p.is_file() and not any(x.startswith(".") for x in p.relative_to(src).parts)),
        key=lambda p: p.relative_to(src).as_posix(),
    )
    if not files:
        raise DataError(f"{src}: the folder has no files; expected images, optionally in one sub-folder per class")
    classes = sorted({p.relative_to(src).parts[0] for p in files if len(p.relative_to(src).parts) > 1})
    class_id = {c: i for i, c in enumerate(classes)}
    seen: Counter[str] = Counter()
    keys = []
    for p in files:
        key = sanitize_key(p.relative_to(src).as_posix())
        keys.append(key if seen[key] == 0 else f"{key}_{seen[key]}")
        seen[key] += 1

    def items() -> Iterator[tuple[str, bytes | None, int | None]]:
        for i in _permutation(len(files), seed):
            rel = files[i].relative_to(src)
            cls = class_id[rel.parts[0]] if len(rel.parts) > 1 else None
            yield keys[i], files[i].read_bytes(), cls

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
    ds: Any, *, src: str, image_column: str, label_column: str, seed: int | None
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
        for i in _permutation(len(ds), seed):
            row = ds[i]
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


def _source_file_error(path: Path) -> DataError:
    """The one line for a file given as ``SRC``: says when it is a (possibly empty) tar."""
    import tarfile

    if tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            n = sum(1 for m in tar if m.isfile())
        what = "an empty tar file (no members)" if n == 0 else f"a tar file ({n} members)"
        return DataError(f"{path}: is {what}; selfsup shard reads an image folder or a Hugging Face dataset "
                         "(extract the tar first; shards already in webdataset format go straight to data.shards)")
    return DataError(f"{path}: is a file; expected an image folder or a Hugging Face dataset")
