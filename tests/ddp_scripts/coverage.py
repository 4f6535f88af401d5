"""Run under `accelerate launch` with 2 processes: read one nominal epoch with 2 loader workers per process
and write the keys each rank saw to OUT/keys_<rank>.json."""

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

from selfsup.build import stream_options
from selfsup.config import DataConfig
from selfsup.data.loader import make_loader
from selfsup.data.shard_list import expand_shards
from selfsup.data.stream import ShardStream


def main(shards: str, out: str) -> None:
    acc = Accelerator(cpu=True)
    ds = ShardStream(urls=expand_shards(shards), transform=lambda img: [torch.zeros(1)], batch_size=2, seed=0,
                     rank=acc.process_index, world_size=acc.num_processes,
                     **stream_options(DataConfig(shuffle_buffer=8, shard_interleave=1)))
    keys = []
    for batch in make_loader(ds, num_workers=2, pin_memory=False):
        epochs = batch["meta"].get("sample_epochs") or [batch["meta"]["epoch"]] * len(batch["keys"])
        keys += [k for k, e in zip(batch["keys"], epochs) if e == 0]
        if min(epochs) > 0:
            break
    Path(out, f"keys_{acc.process_index}.json").write_text(json.dumps(keys))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
