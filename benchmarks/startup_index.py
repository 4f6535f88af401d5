"""Start-up cost of the epoch length over HTTP: the shard index beside the shards vs counting every shard.

Writes N shards of 2 small images with ``selfsup shard`` (so with its ``selfsup_shards.json``), serves them with a
local ``http.server`` and times :func:`selfsup.data.shard_index.shard_counts` (what ``selfsup pretrain`` runs on the
main process before its first step) with the index and with ``data.shard_index=none``, counting the requests.

Usage:
    python benchmarks/startup_index.py [--shards 400] [--work /tmp/startup_index]
"""

from __future__ import annotations

import argparse
import functools
import http.server
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from selfsup.data.shard_index import shard_counts
from selfsup.data.shard_writer import write_shards


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=400)
    parser.add_argument("--work", type=Path, default=Path("/tmp/startup_index"))
    args = parser.parse_args()
    images, shards = args.work / "images", args.work / f"shards{args.shards}"
    if not shards.exists():
        rng = np.random.default_rng(0)
        images.mkdir(parents=True, exist_ok=True)
        for i in range(2 * args.shards):
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(images / f"{i:06d}.jpg")
        write_shards(images, shards, max_per_shard=2, progress=False)

    requested: list[str] = []

    class Recording(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Recording, directory=str(shards)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    urls = [f"{base}/shard-{i:06d}.tar" for i in range(args.shards)]
    megabytes = sum(p.stat().st_size for p in shards.glob("*.tar")) / 1e6
    try:
        for index in ("", "none"):
            requested.clear()
            t0 = time.perf_counter()
            counts = shard_counts(urls, index=index)
            seconds = time.perf_counter() - t0
            tars = sum(p.endswith(".tar") for p in requested)
            print(f"data.shard_index={index or '(default)'}: {counts.total} samples in {args.shards} shards "
                  f"({megabytes:.1f} MB); {tars} shards and {len(requested) - tars} other files requested; "
                  f"{seconds:.2f} s")
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
