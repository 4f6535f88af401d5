"""The launch scripts compose the right `accelerate launch` commands (fake `srun`, `scontrol` and `accelerate`
on PATH record what would run on each node)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _fake_cluster(tmp_path: Path, nodes: int) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    # scontrol: the job's host names; srun: run the command once per node with its SLURM_NODEID;
    # accelerate: record its arguments, one line per call (and the exact argv as JSON in ARGV_LOG).
    _fake(bin_dir, "scontrol", "printf 'gpu-a\\ngpu-b\\ngpu-c\\n'\n")
    _fake(bin_dir, "srun", f'shift; for i in $(seq 0 {nodes - 1}); do SLURM_NODEID=$i "$@"; done\n')
    argv_log = tmp_path / "argv.jsonl"
    _fake(bin_dir, "accelerate", f'echo "$*" >> {log}\n'
          f'{sys.executable} -c "import json, sys; print(json.dumps(sys.argv[1:]))" "$@" >> {argv_log}\n')
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-[a-c]",
            "SLURM_NNODES": str(nodes), "LOG": str(log), "ARGV_LOG": str(argv_log)}


def test_slurm_template_starts_one_launch_per_node_with_rank_and_main_host(tmp_path):
    env = _fake_cluster(tmp_path, nodes=2)
    subprocess.run(["bash", str(ROOT / "launch" / "slurm.sbatch"), "configs/dino_vit_small.yaml", "data.shards=/d"],
                   cwd=ROOT, env=env, check=True)
    calls = Path(env["LOG"]).read_text().splitlines()
    assert len(calls) == 2
    for rank, call in enumerate(calls):
        args = call.split()
        assert args[0] == "launch"
        assert args[args.index("--config_file") + 1] == "launch/accelerate/multinode_ddp.yaml"
        assert args[args.index("--machine_rank") + 1] == str(rank)
        assert args[args.index("--main_process_ip") + 1] == "gpu-a"
        assert args[args.index("--num_machines") + 1] == "2"
        assert args[args.index("--num_processes") + 1] == "16"  # 2 nodes x 8 GPUs
        assert args[-4:] == ["pretrain", "configs/dino_vit_small.yaml", "train.resume=auto", "data.shards=/d"]


def test_slurm_template_passes_overrides_unchanged(tmp_path):
    """A brace pattern, a space, a quote and a `$` reach `selfsup pretrain` as the user wrote them (no re-parse)."""
    env = _fake_cluster(tmp_path, nodes=2)
    overrides = ["data.shards=/d/shard-{000000..001023}.tar", "run.dir=/runs/my run", "model.name=it's", "x=$HOME"]
    subprocess.run(["bash", str(ROOT / "launch" / "slurm.sbatch"), "configs/dino_vit_small.yaml", *overrides],
                   cwd=ROOT, env=env, check=True)
    calls = [json.loads(line) for line in Path(env["ARGV_LOG"]).read_text().splitlines()]
    assert calls == [[
        "launch", "--config_file", "launch/accelerate/multinode_ddp.yaml", "--num_machines", "2",
        "--num_processes", "16", "--machine_rank", str(rank), "--main_process_ip", "gpu-a",
        "--main_process_port", "29500", "-m", "selfsup", "pretrain", "configs/dino_vit_small.yaml",
        "train.resume=auto", *overrides] for rank in (0, 1)]


def test_slurm_template_adds_no_second_train_resume(tmp_path):
    env = _fake_cluster(tmp_path, nodes=1)
    subprocess.run(["bash", str(ROOT / "launch" / "slurm.sbatch"), "c.yaml", "train.resume=runs/x/checkpoints/step_9"],
                   cwd=ROOT, env=env, check=True)
    (call,) = [json.loads(line) for line in Path(env["ARGV_LOG"]).read_text().splitlines()]
    assert call[-2:] == ["c.yaml", "train.resume=runs/x/checkpoints/step_9"]


def test_slurm_template_takes_another_accelerate_config(tmp_path):
    env = {**_fake_cluster(tmp_path, nodes=1), "ACCEL_CONFIG": "launch/accelerate/fsdp.yaml", "GPUS_PER_NODE": "4"}
    subprocess.run(["bash", str(ROOT / "launch" / "slurm.sbatch"), "c.yaml"], cwd=ROOT, env=env, check=True)
    args = Path(env["LOG"]).read_text().split()
    assert args[args.index("--config_file") + 1] == "launch/accelerate/fsdp.yaml"
    assert args[args.index("--num_processes") + 1] == "4"


def test_pretrain_sh_checks_its_files_and_passes_everything_on(tmp_path):
    env = _fake_cluster(tmp_path, nodes=1)
    bad = subprocess.run(["bash", "launch/pretrain.sh", "configs/nope.yaml", "launch/accelerate/1gpu.yaml"],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "file not found: configs/nope.yaml" in bad.stderr
    env["ACCELERATE_ARGS"] = "--num_processes 2 --mixed_precision no"
    subprocess.run(["bash", "launch/pretrain.sh", "configs/dino_vit_tiny_cpu.yaml", "launch/accelerate/fsdp.yaml",
                    "train.max_steps=1"], cwd=ROOT, env=env, check=True)
    assert Path(env["LOG"]).read_text().split() == [
        "launch", "--config_file", "launch/accelerate/fsdp.yaml", "--num_processes", "2", "--mixed_precision", "no",
        "-m", "selfsup", "pretrain", "configs/dino_vit_tiny_cpu.yaml", "train.max_steps=1"]
