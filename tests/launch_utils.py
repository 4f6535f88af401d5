"""Start real multi-process jobs with ``accelerate launch`` on the CPU (gloo), as users do."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DDP_2PROC = ROOT / "launch" / "accelerate" / "cpu_2proc.yaml"
FSDP = ROOT / "launch" / "accelerate" / "fsdp.yaml"


def fake_command(bin_dir: Path, name: str, body: str) -> None:
    """A bash script ``bin_dir/name`` standing in for a cluster command (put ``bin_dir`` first on PATH)."""
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args: str, accel: Path = DDP_2PROC, accel_args: tuple[str, ...] = (), **popen) -> subprocess.Popen:
    """``accelerate launch --config_file ACCEL [accel_args] ARGS`` in its own session (so it can be killed whole)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accel),
           "--main_process_port", str(free_port()), *accel_args, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'ssl'}:{ROOT}"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, **popen)


def wait_until(p: subprocess.Popen, ready, timeout: float = 240) -> None:
    """Poll ``ready()`` until it is true; fail if the job ``p`` ends first or ``timeout`` seconds pass."""
    deadline = time.time() + timeout
    while not ready():
        assert p.poll() is None, "the run ended before the interruption"
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(0.05)


def run(*args: str, timeout: float = 300, **kwargs) -> str:
    p = launch(*args, **kwargs)
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def merge_overrides(*overrides: str) -> list[str]:
    """``key=value`` overrides where a later one replaces an earlier one of the same key (the command line
    itself refuses a key given twice)."""
    return list({o.split("=", 1)[0]: o for o in overrides}.values())


def tiny_dino_args(run_dir: Path, shards: Path, *extra: str) -> list[str]:
    """``-m selfsup pretrain`` for a 2-block ViT-Tiny DINO at 32 px: 4 steps per epoch on 32 images, 2 epochs."""
    return ["-m", "selfsup", "pretrain", str(ROOT / "configs" / "dino_vit_tiny_cpu.yaml"), *merge_overrides(
        f"run.dir={run_dir}", f"data.shards={shards}", "data.num_workers=1", "data.shuffle_buffer=8",
        "model.args.img_size=32", "model.args.depth=2", "views.global_crop_size=32", "views.local_crop_size=16",
        "views.n_local=2", "method.dino.out_dim=128", "method.dino.hidden_dim=32", "method.dino.bottleneck_dim=16",
        "train.batch_size=4", "train.epochs=2", "train.progress=false", "optim.warmup_epochs=0.5",
        "train.mixed_precision=no", *extra)]
