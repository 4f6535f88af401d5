"""Write an image folder or a Hugging Face dataset to webdataset tar shards.

Shards are the one input format of the training reader (:mod:`selfsup.data.stream`): sequential
reads, no per-file metadata lookups, and a stable ``__key__`` per sample so that positions and
skipped files can be named in logs. Encoded images are stored byte-for-byte (never re-encoded),
under the extension of their real format (``jpg``, ``png``, ...), plus ``cls`` (an int) when the
source has labels.

Each image is decoded once (JPEGs at 1/8 scale with Pillow ``draft``) with the reader's own
:func:`selfsup.data.decode.decode_rgb`, so truncated, corrupt and over-limit (decompression bomb) files
are skipped and counted here instead of costing every epoch; ``verify=False`` checks headers only.

The output folder is never emptied up front: shards go to a temporary sibling folder and are moved in
only after the whole source was written. A manifest (:data:`MANIFEST`) lists the files a run wrote; a
later run replaces exactly those, refuses ``.tar`` / ``classes.json`` files it did not write unless
``overwrite=True``, and never touches any other file. The manifest also holds the samples of each shard
(``shard_samples``): the shard index that pretraining reads instead of counting (:mod:`selfsup.data.shard_index`).

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
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from selfsup.data.decode import BadSample, decode_rgb
from selfsup.data.shard_sources import open_source
from selfsup.errors import DataError
from selfsup.manifest import listed_files, parse_manifest, read_manifest, write_manifest

SHARD_PATTERN = "shard-%06d.tar"
CLASSES_FILE = "classes.json"
MANIFEST = "selfsup_shards.json"  # what a run wrote: the only files a later run may replace
MANIFEST_FORMAT = "selfsup-shards"
_OWNABLE = re.compile(r"shard-\d{6}\.tar|classes\.json")  # names a manifest may list; nothing else is ever removed
VERIFY_DRAFT = (1, 1)  # Pillow draft: decode JPEGs at the largest reduction (1/8), enough to find truncation

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


@dataclass
class ShardSummary:
    """What :func:`write_shards` wrote.

    Attributes:
        seen: source files (or dataset rows) looked at; always ``samples + sum(skipped.values())``.
        samples: samples written.
        shards: tar files written (``shard-000000.tar`` ...).
        bytes: total size of the tar files.
        skipped: skipped source files by reason (``empty``, ``not_an_image``, ``truncated``,
            ``decompression_bomb``, ``decode_error``, ``unsupported_format``).
        classes: class names, index = ``cls`` id (empty when the source has no labels).
        paths: the shard paths, in order.
        verified: every image was decoded (``False``: header check only).
        shard_samples: samples in each shard, by file name: the shard index that pretraining start-up reads from
            :data:`MANIFEST` instead of counting (:mod:`selfsup.data.shard_index`).
    """

    seen: int = 0
    samples: int = 0
    shards: int = 0
    bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    verified: bool = True
    shard_samples: dict[str, int] = field(default_factory=dict)

    def format(self) -> str:
        """One human-readable line: ``seen N = written W + skipped S (reasons)``, then the shards."""
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        check = "images decoded" if self.verified else "headers only (--no-verify)"
        return (
            f"seen {self.seen} = written {self.samples} + skipped {sum(self.skipped.values())} ({reasons}); "
            f"{self.shards} shards ({self.bytes / 1e6:.1f} MB), {len(self.classes)} classes, {check}"
        )


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


def check_image(data: bytes, *, verify: bool = True) -> tuple[str | None, str]:
    """``(extension, "")`` for an image worth storing, else ``(None, reason)``.

    With ``verify`` the image is decoded with the reader's :func:`~selfsup.data.decode.decode_rgb` (JPEGs
    at 1/8 scale), so the reasons are the reader's: ``truncated``, ``decompression_bomb``, ... Without it,
    only :func:`sniff_image`'s header check runs.
    """
    if verify:
        try:
            decode_rgb(data, draft_size=VERIFY_DRAFT)
        except BadSample as e:
            return None, e.reason
    return sniff_image(data)


def _ext_from_magic(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "img"


def parse_shard_manifest(doc: Any) -> dict[str, Any] | None:
    """A decoded :data:`MANIFEST`, or ``None`` when it was not written by :func:`write_shards`."""
    return parse_manifest(doc, MANIFEST_FORMAT)


def _check_out(out: Path, *, overwrite: bool) -> tuple[set[str], list[str]]:
    """``(files of a previous run, files it did not write that would mix in)`` for the output folder.

    Raises:
        DataError: ``out`` is not a folder, or holds ``.tar`` / ``classes.json`` / manifest files that no
            selfsup run listed, and ``overwrite`` is off.
    """
    if not out.exists():
        return set(), []
    if not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; expected a folder for the shards")
    manifest = read_manifest(out, MANIFEST, MANIFEST_FORMAT)
    owned = listed_files(manifest, lambda f: bool(_OWNABLE.fullmatch(f)))  # only shard and class-name files
    foreign = sorted(
        p.name for p in out.iterdir()
        if (p.is_file() or p.is_symlink())
        and (p.suffix == ".tar" or p.name == CLASSES_FILE or (p.name == MANIFEST and manifest is None))
        and p.name not in owned
    )
    if foreign and not overwrite:
        shown = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
        raise DataError(
            f"{out}: holds {len(foreign)} file(s) that selfsup shard did not write ({shown}); they would mix "
            "with the new shards: choose a new or empty folder, or pass --overwrite to replace them "
            "(other files are never touched)"
        )
    return owned, foreign


def _install(tmp: Path, out: Path, new: list[str], old: set[str], info: dict[str, Any]) -> None:
    """Move the finished files from ``tmp`` into ``out`` and remove the replaced ``old`` ones.

    A manifest naming old and new files goes in first, so a crash mid-way leaves no shard that a rerun
    would call foreign; the final manifest names only the new files.
    """
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out, MANIFEST, MANIFEST_FORMAT, set(new) | old, scratch=tmp, **info, complete=False)
    for name in new:
        os.replace(tmp / name, out / name)
    for name in sorted(old - set(new)):
        (out / name).unlink(missing_ok=True)
    write_manifest(out, MANIFEST, MANIFEST_FORMAT, new, scratch=tmp, **info, complete=True)
    tmp.rmdir()


def write_shards(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    max_per_shard: int = 1000,
    image_column: str = "image",
    label_column: str = "label",
    split: str | None = None,
    seed: int | None = 0,
    verify: bool = True,
    overwrite: bool = False,
    progress: bool = True,
) -> ShardSummary:
    """Write ``src`` to ``out_dir/shard-000000.tar``, ... and return what was written.

    Args:
        src: an image folder (recursive; images in sub-folders get the first-level sub-folder name as
            class, ids in sorted order), a ``datasets`` ``save_to_disk`` folder, or the name of a
            dataset already in the local Hugging Face cache (never downloaded).
        out_dir: output folder, created if needed; gets the shards, :data:`MANIFEST` and ``classes.json``
            when there are labels. Shards of a previous run (named by its manifest) are replaced only
            after the new ones are complete; other files are left alone.
        max_per_shard: samples per tar file.
        image_column: image column of a Hugging Face dataset.
        label_column: integer label column of a Hugging Face dataset (optional).
        split: split of a Hugging Face dataset (required when it has several).
        seed: samples are written in a random order drawn from this seed, so that every shard mixes
            the source's classes; ``None`` keeps the source order (sorted paths / dataset rows).
        verify: decode every image and skip broken ones (``False``: header check only, faster).
        overwrite: replace ``.tar`` / ``classes.json`` files in ``out_dir`` that no selfsup run wrote.
        progress: show a tqdm progress bar.

    Raises:
        DataError: ``src`` is missing or empty, a column/split does not exist, no image is usable, or
            ``out_dir`` holds shards that selfsup did not write (without ``overwrite``). Nothing in
            ``out_dir`` has changed then.
    """
    if max_per_shard < 1:
        raise DataError(f"max_per_shard={max_per_shard}: expected a positive number of samples per shard")
    src_str = os.fspath(src)
    out = Path(out_dir).resolve()
    owned, foreign = _check_out(out, overwrite=overwrite)
    items, total, classes = open_source(src_str, split=split, image_column=image_column, label_column=label_column,
                                        seed=seed)

    made = [d for d in (out.parent, *out.parent.parents) if not d.exists()]
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.selfsup-shard-", dir=out.parent))
    except OSError as e:
        raise DataError(f"{out.parent}: cannot create the temporary shard folder there ({e.strerror})") from None
    try:
        summary = _write_all(items, total, tmp, classes=classes, max_per_shard=max_per_shard, verify=verify,
                             progress=progress)
        if summary.samples == 0:
            raise DataError(f"{src_str}: no usable images among {summary.seen} files "
                            f"(skipped: {summary.skipped or 'no files'})")
        new = sorted(p.name for p in tmp.iterdir())
        info = {"source": src_str, "seen": summary.seen, "samples": summary.samples, "skipped": summary.skipped,
                "classes": len(classes), "seed": seed, "verified": verify, "max_per_shard": max_per_shard,
                "shard_samples": summary.shard_samples}
        _install(tmp, out, new, (owned | set(foreign)) - {MANIFEST}, info)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # tmp is ours alone (mkdtemp); out is untouched or complete
        for d in made:  # parent folders this call created, innermost first, if still empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    summary.paths = [str(out / n) for n in new if n.endswith(".tar")]
    summary.bytes = sum(os.path.getsize(p) for p in summary.paths)
    if progress:
        print(f"{summary.format()} -> {out}")
    return summary


def _write_all(
    items: Iterator[tuple[str, bytes | None, int | None]], total: int, out: Path, *, classes: list[str],
    max_per_shard: int, verify: bool, progress: bool,
) -> ShardSummary:
    """Write every usable item to ``out/shard-%06d.tar`` (+ ``classes.json``) and count the rest."""
    summary = ShardSummary(classes=classes, verified=verify)
    skipped: Counter[str] = Counter()
    seen_keys: Counter[str] = Counter()
    shard_samples: Counter[str] = Counter()  # by shard file: the shard index in the manifest
    labelled = False
    writer: wds.ShardWriter | None = None
    try:
        for key, data, cls in tqdm(items, total=total, disable=not progress, desc="shards", unit="img"):
            summary.seen += 1
            ext, reason = check_image(data or b"", verify=verify)
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
            shard_samples[os.path.basename(writer.fname)] += 1
    finally:
        if writer is not None:
            writer.close()
    summary.skipped = dict(skipped)
    summary.shard_samples = dict(sorted(shard_samples.items()))
    summary.shards = len(list(out.glob("shard-*.tar")))
    if labelled and classes:
        (out / CLASSES_FILE).write_text(json.dumps(classes, indent=1) + "\n")
    return summary
