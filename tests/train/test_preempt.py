"""Pre-emption: SIGTERM or SIGUSR1 mid-epoch (no periodic checkpoint due) ends the run after its step with a
complete checkpoint at that step, one line and exit status 75; resuming from it equals an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from accelerate import Accelerator

from selfsup.config import load_config
from selfsup.errors import Preempted
from selfsup.methods._dino_model import DINO
from selfsup.train.checkpoint import list_checkpoints, read_checkpoint_weights
from selfsup.train.loop import pretrain
from selfsup.train.preempt import PREEMPTED_EXIT
from tests.fixtures.launch import ROOT, merge_overrides, tiny_dino_args, wait_until
from tests.fixtures.pipeline import assert_same_weights, check_preempted_run, logged_steps, make_shards, tiny_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    # 32 images: 8 steps per epoch (batch 4); the test of 2 processes is in tests/train/test_ddp.py
    return make_shards(tmp_path_factory.mktemp("preempt_data"), n_per_class=16, max_per_shard=4)


def _pretrain_in_process(args: list[str], *extra: str) -> dict:
    """``selfsup pretrain`` with the arguments of :func:`tiny_dino_args`, in this process."""
    return pretrain(load_config(args[3], merge_overrides(*args[4:], *extra)))


def test_sigterm_saves_the_step_reached_exits_75_and_resumes_bit_identical(tmp_path, shards):
    """One process with a data worker, both signalled (as a scheduler signals every process of a job)."""
    args = tiny_dino_args(tmp_path / "cut", shards, "train.save_every=100", "train.log_every=1", "train.epochs=4")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'ssl'}:{ROOT}"}
    p = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_until(p, lambda: len(logged_steps(tmp_path / "cut")) >= 2)
    os.killpg(p.pid, signal.SIGTERM)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == PREEMPTED_EXIT, out[-3000:]
    reached = check_preempted_run(tmp_path / "cut", out, processes=1)
    assert reached < 32

    resumed = _pretrain_in_process(args, "train.resume=auto", f"train.max_steps={reached + 2}")
    assert resumed["steps_this_run"] == 2
    _pretrain_in_process(tiny_dino_args(tmp_path / "full", shards, "train.save_every=100", "train.epochs=4"),
                         f"train.max_steps={reached + 2}")
    assert_same_weights(tmp_path / "full", tmp_path / "cut", f"after resuming from step {reached}")


def test_second_signal_during_the_preemption_save_changes_nothing(tmp_path, shards, monkeypatch):
    """SIGUSR1 in the third step, then SIGTERM and SIGUSR1 again while its checkpoint is written: the save finishes,
    the earlier checkpoint stays loadable, the signal handlers are given back."""
    forward, save_state = DINO.forward, Accelerator.save_state

    def forward_signalled(self, views, ctx):
        if ctx.step == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return forward(self, views, ctx)

    def save_signalled(self, output_dir=None, **kw):
        if output_dir.endswith("step_00000003"):
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGUSR1)
        return save_state(self, output_dir=output_dir, **kw)

    monkeypatch.setattr(DINO, "forward", forward_signalled)
    monkeypatch.setattr(Accelerator, "save_state", save_signalled)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    run_dir = tmp_path / "r"
    with pytest.raises(Preempted) as e:
        pretrain(tiny_config(run_dir, shards, "train.max_steps=8", "train.save_every=2", "train.keep_last=5"))
    assert e.value.step == 3 and "pre-empted (SIGUSR1)" in str(e.value)
    assert [c.name for c in list_checkpoints(run_dir)] == ["step_00000002", "step_00000003"]
    assert all(read_checkpoint_weights(c) for c in list_checkpoints(run_dir))
    assert logged_steps(run_dir) == [1, 2, 3]
    assert {s: signal.getsignal(s) for s in before} == before
