"""The ``accelerate.Accelerator`` of a run: device, mixed precision, gradient accumulation, DDP or FSDP.

Whatever ``accelerate launch --config_file launch/accelerate/*.yaml`` chose (DDP, FSDP, one process) is
taken from the environment accelerate sets; selfsup only adds two things:

- without a GPU it tells accelerate ``cpu=True``, else accelerate would not set up the gloo process group;
- with an FSDP launch config and no GPU, accelerate silently falls back to DDP (it enables FSDP only on
  accelerators). selfsup then turns FSDP2 (``torch.distributed.fsdp.fully_shard``) on over gloo itself, so
  that the sharded path (wrapping, sharded checkpoints, full-weight gather for export) runs in CPU tests
  exactly as it does on GPUs. FSDP1 has no CPU support in PyTorch and is refused there with a clear error.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from selfsup.errors import ConfigError


def fsdp_requested() -> bool:
    """``accelerate launch`` with ``distributed_type: FSDP`` sets this variable in every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def make_accelerator(*, mixed_precision: str, grad_accum: int, device: str, project_dir: str) -> Accelerator:
    """Build the run's accelerator.

    Args:
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (fp16 adds a gradient scaler).
        grad_accum: micro-batches per optimizer step (no all-reduce on the intermediate ones).
        device: ``auto``, ``cpu`` or ``cuda`` (``train.device``).
        project_dir: the run folder (TensorBoard logs go there).
    """
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if cpu and mixed_precision == "fp16":  # accelerate would silently train in fp32 on the CPU
        raise ConfigError("train.mixed_precision=fp16 needs a GPU (accelerate has no fp16 autocast or gradient "
                          "scaler on the CPU); use bf16 or no")
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        cpu=cpu,
        log_with="tensorboard",
        project_dir=project_dir,
    )
    if cpu and fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        _enable_fsdp2_on_cpu(accelerator)
    return accelerator


def _enable_fsdp2_on_cpu(accelerator: Accelerator) -> None:
    """Switch a gloo (MULTI_CPU) accelerator to FSDP2, configured from the launch config's ``FSDP_*`` variables."""
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise ConfigError(
            f"FSDP_VERSION={version}: FSDP1 needs GPUs; on the CPU use fsdp_version: 2 in the accelerate config "
            f"(launch/accelerate/fsdp.yaml does)"
        )
    os.environ["FSDP_SYNC_MODULE_STATES"] = "false"  # every process builds the same weights from the same seed
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    # accelerate keeps its state in two shared dicts; AcceleratorState copies PartialState's on construction.
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
