"""Shared fixtures: tiny backbones, and making the repo's source root importable without install."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: with data workers and subprocesses beside the test process on
# 2 cores, spinning threads made steps many times slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for p in (ROOT / "ssl", ROOT):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

# ../shared/data beside the checkout (CI and developers), else this workplace's copy.
SHARED_DATA = next((p for p in (ROOT.parent / "shared" / "data", Path("/work/shared/data")) if p.is_dir()),
                   ROOT.parent / "shared" / "data")

torch.set_num_threads(1)  # tests run beside data workers and other processes on 2 cores

TINY_VIT = dict(name="vit_tiny_patch16_224", model_args=dict(img_size=32, patch_size=8))
TINY_SWIN = dict(
    name="swin_tiny_patch4_window7_224",
    model_args=dict(img_size=32, patch_size=4, window_size=4, embed_dim=24, depths=(1, 1), num_heads=(1, 2)),
)


@pytest.fixture(params=["vit", "swin"])
def tiny_backbone_spec(request):
    return TINY_VIT if request.param == "vit" else TINY_SWIN


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process run builds its own Accelerator (mixed precision differs between tests); accelerate keeps
    one process-wide state, so reset it between tests as accelerate's own test-suite does."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def ddp_shards(tmp_path_factory):
    """32 images in 8 shards: 4 steps per epoch for 2 processes x batch 4 (tests/launch_utils.tiny_dino_args)."""
    from tests.fixtures.pipeline import make_shards

    return make_shards(tmp_path_factory.mktemp("ddp_data"), n_per_class=16, max_per_shard=4)


@pytest.fixture(scope="session")
def ddp_uninterrupted(tmp_path_factory, ddp_shards):
    """``tiny_dino_args`` on 2 gloo processes, 8 steps without a stop: what every 2-process run that was interrupted
    and resumed (kill -9, pre-emption, two nodes) must equal, bit for bit."""
    from tests.fixtures.launch import run, tiny_dino_args

    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(*tiny_dino_args(out, ddp_shards, "train.save_every=8"))
    return out
