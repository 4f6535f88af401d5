"""The plateau watch (train.on_plateau): a run that sits at its starting point is named while it happens."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from selfsup.errors import TrainingError
from selfsup.methods._simclr_model import SimCLR
from selfsup.models.backbone import create_backbone
from selfsup.train.loop import pretrain
from selfsup.train.plateau import PlateauWatch, plateau_reason
from tests.conftest import TINY_VIT
from tests.fixtures.pipeline import make_shards, tiny_config

UNIFORM = {"loss": 8.3, "loss_chance": math.log(4096), "teacher_entropy": 8.2, "teacher_entropy_max": math.log(4096)}


def test_plateau_reason_names_the_teacher_entropy_then_the_loss():
    assert "teacher_entropy 8.200" in plateau_reason(UNIFORM, 0.05)
    learning = {**UNIFORM, "teacher_entropy": 5.0, "loss": 4.0}
    assert plateau_reason(learning, 0.05) is None
    assert "loss 8.300 is within 5% of its chance level 8.318" in plateau_reason({**learning, "loss": 8.3}, 0.05)
    # DINO with KoLeo: the DINO term (objective_loss) is what has a chance level, not the sum
    assert plateau_reason({**learning, "loss": 8.3, "objective_loss": 3.0}, 0.05) is None
    # DINOv2 whose iBOT term keeps the objective below chance while the class token's teacher is near uniform (a
    # logged record of the CIFAR-10 run at teacher temperature 0.07 that ended at random-init kNN): named
    stuck = {"objective_loss": 11.22, "loss_chance": 15.249, "teacher_entropy": 7.428, "teacher_entropy_max": 7.625}
    assert "teacher_entropy 7.428 is within 5% of ln(out_dim) = 7.625" in plateau_reason(stuck, 0.05)
    # the quickstart's DINOv2 at its last logged step (kNN 70.1 against 67.2): 92% of ln(out_dim), not a plateau
    quickstart = {"objective_loss": 9.961, "loss_chance": 13.863,
                  "teacher_entropy": 6.390, "teacher_entropy_max": 6.931}
    assert plateau_reason(quickstart, 0.05) is None
    # no chance level logged: the entropy alone decides
    assert "teacher_entropy" in plateau_reason({"teacher_entropy": 8.2, "teacher_entropy_max": math.log(4096)}, 0.05)


def test_watch_fires_once_after_the_stretch_and_resets_when_the_run_moves(caplog):
    watch = PlateauWatch(steps=20, tolerance=0.05, action="warn", start_step=10, method="dino")
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        assert watch.observe(10, UNIFORM) is None  # still in the warmup
        lines = [watch.observe(step, UNIFORM) for step in range(15, 60, 5)]
    fired = [line for line in lines if line]
    assert len(fired) == 1 and fired[0].startswith("plateau since step 15:") and "for 20 steps" in fired[0]
    assert "method.dino.center=sinkhorn_knopp" in fired[0] and "optim.lr" in fired[0]
    assert sum("plateau since" in r.message for r in caplog.records) == 1
    assert watch.observe(60, {**UNIFORM, "teacher_entropy": 4.0, "loss": 4.0}) is None  # left the plateau
    assert watch.since is None
    off = PlateauWatch(steps=0, tolerance=0.05, action="stop", start_step=0, method="dino")
    assert off.observe(100, UNIFORM) is None  # off
    other = PlateauWatch(steps=1, tolerance=0.05, action="warn", start_step=0, method="dinov2")
    other.observe(1, UNIFORM)
    assert "method.dinov2.teacher_temp" in other.observe(2, UNIFORM)  # the keys of the method that runs
    already = PlateauWatch(steps=1, tolerance=0.05, action="warn", start_step=0, method="dinov2",
                           center="sinkhorn_knopp")
    already.observe(1, UNIFORM)
    line = already.observe(2, UNIFORM)  # Sinkhorn-Knopp is not suggested to a run that uses it
    assert "center=sinkhorn_knopp" not in line and "method.dinov2.teacher_temp" in line


def test_stop_raises_one_line():
    watch = PlateauWatch(steps=10, tolerance=0.05, action="stop", start_step=0, method="dino")
    watch.observe(5, UNIFORM)
    with pytest.raises(TrainingError) as e:
        watch.observe(15, UNIFORM)
    assert len(str(e.value).splitlines()) == 1 and "train.on_plateau=stop" in str(e.value)


def test_simclr_logs_its_chance_level_ln_2n_minus_1():
    torch.manual_seed(0)
    m = SimCLR(create_backbone(TINY_VIT["name"], model_args=TINY_VIT["model_args"]), proj_hidden_dim=16, out_dim=8,
               temperature=0.5)
    out = m.train()([torch.randn(6, 3, 32, 32) for _ in range(2)], m.step_context(0, 10, 100))
    assert float(out.logs["loss_chance"]) == pytest.approx(math.log(2 * 6 - 1))
    # a random encoder on unrelated views is at (here above) chance: on the plateau the watch looks for
    assert float(out.loss.detach()) >= 0.95 * math.log(11)


@pytest.mark.parametrize("method", ["dino", "simclr"])
def test_a_run_driven_onto_the_plateau_says_so_in_one_line(tmp_path, caplog, method):
    """DINO with a flat teacher (temperature 100: uniform targets, loss ln(out_dim)); SimCLR with a learning rate
    that moves nothing at a high temperature (loss at ln(2N - 1)). Both warn once and finish; with
    train.on_plateau=stop the same line ends the run."""
    shards = make_shards(tmp_path)
    extra = (["method.dino.warmup_teacher_temp=100", "method.dino.teacher_temp=100", "train.on_collapse=warn"]
             if method == "dino" else
             ["views.n_local=0", "optim.lr=1e-12", "method.simclr.temperature=5.0", "method.simclr.proj_hidden_dim=16",
              "method.simclr.out_dim=8"])
    common = [*extra, "train.plateau_steps=3", "train.max_steps=8"]
    with caplog.at_level(logging.WARNING, logger="selfsup"):
        summary = pretrain(tiny_config(tmp_path / "warn", shards, *common, method=method))
    assert summary["steps"] == 8
    lines = [r.message for r in caplog.records if r.message.startswith("plateau since")]
    assert len(lines) == 1 and "\n" not in lines[0]
    signal = "teacher_entropy" if method == "dino" else "loss"
    assert f": {signal} " in lines[0] and "train.on_plateau=warn" in lines[0]
    assert ("method.dino.center=sinkhorn_knopp" in lines[0]) == (method == "dino")  # mean centering: suggested
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    centred = ["method.dino.center=sinkhorn_knopp"] if method == "dino" else []  # already on: not suggested
    with pytest.raises(TrainingError, match="plateau since step") as stopped:
        pretrain(tiny_config(tmp_path / "stop", shards, *common, *centred, "train.on_plateau=stop", method=method))
    assert "center=sinkhorn_knopp" not in str(stopped.value)
