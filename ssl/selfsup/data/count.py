"""Count the samples in tar shards by reading member headers only (no decoding)."""

from __future__ import annotations

import logging
import tarfile

from selfsup.data.shard_urls import ShardOpenError, is_remote, open_shard

log = logging.getLogger("selfsup")


def count_samples(urls: list[str], *, allow_pipe: bool = False) -> int:
    """Number of distinct sample keys (member name up to the first dot of its base name) over all shards.

    Local shards are read by seeking over the members' data; remote ones are streamed once (set
    ``data.samples_per_epoch`` to skip this). Unreadable shards count as zero (the reader skips them too).

    Raises:
        ShardOpenError: a remote shard cannot be reached (after the retries): one line, before any training.
    """
    remote = [u for u in urls if is_remote(u)]
    if remote:
        log.info("counting the samples of %d remote shards streams each once; data.samples_per_epoch skips this",
                 len(remote))
    total = 0
    for url in urls:
        keys: set[str] = set()
        try:
            with open_shard(url, allow_pipe=allow_pipe) as stream, \
                    tarfile.open(fileobj=stream, mode="r|*" if is_remote(url) else "r:*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    base = member.name.rsplit("/", 1)
                    prefix = base[0] + "/" if len(base) == 2 else ""
                    keys.add(prefix + base[-1].split(".", 1)[0])
        except ShardOpenError:
            raise
        except (OSError, tarfile.TarError) as e:
            log.warning("cannot count samples in %s: %s", url, e)
        total += len(keys)
    return total
