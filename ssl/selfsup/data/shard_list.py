"""Shard lists: a shard spec from the config or the command line -> the list of tar files to read.

A spec is a brace pattern (``shard-{000000..000099}.tar``, expanded with webdataset's ``braceexpand``), a glob, a
folder of ``.tar`` files, a text file with one shard per line, or a list of these. ``pipe:`` URLs are refused
unless asked for (:mod:`selfsup.data.shard_urls`).
"""

from __future__ import annotations

import glob
import logging
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

from braceexpand import braceexpand

from selfsup.data.shard_urls import check_url, is_remote
from selfsup.errors import DataError

logger = logging.getLogger(__name__)


def expand_shards(
    spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], *, strict: bool = False, allow_pipe: bool = False
) -> list[str]:
    """Resolve a shard spec to a list of tar paths.

    Args:
        spec: a brace pattern (``data/shard-{000000..000099}.tar``), a glob (``data/*.tar``), a directory (all
            ``*.tar`` in it, sorted), a text file with one path per line (relative paths are relative to the
            file; blank lines and ``#`` comments ignored), or a list of any of these.
        strict: a missing shard is an error instead of a warning (evaluation: a missing shard would silently
            change the dataset).
        allow_pipe: accept ``pipe:CMD`` URLs (they run CMD in a shell); refused by default.

    Returns:
        Existing shard paths (and remote ``scheme://`` / ``pipe:`` URLs, unchecked), in order.
        Missing files are skipped with a warning that counts them (unless ``strict``).

    Raises:
        DataError: nothing at all is left, (``strict``) a shard is missing, or a ``pipe:`` URL without
            ``allow_pipe`` (naming the line of the list file).
    """
    specs = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    candidates: list[str] = []
    for one in specs:
        s = os.fspath(one)
        p = Path(s)
        if p.is_dir():
            candidates.extend(sorted(str(t) for t in p.glob("*.tar")))
        elif p.is_file() and not tarfile.is_tarfile(s) and p.suffix not in (".tar", ".tgz", ".gz"):
            for lineno, line in enumerate(p.read_text(errors="replace").splitlines(), 1):
                line = line.split("#", 1)[0].strip()
                for u in braceexpand(line) if line else ():
                    check_url(u, allow_pipe=allow_pipe, where=f"{p}:{lineno}")
                    candidates.append(u if is_remote(u) or os.path.isabs(u) else str(p.parent / u))
        elif "{" not in s and any(c in s for c in "*?[") and not p.exists():
            candidates.extend(sorted(glob.glob(s)))
        else:
            for u in braceexpand(s):
                check_url(u, allow_pipe=allow_pipe, where="shard spec")
                candidates.append(u)
    found = [u for u in candidates if is_remote(u) or os.path.isfile(u)]
    found_set = set(found)
    missing = [u for u in candidates if u not in found_set]
    if missing and strict:
        shown = os.fspath(spec) if isinstance(spec, str | os.PathLike) else [os.fspath(s) for s in spec]
        raise DataError(f"{shown}: shard file {missing[0]!r} not found; expected .tar shards")
    if missing:
        logger.warning("%d of %d shards are missing and skipped (first: %s)", len(missing), len(candidates), missing[0])
    if not found:
        shown = os.fspath(spec) if isinstance(spec, str | os.PathLike) else [os.fspath(s) for s in spec]
        raise DataError(f"{shown}: no shard files found")
    return found
