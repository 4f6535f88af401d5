"""kNN monitor, checkpoints/best/, export --which, and collapse detection (docs/monitor.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from selfsup.cli import main as cli_main
from selfsup.errors import CheckpointError, TrainingError
from selfsup.export import export
from selfsup.train.best import best_checkpoint, read_best, save_best
from selfsup.train.checkpoint import latest_checkpoint, list_checkpoints, resolve_resume
from selfsup.train.collapse import CollapseGuard, collapse_reason
from selfsup.train.loop import pretrain
from tests.fixtures.pipeline import export_knn_top1, make_hard_folder, make_shards, metrics, tiny_config


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitor")
    return make_shards(tmp), make_hard_folder(tmp / "labelled")


def test_monitor_logs_keeps_best_and_export_picks_it(tmp_path, data, capsys):
    shards, labelled = data
    run = tmp_path / "run"
    cfg = tiny_config(run, shards, f"monitor.data={labelled}", "monitor.every=2", "monitor.max_train=30",
                      "monitor.max_val=18", "train.max_steps=5", "train.save_every=1", "train.keep_last=1")
    cfg.train.log_every = 10  # tiny_config logs every step
    summary = pretrain(cfg)
    knn = [r for r in metrics(run) if "knn_top1" in r]
    # at the start, every monitor.every steps, and at the last step; logged even off the log_every grid
    assert [r["step"] for r in knn] == [0, 2, 4, 5]
    assert all(0.0 <= r["knn_top1"] <= 1.0 and r["monitor_s"] > 0 for r in knn)
    assert "loss" in knn[1]  # a monitor step is a full log record (same line, same TensorBoard step)
    best_score = max(r["knn_top1"] for r in knn)
    best_step = next(r["step"] for r in knn if r["knn_top1"] == best_score)
    assert knn[-1]["knn_top1_best"] == best_score == summary["monitor"]["knn_top1_best"]
    assert read_best(run)["step"] == best_step and read_best(run)["score"] == best_score
    # best is never pruned (keep_last=1 kept one step checkpoint) and never taken for resume
    assert [p.name for p in list_checkpoints(run)] == ["step_00000005"]
    assert best_checkpoint(run) == run / "checkpoints" / "best"
    assert latest_checkpoint(run).name == "step_00000005" == resolve_resume("auto", run).name
    # TensorBoard got the score too
    assert list((run / "tensorboard").rglob("events.out.tfevents.*")) or list(run.rglob("events.out.tfevents.*"))

    # export: best by default (a monitor ran), last on request; the best export scores what the monitor said
    res = export(run, tmp_path / "best")
    assert Path(res["checkpoint"]).name == "best" and res["step"] == best_step
    assert cli_main(["export", str(run), str(tmp_path / "last"), "--which", "last"]) == 0
    assert "(step 5, checkpoints/step_00000005)" in capsys.readouterr().out
    assert json.loads((tmp_path / "last" / "config.json").read_text())["selfsup"]["step"] == 5

    # the monitor's preprocessing is selfsup-eval's: same features, same kNN top-1 on the same images
    assert export_knn_top1(tmp_path / "best", labelled, max_train=30, max_val=18) == pytest.approx(best_score,
                                                                                                   abs=1e-6)


def test_fsdp_scores_like_one_process(tmp_path, data):
    """Under FSDP the sharded encoder is gathered into a plain copy to be scored: same score as one process."""
    from tests.fixtures.launch import FSDP, run, tiny_dino_args

    shards, _ = data
    labelled = make_hard_folder(tmp_path / "faint", tint=6)
    args = (f"monitor.data={labelled}", "monitor.every=2", "monitor.max_train=30", "monitor.max_val=18",
            "train.max_steps=2")
    run(*tiny_dino_args(tmp_path / "fsdp", shards, *args), accel=FSDP, accel_args=("--num_processes", "2"))
    pretrain(tiny_config(tmp_path / "one", shards, *args))  # the same model, seed and init
    step0 = [[r["knn_top1"] for r in metrics(tmp_path / name) if r["step"] == 0][0] for name in ("fsdp", "one")]
    assert 0 < step0[0] < 1 and step0[0] == pytest.approx(step0[1], abs=1e-6)
    assert read_best(tmp_path / "fsdp")["score"] >= step0[0]


def test_monitor_on_shards_with_cls_and_resume_keeps_best(tmp_path, data):
    shards, _ = data  # written from a class folder: every sample has `cls`
    run = tmp_path / "run"
    args = [f"monitor.data={shards}", "monitor.every=2", "train.save_every=2"]
    pretrain(tiny_config(run, shards, *args, "train.max_steps=2"))
    first = read_best(run)
    pretrain(tiny_config(run, shards, *args, "train.max_steps=4", "train.resume=auto"))
    knn = [r for r in metrics(run) if "knn_top1" in r]
    assert [r["step"] for r in knn] == [0, 2, 4]  # no second step-0 baseline on resume
    assert read_best(run)["score"] == max(r["knn_top1"] for r in knn) >= first["score"]


def test_export_which_best_without_monitor_is_one_line(tmp_path, data, capsys):
    shards, _ = data
    run = tmp_path / "run"
    pretrain(tiny_config(run, shards, "train.max_steps=2"))
    assert cli_main(["export", str(run), str(tmp_path / "out"), "--which", "best"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "monitor.data" in err and "--which last" in err
    assert not (tmp_path / "out").exists()
    assert export(run, tmp_path / "out")["step"] == 2  # default without a monitor: the newest checkpoint


def test_best_is_written_atomically(tmp_path):
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    save_best(acc, tmp_path, model, step=1, score=0.5, extra_files={"config.yaml": "a: 1\n"})
    before = (tmp_path / "checkpoints" / "best" / "model.safetensors").read_bytes()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    acc.save_model = disk_full  # a failing write leaves the previous best as it was
    with pytest.raises(CheckpointError, match="previous best .*best is intact"):
        save_best(acc, tmp_path, torch.nn.Linear(3, 2), step=2, score=0.9, extra_files={})
    assert read_best(tmp_path)["step"] == 1
    assert (tmp_path / "checkpoints" / "best" / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "checkpoints" / ".tmp-best").exists()
    # a kill between the two renames of a swap: readers fall back to the previous best
    (tmp_path / "checkpoints" / "best").rename(tmp_path / "checkpoints" / ".prev-best")
    assert read_best(tmp_path)["step"] == 1


# --- collapse -------------------------------------------------------------------------------------------------

HEALTHY = {"embed_std": 0.06, "embed_std_healthy": 0.0722, "teacher_entropy": 3.0,
           "teacher_entropy_max": math.log(4096)}


@pytest.mark.parametrize("signal,value,word", [("embed_std", 0.001, "embed_std"),
                                               ("teacher_entropy", 0.01, "one-hot"),
                                               ("teacher_entropy", 8.3, "uniform")])
def test_collapse_reason_thresholds(signal, value, word):
    assert collapse_reason(HEALTHY) is None
    reason = collapse_reason({**HEALTHY, signal: value})
    assert reason is not None and word in reason and signal in reason


def test_guard_patience_warmup_and_warn(caplog):
    bad = {**HEALTHY, "teacher_entropy": 8.3}
    guard = CollapseGuard(patience=3, action="stop", start_step=10, last_healthy=Path("ck/step_00000010"))
    for step in range(1, 11):  # during warmup: not checked
        guard.observe(step, bad)
    guard.observe(11, bad)
    guard.observe(12, bad)
    guard.observe(13, HEALTHY)  # a healthy log resets the count
    guard.observe(14, bad)
    guard.observe(15, bad)
    assert not guard.allows_save
    with pytest.raises(TrainingError,
                       match=r"teacher_entropy 8\.3 .*since step 14; last healthy checkpoint: ck/step_00000010"):
        guard.observe(16, bad)
    warn = CollapseGuard(patience=2, action="warn", start_step=0)
    for step in range(1, 6):
        warn.observe(step, bad)
    assert warn.allows_save and sum("collapse at step" in r.message for r in caplog.records) == 1


def test_forced_collapse_stops_the_run(tmp_path, data):
    """A flat teacher (temperature 100: the uniform collapse of DINO's Sec. 5.3) stops the run after the warmup,
    naming the signal, its value and the last checkpoint written before the collapse."""
    shards, _ = data
    run = tmp_path / "run"
    cfg = tiny_config(run, shards, "method.dino.warmup_teacher_temp=100", "method.dino.teacher_temp=100",
                      "train.collapse_patience=3", "train.save_every=2",
                      "train.max_steps=12")
    with pytest.raises(TrainingError) as e:
        pretrain(cfg)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert "teacher_entropy" in msg and "uniform" in msg and f"{run / 'checkpoints' / 'step_00000002'}" in msg
    assert "collapse at step 6" in msg  # warmup = 3 steps, then 3 logs in a row past the threshold
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002"]  # none written during the streak
    assert e.value.exit_code == 2  # the command prints this one line and exits with 2

def test_warn_mode_finishes(tmp_path, data):
    shards, _ = data
    summary = pretrain(tiny_config(tmp_path / "run", shards, "method.dino.warmup_teacher_temp=100",
                                   "method.dino.teacher_temp=100",
                                   "train.collapse_patience=3", "train.on_collapse=warn", "train.max_steps=7"))
    assert summary["steps"] == 7

