"""Two processes over gloo on the CPU: what must agree across processes does, and resume is exact.

These start real process groups (torch.multiprocessing, and `accelerate launch` with
launch/accelerate/cpu_2proc.yaml), so they take a little longer than the unit tests.
"""

from __future__ import annotations

import json
import os
import signal

import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from lightly.loss import DINOLoss
from safetensors.torch import load_file

from selfsup.config import load_config
from selfsup.errors import ConfigError, DataError
from selfsup.train.checkpoint import list_checkpoints
from selfsup.train.loop import pretrain
from tests.fixtures.launch import ROOT, free_port, launch, merge_overrides, run, tiny_dino_args, wait_until
from tests.fixtures.pipeline import assert_same_weights, check_preempted_run, last_weights, logged_steps


def _dino_worker(rank: int, world: int, port: int, teacher, student, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    b = teacher.shape[1] // world
    loss_fn = DINOLoss(output_dim=teacher.shape[-1])
    loss = loss_fn(list(teacher[:, rank * b:(rank + 1) * b]), list(student[:, rank * b:(rank + 1) * b]),
                   teacher_temp=0.05)
    dist.all_reduce(loss)  # DDP averages gradients, i.e. the mean of the per-rank losses
    torch.save({"loss": loss / world, "center": loss_fn.center}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_dino_loss_and_center_match_single_process(tmp_path):
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(2, 8, 32, generator=g), torch.randn(5, 8, 32, generator=g)
    mp.spawn(_dino_worker, args=(2, free_port(), teacher, student, str(tmp_path)), nprocs=2, join=True)
    single = DINOLoss(output_dim=32)
    ref_loss = single(list(teacher), list(student), teacher_temp=0.05)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], ref_loss)
        torch.testing.assert_close(got["center"], single.center)  # identical on every rank


@pytest.fixture(scope="module")
def shards(ddp_shards):
    return ddp_shards


def test_two_ranks_two_workers_cover_an_epoch_once(tmp_path, shards):
    run(str(ROOT / "tests" / "fixtures" / "ddp_scripts" / "coverage.py"), str(shards), str(tmp_path))
    k0 = json.loads((tmp_path / "keys_0.json").read_text())
    k1 = json.loads((tmp_path / "keys_1.json").read_text())
    assert len(k0) + len(k1) == 32 == len(set(k0) | set(k1))  # every sample once, none twice
    assert not set(k0) & set(k1)


def test_kill_9_mid_epoch_then_resume_equals_uninterrupted(tmp_path, shards, ddp_uninterrupted):
    # 32 samples, global batch 8: 4 steps per epoch, 8 in all; the kill lands mid-epoch 1 or 2.
    p = launch(*tiny_dino_args(tmp_path / "cut", shards, "train.save_every=1"))
    wait_until(p, (tmp_path / "cut" / "checkpoints" / "step_00000003").exists)
    os.killpg(p.pid, signal.SIGKILL)  # every process of the job, no clean-up
    p.wait()
    killed_at = [c.name for c in list_checkpoints(tmp_path / "cut")][-1]
    assert killed_at != "step_00000008"
    run(*tiny_dino_args(tmp_path / "cut", shards, "train.save_every=8", "train.resume=auto"))
    assert list_checkpoints(tmp_path / "cut")[-1].name == "step_00000008"
    assert_same_weights(ddp_uninterrupted, tmp_path / "cut", f"after resuming from {killed_at}")


def test_sigterm_to_a_ddp_job_saves_one_step_on_every_process_and_resumes_bit_identical(tmp_path, shards,
                                                                                        ddp_uninterrupted):
    """SIGTERM mid-epoch, no periodic checkpoint due, to the launcher, both training processes and their data
    workers at once (what SLURM does on pre-emption); the launcher forwards it too: a second signal to each."""
    p = launch(*tiny_dino_args(tmp_path / "cut", shards, "train.save_every=100", "train.log_every=1"))
    wait_until(p, lambda: len(logged_steps(tmp_path / "cut")) >= 2)
    job = psutil.Process(p.pid)
    for proc in [job, *job.children(recursive=True)]:
        proc.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGTERM, out[-3000:]  # the launcher's own status; each process exits 75
    reached = check_preempted_run(tmp_path / "cut", out, processes=2)
    assert reached < 8
    run(*tiny_dino_args(tmp_path / "cut", shards, "train.save_every=8", "train.resume=auto"))
    assert_same_weights(ddp_uninterrupted, tmp_path / "cut", f"after resuming from step {reached}")


def test_grad_accum_all_reduces_once_per_optimizer_step(tmp_path, shards):
    """train.grad_accum=2 under DDP: gradients are all-reduced on the last micro-batch only, so the same number of
    optimizer steps costs the same number of all-reduces as without accumulation (not twice as many)."""
    counts = {}
    for accum, batch in ((1, 4), (2, 2)):
        out = tmp_path / f"accum{accum}"
        args = tiny_dino_args(out / "run", shards, "train.max_steps=3", "train.save_every=100",
                              f"train.grad_accum={accum}", f"train.batch_size={batch}")[3:]  # CONFIG key=value ...
        out.mkdir()
        run(str(ROOT / "tests" / "fixtures" / "ddp_scripts" / "count_allreduce.py"), str(out), *args)
        counts[accum] = [json.loads((out / f"allreduce_{r}.json").read_text()) for r in range(2)]
    for accum in (1, 2):
        assert all(c["steps"] == 3 for c in counts[accum])
        assert counts[accum][0]["calls"] == counts[accum][1]["calls"] > 0
    assert counts[2][0]["calls"] == counts[1][0]["calls"]


def test_run_dir_not_shared_by_all_processes_fails_early_everywhere(tmp_path):
    run(str(ROOT / "tests" / "fixtures" / "ddp_scripts" / "shared_run_dir.py"), str(tmp_path))
    for rank in range(2):
        got = json.loads((tmp_path / f"shared_{rank}.json").read_text())
        assert got["shared_ok"] and not got["marker_left"]
        # node1 cannot see what the main process wrote in its folder: every process gets the same error
        assert "1 of 2 processes do not see the main process's files" in got["split_error"]
        assert "filesystem all nodes share" in got["split_error"]


def test_every_process_holds_the_same_student_teacher_and_center(tmp_path, shards):
    """Under DDP each process keeps its own copy of the method. After training, student, EMA teacher and DINO
    center must be bit-identical on both processes (the checkpoint only stores the main process's copy)."""
    args = tiny_dino_args(tmp_path / "run", shards, "train.max_steps=5", "train.save_every=5")[3:]
    run(str(ROOT / "tests" / "fixtures" / "ddp_scripts" / "rank_states.py"), str(tmp_path), *args)
    r0, r1 = (load_file(str(tmp_path / f"rank{r}_step5.safetensors")) for r in range(2))
    assert r0.keys() == r1.keys() and any(k.startswith("teacher_") for k in r0) and "criterion.center" in r0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between the two processes"
    assert r0["criterion.center"].abs().sum() > 0  # the center was updated, not left at its zero init
    saved = last_weights(tmp_path / "run")
    assert all(torch.equal(saved[k], r0[k]) for k in saved)


def test_elastic_resume_on_another_number_of_processes(tmp_path, shards):
    """2 processes write step 3; one process resumes. Exact resume refuses the new layout (naming the option);
    train.resume_elastic=true needs the same global batch and then continues step, model and optimizer."""
    args = tiny_dino_args(tmp_path / "run", shards)[3:]  # CONFIG key=value ...
    run("-m", "selfsup", "pretrain", *args, "train.max_steps=3", "train.save_every=3")  # 2 x batch 4
    one_process = [f"train.resume={list_checkpoints(tmp_path / 'run')[-1]}", "train.save_every=100"]

    with pytest.raises(DataError, match="world_size=2 but this run has world_size=1.*train.resume_elastic=true"):
        pretrain(load_config(args[0], merge_overrides(*args[1:], *one_process, "train.batch_size=8")))
    with pytest.raises(ConfigError, match="global batch is 8, this run's is 4.*train.batch_size=8"):
        pretrain(load_config(args[0], merge_overrides(*args[1:], *one_process, "train.batch_size=4",
                                                      "train.resume_elastic=true")))
    summary = pretrain(load_config(args[0], merge_overrides(*args[1:], *one_process, "train.batch_size=8",
                                                            "train.resume_elastic=true")))
    assert summary["steps"] == 8 and summary["steps_this_run"] == 5
    ckpt = list_checkpoints(tmp_path / "run")[-1]
    assert ckpt.name == "step_00000008"
    # the optimizer state was carried over: AdamW has counted all 8 steps, not the 5 of this process (DINO's
    # last layer, frozen in epoch 0, has fewer)
    optimizer = torch.load(ckpt / "optimizer.bin", weights_only=True)
    assert max(int(s["step"]) for s in optimizer["state"].values()) == 8
    state = json.loads((ckpt / "train_state_0.json").read_text())
    assert state["data"]["world_size"] == 1 and state["global_batch"] == 8
