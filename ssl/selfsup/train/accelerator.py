"""The ``accelerate.Accelerator`` of a run: device, mixed precision, gradient accumulation, DDP or FSDP.

Whatever ``accelerate launch --config_file launch/accelerate/*.yaml`` chose (DDP, FSDP, one process) is
taken from the environment accelerate sets; selfsup only adds:

- without a GPU it tells accelerate ``cpu=True``, else accelerate would not set up the gloo process group;
- with an FSDP launch config and no GPU, accelerate silently falls back to DDP (it enables FSDP only on
  accelerators). selfsup then turns FSDP2 (``torch.distributed.fsdp.fully_shard``) on over gloo itself, so
  that the sharded path (wrapping, sharded checkpoints, full-weight gather for export) runs in CPU tests
  exactly as it does on GPUs. FSDP1 has no CPU support in PyTorch and is refused there with a clear error;
- on a CPU without bf16 matrix instructions (torch's CPU capability ``AVX2`` or less: no AVX-512 or AMX), bf16
  autocast runs through slow fallback kernels (tens of times slower than fp32: docs/speed.md), so
  ``train.mixed_precision=bf16`` trains in fp32 there, with one warning line;
- ``sync_batchnorm``: the contrastive heads' BatchNorm over the global batch under multi-GPU DDP.
"""

from __future__ import annotations

import logging
import os

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from selfsup.errors import ConfigError
from selfsup.train.trackers import tracker_list

log = logging.getLogger("selfsup")


def fsdp_requested() -> bool:
    """``accelerate launch`` with ``distributed_type: FSDP`` sets this variable in every process."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def uses_fsdp(accelerator: Accelerator) -> bool:
    """Whether the run's model is sharded with FSDP (on GPUs, or switched on over gloo by :func:`make_accelerator`)."""
    return accelerator.distributed_type == DistributedType.FSDP


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 matrix products natively: torch's CPU capability is an AVX-512 or AMX level (or a
    non-x86 vector unit), not ``DEFAULT``/``NO AVX``/``AVX2``."""
    return torch.backends.cpu.get_cpu_capability() not in ("DEFAULT", "NO AVX", "AVX2")


def make_accelerator(*, mixed_precision: str, grad_accum: int, device: str, project_dir: str,
                     log_with: list[str]) -> Accelerator:
    """Build the run's accelerator.

    Args:
        mixed_precision: ``no``, ``bf16`` or ``fp16`` (fp16 adds a gradient scaler).
        grad_accum: micro-batches per optimizer step (no all-reduce on the intermediate ones).
        device: ``auto``, ``cpu`` or ``cuda`` (``train.device``).
        project_dir: the run folder (TensorBoard logs go there).
        log_with: accelerate tracker names (``train.log_with``), see :mod:`selfsup.train.trackers`.
    """
    cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    if cpu and mixed_precision == "fp16":  # accelerate would silently train in fp32 on the CPU
        raise ConfigError("train.mixed_precision=fp16 needs a GPU (accelerate has no fp16 autocast or gradient "
                          "scaler on the CPU); use bf16 or no")
    if cpu and mixed_precision == "bf16" and not cpu_has_bf16():
        log.warning("train.mixed_precision=bf16: this CPU (torch capability %s) has no bf16 matrix instructions "
                    "(AVX-512 or AMX), where bf16 autocast is many times slower than fp32; training in fp32 "
                    "(train.mixed_precision=no)", torch.backends.cpu.get_cpu_capability())
        mixed_precision = "no"
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        cpu=cpu,
        log_with=tracker_list(log_with, project_dir),
        project_dir=project_dir,
    )
    if cpu and fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        enable_fsdp2_on_cpu(accelerator)
    return accelerator


def enable_fsdp2_on_cpu(accelerator: Accelerator) -> None:
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
    # No public API or hook for this in accelerate 1.14-1.15 (pyproject; tested with 1.15.0): its
    # AcceleratorState.__init__ sets distributed_type=FSDP and fsdp_plugin only for GPU-like types (MULTI_GPU, NPU,
    # XPU, ...), never for MULTI_CPU, and Accelerator(fsdp_plugin=...) is ignored there. So we set the two state
    # attributes the GPU path sets; tests/train/test_fsdp.py (2 gloo processes) fails if a later accelerate changes
    # them.
    # accelerate keeps its state in two shared dicts; AcceleratorState copies PartialState's on construction.
    PartialState().distributed_type = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def sync_batchnorm(model: torch.nn.Module, accelerator: Accelerator) -> int:
    """Turn every BatchNorm of ``model`` into ``torch.nn.SyncBatchNorm`` in place, as MoCo v3 does under DDP.

    The heads of MoCo v3, MoBY and SimCLR normalise with BatchNorm; per GPU, its statistics come from the
    local batch only, so they change with the number of GPUs. SyncBatchNorm computes them over the global
    batch. Parameters, buffers and state-dict keys are unchanged (checkpoints and export do not notice).
    Only under multi-GPU DDP: PyTorch's SyncBatchNorm has no CPU kernel, and one process has nothing to sync.

    Returns:
        The number of layers converted (0 where it does not apply).
    """
    if accelerator.num_processes < 2 or accelerator.device.type != "cuda" \
            or accelerator.distributed_type != DistributedType.MULTI_GPU:
        return 0
    batchnorms = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    count = sum(isinstance(m, batchnorms) for m in model.modules())
    if count:
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place: the root is never a BatchNorm here
        if accelerator.is_main_process:
            log.info("train.sync_bn: %d BatchNorm layers synchronised across %d GPUs", count,
                     accelerator.num_processes)
    return count
