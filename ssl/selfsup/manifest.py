"""Output manifests: the files a command wrote into a folder, so that a later run replaces those and nothing else.

``selfsup shard`` (``selfsup_shards.json``) and ``selfsup export`` (``selfsup_export.json``) each write one beside
their output. A file whose name looks like an output but that no manifest lists is someone else's: it is refused
(or, with ``--overwrite``, replaced) but never removed silently. A manifest is a small JSON object
``{"format": FORMAT, "version": 1, "files": [...], ...}``; ``FORMAT`` tells the commands' manifests apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


def parse_manifest(doc: Any, fmt: str) -> dict[str, Any] | None:
    """A decoded manifest of format ``fmt``, or ``None`` when ``doc`` is not one."""
    ours = isinstance(doc, dict) and doc.get("format") == fmt and isinstance(doc.get("files"), list)
    return doc if ours else None


def read_manifest(folder: Path, name: str, fmt: str) -> dict[str, Any] | None:
    """``folder/name`` as a manifest of format ``fmt``; ``None`` when absent, unreadable or of another kind."""
    try:
        return parse_manifest(json.loads((folder / name).read_text()), fmt)
    except (OSError, ValueError):
        return None


def listed_files(manifest: dict[str, Any] | None, may_own: Callable[[str], bool]) -> set[str]:
    """The files ``manifest`` lists that its command may write (``may_own``): a hand-edited manifest cannot get any
    other file replaced or removed."""
    if manifest is None:
        return set()
    return {f for f in manifest["files"] if isinstance(f, str) and "/" not in f and may_own(f)}


def write_manifest(folder: Path, name: str, fmt: str, files: Iterable[str], *, scratch: Path | None = None,
                   **info: Any) -> None:
    """Atomically (re)write ``folder/name`` listing ``files``, staged in ``scratch`` (same file system; default
    ``folder``)."""
    part = (scratch or folder) / (name + ".part")
    part.write_text(json.dumps({"format": fmt, "version": 1, "files": sorted(files), **info}, indent=1) + "\n")
    os.replace(part, folder / name)
