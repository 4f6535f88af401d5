"""selfsup.train.step.TrainStep: the loop's one training step, and the step benchmarks/throughput.py times."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from selfsup.config import Config
from selfsup.errors import TrainingError
from selfsup.methods._dino_model import DINO
from selfsup.methods.dino import DINOConfig
from selfsup.models.backbone import create_backbone
from selfsup.train.accelerator import make_accelerator
from selfsup.train.state import TrainState
from selfsup.train.step import TrainStep, prepare_training
from tests.conftest import TINY_VIT

B = 4


def _dino() -> DINO:
    torch.manual_seed(0)
    heads = DINOConfig(out_dim=64, hidden_dim=32, bottleneck_dim=16)
    return DINO(create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"]), n_global=2,
                **dataclasses.asdict(heads))


def _views(seed: int = 0, fill: float | None = None) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(B, 3, 32, 32, generator=g) for _ in range(2)] + [torch.randn(B, 3, 16, 16, generator=g)]
    return [v.fill_(fill) for v in views] if fill is not None else views


def _train_step(tmp_path, *, grad_accum: int = 1, max_bad_steps: int = 5) -> TrainStep:
    cfg = Config()
    cfg.train.grad_accum, cfg.train.max_bad_steps = grad_accum, max_bad_steps
    accelerator = make_accelerator(mixed_precision="no", grad_accum=grad_accum, device="cpu",
                                   project_dir=str(tmp_path), log_with=[])
    method, optimizer = prepare_training(cfg, accelerator, _dino())
    method.train()
    return TrainStep(accelerator, method, optimizer, optim=cfg.optim, train=cfg.train, state=TrainState(step=10),
                     steps_per_epoch=10, total_steps=100, global_batch=B * grad_accum, run_dir=tmp_path)


def _weights(step: TrainStep) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in step.unwrapped.state_dict().items()}


def test_grad_accum_takes_that_many_micro_batches_for_one_update(tmp_path):
    step = _train_step(tmp_path, grad_accum=2)
    before = _weights(step)
    seeds = iter(range(10))
    out = step(lambda: _views(next(seeds)))
    assert next(seeds) == 2  # two micro-batches read
    assert (step.state.step, step.state.samples_seen, out.samples, out.bad) == (11, 2 * B, 2 * B, False)
    assert out.ctx.step == 10 and out.lr > 0 and torch.isfinite(out.loss)
    after = _weights(step)
    for prefix in ("student_backbone.", "teacher_backbone.", "criterion.center"):  # AdamW, EMA, center moved
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)), prefix


def test_non_finite_step_changes_nothing_and_too_many_stop(tmp_path):
    step = _train_step(tmp_path, max_bad_steps=2)
    step(lambda: _views(0))  # one good step: optimizer state exists
    before = _weights(step)
    out = step(lambda: _views(1, fill=float("nan")))
    assert out.bad and step.state.bad_steps_total == 1 and step.state.bad_steps_in_row == 1
    assert step.state.step == 12  # the step counts: the schedules move on
    after = _weights(step)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, teacher and DINO center restored
    with pytest.raises(TrainingError, match=r"2 non-finite steps in a row at step 13; last good checkpoint: \(none\)"):
        step(lambda: _views(2, fill=float("nan")))


def test_throughput_benchmark_times_this_step(tmp_path):
    from benchmarks.throughput import ours_step

    step = ours_step(_dino(), device=torch.device("cpu"), bf16=False, batch_size=B)
    assert type(step) is TrainStep
    step(lambda: _views(0))
    assert step.state.step == 11 and step.state.bad_steps_total == 0


@pytest.mark.parametrize("env,processes,expected", [(None, 1, 4), (None, 2, 2), (None, 3, 1), ("4", 2, 4)])
def test_cpu_threads_are_split_among_processes_not_given_up_to_data_workers(monkeypatch, env, processes, expected):
    """One process keeps torch's threads whatever its data workers (a CPU step outweighs its data); several
    processes on one machine split them; an explicit OMP_NUM_THREADS wins."""
    from selfsup.train.loop import set_cpu_threads

    before = torch.get_num_threads()
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    try:
        torch.set_num_threads(4)
        set_cpu_threads(processes)
        assert torch.get_num_threads() == expected
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("capability, expected", [("AVX2", "no"), ("DEFAULT", "no"), ("AVX512", "bf16")])
def test_bf16_on_a_cpu_without_bf16_instructions_trains_in_fp32_with_one_warning(tmp_path, monkeypatch, caplog,
                                                                                capability, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    with caplog.at_level("WARNING", logger="selfsup"):
        accelerator = make_accelerator(mixed_precision="bf16", grad_accum=1, device="cpu", project_dir=str(tmp_path),
                                       log_with=[])
    assert accelerator.mixed_precision == expected
    warned = [r.getMessage() for r in caplog.records if "bf16 matrix instructions" in r.getMessage()]
    assert len(warned) == (1 if expected == "no" else 0)
    if warned:
        assert capability in warned[0] and "train.mixed_precision=no" in warned[0]
