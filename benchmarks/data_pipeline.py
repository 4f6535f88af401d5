"""Images per second per CPU core, shards -> multi-crop tensors: selfsup's pipeline vs lightly's DINOTransform.

Both pipelines read the same webdataset shards with the same reader (``ShardStream``, one process, one
torch thread) and produce the same views (2 x 224 + N x 96 by default); they differ only in the
transform (``MultiCropTransform`` vs ``lightly.transforms.DINOTransform``) and in JPEG draft decoding.
Throughput is reported per CPU-second of this process (``time.process_time``), which is what one
DataLoader worker delivers, and is robust to other jobs on a shared machine; wall-clock is reported too.

Usage:
    python benchmarks/data_pipeline.py --quick --out bench_data.json
    python benchmarks/data_pipeline.py --data /work/shared/data/raccoon.tar.gz   # big photos: draft decoding helps
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from lightly.transforms import DINOTransform

from selfsup.build import multicrop_transform, stream_options
from selfsup.config import DataConfig, ViewsConfig
from selfsup.data.shard_list import expand_shards
from selfsup.data.shard_writer import write_shards
from selfsup.data.stream import ShardStream

DEFAULT_DATA = "/work/shared/data/flowers5.tar.gz"


def _measure(stream: ShardStream, n_images: int, warmup_batches: int = 1) -> dict[str, float]:
    it = iter(stream)
    for _ in range(warmup_batches):
        next(it)
    done = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    while done < n_images:
        done += len(next(it)["keys"])
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"images": done, "wall_s": wall, "cpu_s": cpu, "img_per_cpu_s": done / cpu, "img_per_wall_s": done / wall}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="a .tar.gz of images (extracted to a temp dir)")
    parser.add_argument("--quick", action="store_true", help="fewer images (finishes in about a minute)")
    parser.add_argument("--images", type=int, default=None, help="images to time per pipeline")
    parser.add_argument("--global-size", type=int, default=224)
    parser.add_argument("--local-size", type=int, default=96)
    parser.add_argument("--n-local", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    n_images = args.images or (160 if args.quick else 1000)
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(args.data) as tf:
            tf.extractall(tmp, filter="data")
        shard_dir = Path(tmp) / "_shards"
        summary = write_shards(
            [p for p in Path(tmp).iterdir() if p.is_dir()][0], shard_dir, max_per_shard=500, progress=False
        )
        urls = expand_shards(str(shard_dir))
        ours = multicrop_transform(ViewsConfig(global_crop_size=args.global_size, local_crop_size=args.local_size,
                                               n_local=args.n_local))
        theirs = DINOTransform(global_crop_size=args.global_size, local_crop_size=args.local_size,
                               n_local_views=args.n_local)
        common = dict(urls=urls, batch_size=args.batch_size, seed=0,
                      **stream_options(DataConfig(shuffle_buffer=0, shard_interleave=1)))
        results = {
            "lightly_DINOTransform": _measure(ShardStream(transform=theirs, **common), n_images),
            "selfsup_MultiCropTransform": _measure(
                ShardStream(transform=ours, draft_size=ours.draft_size, **common), n_images
            ),
        }
    ratio = results["selfsup_MultiCropTransform"]["img_per_cpu_s"] / results["lightly_DINOTransform"]["img_per_cpu_s"]
    report = {
        "data": os.path.basename(args.data),
        "shard_samples": summary.samples,
        "views": f"2x{args.global_size} + {args.n_local}x{args.local_size}",
        "torch_threads": 1,
        "cpu": platform.processor() or platform.machine(),
        "results": results,
        "speedup_per_core": ratio,
    }
    print(f"data: {report['data']} ({summary.samples} images), views {report['views']}, 1 process, 1 thread")
    print("| pipeline | images | img/s per CPU core | img/s wall |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['images']} | {r['img_per_cpu_s']:.1f} | {r['img_per_wall_s']:.1f} |")
    print(f"speedup per core (selfsup / lightly): {ratio:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
