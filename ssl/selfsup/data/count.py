"""Count the samples in tar shards by reading member headers only (no decoding)."""

from __future__ import annotations

import logging
import tarfile

log = logging.getLogger("selfsup")


def count_samples(urls: list[str]) -> int:
    """Number of distinct sample keys (member name up to the first dot of its base name) over all shards.

    Unreadable shards count as zero (the reader skips them too)."""
    total = 0
    for url in urls:
        keys: set[str] = set()
        try:
            with tarfile.open(url, "r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = member.name.rsplit("/", 1)
                    prefix = base[0] + "/" if len(base) == 2 else ""
                    keys.add(prefix + base[-1].split(".", 1)[0])
        except (OSError, tarfile.TarError) as e:
            log.warning("cannot count samples in %s: %s", url, e)
        total += len(keys)
    return total
