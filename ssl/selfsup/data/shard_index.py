"""Shard index: the samples of each shard, read from a small JSON file beside the shards instead of the shards.

Pretraining needs the length of an epoch before its first step. Counting it reads every shard (each remote shard
streamed whole), so start-up would grow with the data set. An index names the samples of each shard; pretraining
reads it once, on the main process, and shares it with the others (:func:`selfsup.train.main_only.on_main`).
For each folder (or URL prefix) holding shards, the first index that names a shard gives its count:

1. ``data.shard_index=PATH_OR_URL``: a ``selfsup_shards.json`` or a webdataset ``wids`` index named explicitly;
2. ``selfsup_shards.json`` beside the shards, written by ``selfsup shard`` (its ``shard_samples``; a complete one);
3. a webdataset ``wids`` shard index (``"__kind__": "wids-shard-index-v1"``, ``shardlist`` of ``{url,
   nsamples}``) among the ``*.json`` of a local shard folder (a remote folder cannot be listed: name it);
4. img2dataset's per-shard ``NAME_stats.json`` beside ``NAME.tar`` (``successes``), read when the first shard's
   exists.

Shards that no index names are counted (:func:`selfsup.data.count.count_samples`). The count an index gave is
checked when its shard is read (:class:`selfsup.data.stream.ShardStream`): a stale index stops the run with one
line naming the shard, both counts and the index.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfsup.data.count import count_samples
from selfsup.data.shard_urls import PIPE, is_remote, open_shard
from selfsup.data.shard_writer import CLASSES_FILE, MANIFEST, parse_shard_manifest
from selfsup.errors import DataError, first_line

log = logging.getLogger("selfsup")

NO_INDEX = "none"  # data.shard_index=none: count every shard, read no index
WIDS_KIND = "wids-shard-index-v1"
STATS_SUFFIX = "_stats.json"  # img2dataset: NAME.tar -> NAME_stats.json
MAX_INDEX_BYTES = 64 * 2**20  # an index of a million shards is ~100 MB of JSON; anything bigger is not one
STATS_THREADS = 16  # img2dataset's stats files are one small request each: read them concurrently
SKIP_HINT = "data.samples_per_epoch=N skips the count"


@dataclass(frozen=True)
class ShardCounts:
    """Samples of the shards of a run.

    Attributes:
        total: samples of all the shards (an index's count where one names the shard, else counted).
        indexed: ``{url: (samples, index file)}`` for the shards an index named: checked when they are read.
        counted: shards counted because no index named them.
    """

    total: int
    indexed: dict[str, tuple[int, str]] = field(default_factory=dict)
    counted: int = 0


def _key(url: str) -> str:
    """What identifies a shard across spellings: the URL, or the absolute normalised path of a local file."""
    if is_remote(url):
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{posixpath.normpath(rest)}"
    return os.path.abspath(url)


def _folder(url: str) -> str:
    """The folder (URL prefix, ending in ``/``) of a shard or an index."""
    return url.rsplit("/", 1)[0] + "/" if is_remote(url) else os.path.dirname(os.path.abspath(url)) + os.sep


def _join(folder: str, name: str) -> str:
    if is_remote(name) or os.path.isabs(name):
        return name
    return folder + name if is_remote(folder) else os.path.join(folder, name)


def _read_json(url: str, *, strict: bool = False) -> Any:
    """The decoded JSON file at ``url`` (local or remote); ``None`` when absent or unreadable, unless ``strict``.

    Raises:
        DataError: (``strict``) the file cannot be read or is not JSON.
    """
    try:
        with open_shard(url) as f:
            data = f.read(MAX_INDEX_BYTES + 1)
        if len(data) > MAX_INDEX_BYTES:
            raise ValueError(f"larger than {MAX_INDEX_BYTES >> 20} MiB")
        return json.loads(data)
    except (OSError, DataError, ValueError) as e:
        if strict:
            raise DataError(f"data.shard_index={url}: cannot read it as a shard index ({first_line(e)}); expected "
                            f"a {MANIFEST} or a webdataset wids index JSON, or data.shard_index={NO_INDEX}") from None
        if not isinstance(e, (FileNotFoundError, DataError)):
            log.warning("shard index %s not read (%s); the shards it names are counted", url, first_line(e))
        return None


def _count_value(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _entries(doc: Any, where: str) -> dict[str, int] | None:
    """``{shard key: samples}`` from a decoded ``selfsup_shards.json`` or wids index at ``where``; ``None`` when
    ``doc`` is neither (or a manifest without counts, or an incomplete one)."""
    folder = _folder(where)
    manifest = parse_shard_manifest(doc)
    if manifest is not None:
        counts = manifest.get("shard_samples")
        if manifest.get("complete") is not True or not isinstance(counts, dict):
            return None
        pairs = list(counts.items())
    elif isinstance(doc, dict) and doc.get("__kind__") == WIDS_KIND and isinstance(doc.get("shardlist"), list):
        base = doc.get("base_path")
        folder = base.rstrip("/") + "/" if isinstance(base, str) and base else folder
        pairs = [(s.get("url"), s.get("nsamples")) for s in doc["shardlist"] if isinstance(s, dict)]
    else:
        return None
    out = {}
    for name, n in pairs:
        if isinstance(name, str) and _count_value(n) is not None:
            out[_key(_join(folder, name))] = n
    return out


def _wids_in_folder(folder: str) -> list[str]:
    """The ``*.json`` files of a local folder that may be wids indexes (not ours, not img2dataset's)."""
    if is_remote(folder) or not os.path.isdir(folder):
        return []
    skip = {MANIFEST, CLASSES_FILE}
    return sorted(str(p) for p in Path(folder).glob("*.json")
                  if p.name not in skip and not p.name.endswith(STATS_SUFFIX))


def _stats_url(url: str) -> str | None:
    return url[: -len(".tar")] + STATS_SUFFIX if url.endswith(".tar") else None


def _read_stats(urls: list[str]) -> dict[str, tuple[int, str]]:
    """img2dataset's ``NAME_stats.json`` of each shard that has one with a ``successes`` count."""

    def one(url: str) -> tuple[str, int | None, str]:
        stats = _stats_url(url)
        doc = _read_json(stats) if stats else None
        return url, _count_value(doc.get("successes")) if isinstance(doc, dict) else None, stats or ""

    with ThreadPoolExecutor(min(STATS_THREADS, max(1, len(urls)))) as pool:
        return {url: (n, src) for url, n, src in pool.map(one, urls) if n is not None}


def read_shard_index(urls: list[str], *, index: str = "") -> dict[str, tuple[int, str]]:
    """``{url: (samples, index file)}`` for the shards of ``urls`` that an index names (see the module doc).

    Args:
        urls: shard paths and URLs (:func:`selfsup.data.shard_list.expand_shards`).
        index: ``data.shard_index``: ``""`` looks beside the shards, a path or URL reads that index first,
            ``"none"`` reads none.

    Raises:
        DataError: ``index`` names a file that cannot be read or is not a shard index.
    """
    if index == NO_INDEX:
        return {}
    found: dict[str, tuple[int, str]] = {}
    by_key: dict[str, list[str]] = {}
    for url in urls:
        by_key.setdefault(_key(url), []).append(url)

    def take(entries: dict[str, int], source: str) -> None:
        for key, n in entries.items():
            for url in by_key.get(key, ()):
                found.setdefault(url, (n, source))

    if index:
        entries = _entries(_read_json(index, strict=True), index)
        if entries is None:
            raise DataError(f"data.shard_index={index}: not a shard index (expected a complete {MANIFEST} with "
                            f"shard_samples, or a webdataset wids index with \"__kind__\": \"{WIDS_KIND}\")")
        take(entries, index)
    folders: dict[str, list[str]] = {}
    for url in urls:
        if not url.startswith(PIPE):
            folders.setdefault(_folder(url), []).append(url)
    for folder, members in folders.items():
        candidates = [_join(folder, MANIFEST), *_wids_in_folder(folder)]
        for source in candidates:
            if all(u in found for u in members):
                break
            doc = _read_json(source)
            entries = _entries(doc, source) if doc is not None else None
            if entries:
                take(entries, source)
        rest = [u for u in members if u not in found]
        if rest and _stats_url(rest[0]) and _read_json(_stats_url(rest[0]) or "") is not None:
            found.update(_read_stats(rest))
    return found


def shard_counts(urls: list[str], *, index: str = "", allow_pipe: bool = False) -> ShardCounts:
    """Samples of ``urls``: from the shard indexes where they name a shard, counted for the other shards.

    Counting reads every such shard (remote ones streamed whole): the log says how long it took and how to skip
    it next time (``data.samples_per_epoch``, or an index written by ``selfsup shard``).

    Raises:
        DataError: see :func:`read_shard_index`; ``ShardOpenError`` when a remote shard to count is unreachable.
    """
    indexed = read_shard_index(urls, index=index)
    rest = [u for u in urls if u not in indexed]
    from_index = sum(indexed[u][0] for u in urls if u in indexed)
    if indexed:
        sources = sorted({src for _, src in indexed.values()})
        shown = ", ".join(sources[:2]) + (f" (+{len(sources) - 2} more)" if len(sources) > 2 else "")
        log.info("shard index: %d samples in %d of %d shards from %s", from_index, len(urls) - len(rest), len(urls),
                 shown)
    counted = 0
    if rest:
        why = "no shard index names them" if index != NO_INDEX else f"data.shard_index={NO_INDEX}"
        log.warning("counting the samples of %d of %d shards (%s; selfsup shard writes one, see docs/launch.md); "
                    "%s", len(rest), len(urls), why, SKIP_HINT)
        t0 = time.perf_counter()
        counted = count_samples(rest, allow_pipe=allow_pipe)
        log.warning("counted %d samples in %d shards in %.1f s; data.samples_per_epoch=%d skips this count next time",
                    counted, len(rest), time.perf_counter() - t0, from_index + counted)
    return ShardCounts(total=from_index + counted, indexed=indexed, counted=len(rest))
