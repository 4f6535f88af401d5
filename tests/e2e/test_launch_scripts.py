"""The launch scripts compose the right `accelerate launch` commands (fake `srun`, `scontrol` and `accelerate`
on PATH record what would run on each node), and launch/slurm.sbatch runs for real: two "nodes" on this machine,
a time-limit warning, a requeue and a resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from selfsup.train.checkpoint import list_checkpoints
from selfsup.train.preempt import PREEMPTED_EXIT
from tests.fixtures.launch import ROOT, fake_command, free_port, tiny_dino_args, wait_until
from tests.fixtures.pipeline import assert_same_weights, check_preempted_run, logged_steps


def _fake_cluster(tmp_path: Path, nodes: int) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    # scontrol: the job's host names; srun: run the command once per node with its SLURM_NODEID;
    # accelerate: record its arguments, one line per call (and the exact argv as JSON in ARGV_LOG).
    fake_command(bin_dir, "scontrol", "printf 'gpu-a\\ngpu-b\\ngpu-c\\n'\n")
    fake_command(bin_dir, "srun", f'shift; for i in $(seq 0 {nodes - 1}); do SLURM_NODEID=$i "$@"; done\n')
    argv_log = tmp_path / "argv.jsonl"
    fake_command(bin_dir, "accelerate", f'echo "$*" >> {log}\n'
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


# srun as on a cluster: every node's task at once (labelled output, as `srun --label`), signals passed on to the
# tasks, the highest task status as its own
PARALLEL_SRUN = r"""
while [[ "$1" == --* ]]; do shift; done
pids=()
for i in $(seq 0 $((SLURM_NNODES - 1))); do
  SLURM_NODEID=$i "$@" > >(sed -u "s/^/$i: /") 2>&1 &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null || true' TERM
trap 'kill -USR1 "${pids[@]}" 2>/dev/null || true' USR1
status=0
for pid in "${pids[@]}"; do
  while :; do s=0; wait "$pid" || s=$?; kill -0 "$pid" 2>/dev/null || break; done
  if (( s > status )); then status=$s; fi
done
exit $status
"""


def _two_node_job(tmp_path: Path, shards: Path, *extra: str) -> subprocess.Popen:
    """launch/slurm.sbatch on two "nodes" of this machine (1 process each over gloo, 127.0.0.1 as the main host)."""
    bin_dir = tmp_path / "bin"
    if not bin_dir.is_dir():
        bin_dir.mkdir()
        fake_command(bin_dir, "srun", PARALLEL_SRUN)
        fake_command(bin_dir, "scontrol", f'if [ "$1" = requeue ]; then echo "$2" >> {tmp_path}/requeued; '
                                          f'else echo 127.0.0.1; fi\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": f"{ROOT / 'ssl'}:{ROOT}", "OMP_NUM_THREADS": "1", "SLURM_JOB_NODELIST": "node[0-1]",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "GPUS_PER_NODE": "1", "MAIN_PORT": str(free_port()),
           "ACCEL_CONFIG": "launch/accelerate/multinode_cpu.yaml"}
    config, *overrides = tiny_dino_args(tmp_path / "run", shards, *extra)[3:]
    return subprocess.Popen(["bash", "launch/slurm.sbatch", config, *overrides], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_slurm_template_on_two_real_nodes_saves_at_the_warning_requeues_and_resumes(tmp_path, ddp_shards,
                                                                                   ddp_uninterrupted):
    """Rendezvous over 127.0.0.1, global ranks 0 and 1 (local rank 0 on each node, one process per machine), the
    data slots of a one-node 2-process run (same weights as it, bit for bit), the main process alone writing the
    run's files and each process its own train state; USR1 to the batch script saves, requeues, and the requeued
    job resumes with train.resume=auto."""
    run = tmp_path / "run"
    job = _two_node_job(tmp_path, ddp_shards, "train.save_every=100", "train.log_every=1")
    wait_until(job, lambda: len(logged_steps(run)) >= 1)
    os.kill(job.pid, signal.SIGUSR1)  # what `#SBATCH --signal=B:USR1@120` does before the time limit
    out, _ = job.communicate(timeout=180)
    assert job.returncode == PREEMPTED_EXIT, out[-4000:]
    assert (tmp_path / "requeued").read_text() == "4242\n"
    reached = check_preempted_run(run, out, processes=2)
    saved = list_checkpoints(run)[0]
    assert reached < 8
    start = [line for line in out.splitlines() if "MULTI_CPU on" in line]
    assert len(start) == 1 and start[0].startswith("0: ") and "2 process(es), 1 per machine" in start[0], start
    assert [ln[:3] for ln in out.splitlines() if "pre-empted (SIGTERM)" in ln] == ["0: "]  # logged by node 0 only
    for rank in (0, 1):  # node r's process is global rank r of 2 and reads that rank's data slot
        data = json.loads((saved / f"train_state_{rank}.json").read_text())["data"]
        assert (data["rank"], data["world_size"]) == (rank, 2)

    job = _two_node_job(tmp_path, ddp_shards, "train.save_every=8", "train.log_every=1")  # the requeued job
    out, _ = job.communicate(timeout=180)
    assert job.returncode == 0, out[-4000:]
    assert f"resumed from {saved} at step {reached}" in out
    assert logged_steps(run) == list(range(1, 9))  # one line per step: node 1 writes no metrics
    assert [c.name for c in list_checkpoints(run)][-1] == "step_00000008"
    assert json.loads((run / "summary.json").read_text())["process_index"] == 0
    assert_same_weights(ddp_uninterrupted, run, f"after two nodes resumed from step {reached}")
